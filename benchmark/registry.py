"""The transform registry: entry points of the ``hadabench.transforms`` group, and plugin files.

The six baselines are registered exactly like a third-party plugin: by an entry point in
``pyproject.toml`` naming a factory (a callable that takes the hyper-parameters as keyword
arguments and returns a ``Transform``). A plugin file is a ``.py`` file with a module-level
``TRANSFORMS = {"name": factory, ...}``.
"""

from __future__ import annotations

import importlib.util
import inspect
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable

from .transform import Transform

__all__ = ["ENTRY_POINT_GROUP", "TransformEntry", "create_transform", "load_plugin_file",
           "transforms"]

ENTRY_POINT_GROUP = "hadabench.transforms"
BASELINES = ("none", "smoothquant", "quarot", "sdcb", "dyncenter", "hadanorm")


@dataclass
class TransformEntry:
    name: str
    factory: Callable[..., Transform] | None
    source: str  # "built-in", "entry point (<distribution>)" or "file <path>"
    error: str | None = None  # why an installed entry point could not be loaded

    @property
    def summary(self) -> str:
        if self.error:
            return f"BROKEN: {self.error}"
        doc = inspect.getdoc(self.factory) or ""
        return doc.splitlines()[0] if doc else ""

    @property
    def defaults(self) -> dict:
        if self.factory is None:
            return {}
        return {name: p.default for name, p in inspect.signature(self.factory).parameters.items()
                if p.default is not inspect.Parameter.empty}


_entries: dict[str, TransformEntry] | None = None


def transforms() -> dict[str, TransformEntry]:
    """All known transforms by name: entry points first, then loaded plugin files."""
    global _entries
    if _entries is None:
        _entries = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "?"
            source = "built-in" if dist == "hadabench" else f"entry point ({dist})"
            try:
                _entries[ep.name] = TransformEntry(ep.name, ep.load(), source)
            except Exception as error:  # one broken plugin must not hide the others
                _entries[ep.name] = TransformEntry(ep.name, None, source,
                                                   f"{type(error).__name__}: {error}")
        from .transform import affine  # the whole design space, built into the harness itself
        _entries.setdefault("affine", TransformEntry("affine", affine, "built-in"))
        missing = [name for name in BASELINES if name not in _entries]
        if missing:
            raise RuntimeError(f"built-in transforms {missing} are not registered: install the "
                               "package (pip install -e .) so its entry points exist")
    return _entries


def load_plugin_file(path: str | Path) -> list[str]:
    """Import a plugin file and register its ``TRANSFORMS``; returns the names it added."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"plugin {path}: no such file")
    if path.suffix != ".py":
        raise ValueError(f"plugin {path}: not a .py file")
    spec = importlib.util.spec_from_file_location(f"hadabench_plugin_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # a broken plugin is the user's input: say which and why
        raise ValueError(f"plugin {path}: import failed: {type(error).__name__}: {error}") from error
    found = getattr(module, "TRANSFORMS", None)
    if not isinstance(found, dict) or not found or not all(callable(f) for f in found.values()):
        raise ValueError(f"plugin {path}: defines no TRANSFORMS = {{'name': factory, ...}}")
    registry = transforms()
    for name, factory in found.items():
        if name in registry and registry[name].source != f"file {path}":
            raise ValueError(f"plugin {path}: transform {name!r} already exists "
                             f"({registry[name].source})")
        registry[name] = TransformEntry(name, factory, f"file {path}")
    return list(found)


def create_transform(name: str, **params) -> Transform:
    """Instantiate a registered transform with its hyper-parameters."""
    registry = transforms()
    if name not in registry:
        raise ValueError(f"unknown transform {name!r}; available: {', '.join(sorted(registry))}")
    entry = registry[name]
    if entry.error:
        raise ValueError(f"transform {name!r} ({entry.source}) cannot be loaded: {entry.error}")
    factory = entry.factory
    signature = inspect.signature(factory)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    unknown = [k for k in params if k not in signature.parameters and not accepts_any]
    if unknown:
        raise ValueError(f"transform {name!r} has no parameter {', '.join(map(repr, unknown))}; "
                         f"it takes: {', '.join(signature.parameters) or 'nothing'}")
    transform = factory(**params)
    if not isinstance(transform, Transform):
        raise ValueError(f"transform {name!r}: its factory returned {type(transform).__name__}, "
                         "not a benchmark.Transform")
    return transform
