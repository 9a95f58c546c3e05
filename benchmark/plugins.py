"""Plugin files: a ``.py`` file that declares any of ``TRANSFORMS = {"name": factory}``,
``FAMILIES = {"name": Family(...)}`` and ``METRICS = {"name": metric}``, registered in the
registries of their kind (``--plugin FILE``; installed packages use entry points instead).
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

from benchmark.errors import UserError
from benchmark.families.registry import FAMILIES
from benchmark.metrics.registry import METRICS
from benchmark.transform.registry import TRANSFORMS, transforms

__all__ = ["load_plugin_file"]


def load_plugin_file(path: str | Path) -> list[str]:
    """Import a plugin file and register what it declares; returns the names it added."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"plugin {path}: no such file")
    if path.suffix != ".py":
        raise UserError(f"plugin {path}: not a .py file")
    spec = importlib.util.spec_from_file_location(f"hadabench_plugin_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ in the user's folder
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # a broken plugin is the user's input: say which and why
        raise UserError(f"plugin {path}: import failed: {type(error).__name__}: {error}") from error
    finally:
        sys.dont_write_bytecode = writes_bytecode
    declared = {kind: getattr(module, kind, None) for kind in ("TRANSFORMS", "FAMILIES", "METRICS")}
    if all(value is None for value in declared.values()):
        raise UserError(f"plugin {path}: defines no TRANSFORMS = {{'name': factory, ...}} "
                        "(or FAMILIES = {'name': Family(...)}, METRICS = {'name': Metric(...)})")
    source, code = f"file {path}", f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"
    transforms()  # the built-in names first, so that a plugin cannot shadow them
    names = []
    for kind, registry in (("FAMILIES", FAMILIES), ("TRANSFORMS", TRANSFORMS), ("METRICS", METRICS)):
        table = declared[kind]
        if table is None:
            continue
        if not isinstance(table, dict) or not table:
            raise UserError(f"plugin {path}: {kind} must be a non-empty dict {{'name': ..., ...}}")
        for name, value in table.items():
            try:
                registry.register(name, value, source, code)
            except UserError as error:
                raise UserError(f"plugin {path}: {error}") from None
            names.append(name)
    return names
