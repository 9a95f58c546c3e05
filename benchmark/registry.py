"""The transform registry: entry points of the ``hadabench.transforms`` group, and plugin files.

The six baselines are registered exactly like a third-party plugin: by an entry point in
``pyproject.toml`` naming a factory (a callable that takes the hyper-parameters as keyword
arguments and returns a ``Transform``). A plugin file is a ``.py`` file with a module-level
``TRANSFORMS = {"name": factory, ...}``.

Model families (``benchmark.targets.Family``) register the same way: the ``hadabench.families``
entry point group, or ``FAMILIES = {"name": Family(...)}`` in a plugin file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
import types
import typing
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable

from .transform import Transform

__all__ = ["ENTRY_POINT_GROUP", "FAMILY_GROUP", "FamilyEntry", "TransformEntry", "check_parameters",
           "create_transform", "families", "family_for", "load_plugin_file", "transforms"]

ENTRY_POINT_GROUP = "hadabench.transforms"
BASELINES = ("none", "smoothquant", "quarot", "sdcb", "dyncenter", "hadanorm")


@dataclass
class TransformEntry:
    name: str
    factory: Callable[..., Transform] | None
    source: str  # "built-in", "entry point (<distribution>)" or "file <path>"
    error: str | None = None  # why an installed entry point could not be loaded
    code: str = "hadabench"  # which code: "hadabench", "<distribution>==<version>" or "sha256:<file's>"

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
            code = "hadabench" if dist == "hadabench" else f"{dist}=={ep.dist.version if ep.dist else '?'}"
            try:
                _entries[ep.name] = TransformEntry(ep.name, ep.load(), source, code=code)
            except Exception as error:  # one broken plugin must not hide the others
                _entries[ep.name] = TransformEntry(ep.name, None, source,
                                                   f"{type(error).__name__}: {error}", code)
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
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ in the user's folder
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # a broken plugin is the user's input: say which and why
        raise ValueError(f"plugin {path}: import failed: {type(error).__name__}: {error}") from error
    finally:
        sys.dont_write_bytecode = writes_bytecode
    found = getattr(module, "TRANSFORMS", None)
    declared = getattr(module, "FAMILIES", None)
    if declared is not None:
        return _register_families(path, declared) + (_register_transforms(path, found) if found else [])
    return _register_transforms(path, found)


def _register_transforms(path: Path, found) -> list[str]:
    if not isinstance(found, dict) or not found or not all(callable(f) for f in found.values()):
        raise ValueError(f"plugin {path}: defines no TRANSFORMS = {{'name': factory, ...}} "
                         "(or FAMILIES = {'name': Family(...)})")
    registry = transforms()
    code = f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"
    for name, factory in found.items():
        if name in registry and registry[name].source != f"file {path}":
            raise ValueError(f"plugin {path}: transform {name!r} already exists "
                             f"({registry[name].source})")
        registry[name] = TransformEntry(name, factory, f"file {path}", code=code)
    return list(found)


def _register_families(path: Path, declared) -> list[str]:
    if not isinstance(declared, dict) or not declared:
        raise ValueError(f"plugin {path}: FAMILIES must be {{'name': Family(...), ...}}")
    registry = families()
    for name, family in declared.items():
        try:
            _check_family(name, family)
        except ValueError as error:
            raise ValueError(f"plugin {path}: {error}") from None
        if name in registry and registry[name].source != f"file {path}":
            raise ValueError(f"plugin {path}: family {name!r} already exists ({registry[name].source})")
        registry[name] = FamilyEntry(name, family, f"file {path}")
    return list(declared)


def create_transform(name: str, **params) -> Transform:
    """Instantiate a registered transform with its hyper-parameters."""
    registry = transforms()
    if name not in registry:
        raise ValueError(f"unknown transform {name!r}; available: {', '.join(sorted(registry))}")
    entry = registry[name]
    if entry.error:
        raise ValueError(f"transform {name!r} ({entry.source}) cannot be loaded: {entry.error}")
    factory = entry.factory
    check_parameters(name, factory, params)
    try:
        transform = factory(**params)
    except (ValueError, TypeError) as error:  # the factory refused these parameters
        raise ValueError(f"transform {name!r}: {error}") from error
    if not isinstance(transform, Transform):
        raise ValueError(f"transform {name!r}: its factory returned {type(transform).__name__}, "
                         "not a benchmark.Transform")
    return transform


def check_parameters(name: str, factory: Callable, params: dict) -> None:
    """Refuse (ValueError) a parameter the factory does not take, or a value whose type
    matches neither the parameter's annotation nor, without one, its default's type."""
    try:
        signature = inspect.signature(factory, eval_str=True)
    except (NameError, TypeError, SyntaxError):  # an annotation that cannot be resolved: no types
        signature = inspect.signature(factory)
    parameters = signature.parameters
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    unknown = [k for k in params if k not in parameters and not accepts_any]
    if unknown:
        raise ValueError(f"transform {name!r} has no parameter {', '.join(map(repr, unknown))}; "
                         f"it takes: {', '.join(parameters) or 'nothing'}")
    for key, value in params.items():
        parameter = parameters.get(key)
        if parameter is None or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
            continue
        expected = parameter.annotation
        if expected is inspect.Parameter.empty:
            default = parameter.default
            if default is inspect.Parameter.empty or default is None:
                continue
            expected = type(default)
        if not _matches(value, expected):
            raise ValueError(f"transform {name!r}: {key}={value!r} is a {type(value).__name__}, "
                             f"expected {_type_name(expected)}")


def _matches(value, expected) -> bool:
    """Whether ``value`` fits ``expected``: a class, a union, Optional, Literal; anything
    else (Any, generics) is not checked. bool is not an int here, an int is a float."""
    if expected is typing.Any or expected is inspect.Parameter.empty:
        return True
    if expected is None or expected is type(None):
        return value is None
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, member) for member in typing.get_args(expected))
    if origin is typing.Literal:
        return value in typing.get_args(expected)
    if not isinstance(expected, type):
        return True
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _type_name(expected) -> str:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(member) for member in typing.get_args(expected))
    if origin is typing.Literal:
        return " or ".join(map(repr, typing.get_args(expected)))
    if expected is None or expected is type(None):
        return "None"
    return getattr(expected, "__name__", str(expected))
# -- model families --------------------------------------------------------------------
FAMILY_GROUP = "hadabench.families"


@dataclass
class FamilyEntry:
    name: str
    family: "Family | None"
    source: str
    error: str | None = None


_families: dict[str, FamilyEntry] | None = None


def families() -> dict[str, FamilyEntry]:
    """All known model families: the built-in ones (``benchmark.families``; the model loader
    needs them, so they do not depend on install metadata), entry points of the
    ``hadabench.families`` group (a ``Family``), then loaded plugin files."""
    global _families
    if _families is None:
        from .families import FAMILIES

        _families = {name: FamilyEntry(name, family, "built-in") for name, family in FAMILIES.items()}
        for ep in entry_points(group=FAMILY_GROUP):
            source = f"entry point ({ep.dist.name if ep.dist is not None else '?'})"
            try:
                family = ep.load()
                _check_family(ep.name, family)
                _families[ep.name] = FamilyEntry(ep.name, family, source)
            except Exception as error:  # one broken plugin must not hide the others
                _families[ep.name] = FamilyEntry(ep.name, None, source, f"{type(error).__name__}: {error}")
    return _families


def _check_family(name: str, family) -> None:
    from .targets import Family

    if not isinstance(family, Family):
        raise ValueError(f"family {name!r} is a {type(family).__name__}, not a benchmark.targets.Family")


def family_for(module) -> "Family | None":
    """The registered family whose transformer class ``module`` is, or None."""
    for entry in families().values():
        if entry.family is not None and entry.family.matches(module):
            return entry.family
    return None
