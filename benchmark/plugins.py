"""Plugin files: a ``.py`` file that declares any of ``TRANSFORMS = {"name": factory}``,
``FAMILIES = {"name": Family(...)}`` and ``METRICS = {"name": metric}``, registered in the
registries of their kind (``--plugin FILE``; installed packages use entry points instead).

A plugin is the user's input, so its code runs contained (``benchmark.registry.contained``):
whatever its import raises, ``sys.exit()`` included, is one line naming the file (exit 2), and
``KeyboardInterrupt`` still interrupts. Its tables are checked whole before anything is
registered: a name that is not a non-empty one-line string, a name written twice in one table
(a dict literal silently keeps the last), a value of the wrong kind, or a name another source
has, and nothing of the file is registered. Its factories run contained too (``Registry.get``).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import sys
from pathlib import Path

from benchmark.errors import UserError
from benchmark.families.registry import FAMILIES
from benchmark.metrics.registry import METRICS
from benchmark.registry import check_name, contained
from benchmark.transform.registry import TRANSFORMS, transforms

__all__ = ["KINDS", "load_plugin_file"]

KINDS = ("TRANSFORMS", "FAMILIES", "METRICS")


def load_plugin_file(path: str | Path) -> list[str]:
    """Import a plugin file and register what it declares; returns the names it added."""
    path = Path(path)
    try:
        is_file = path.is_file()
    except (OSError, ValueError):  # no permission to look, a NUL byte
        is_file = False
    if not is_file:
        raise UserError(f"plugin {path}: no such file")
    if path.suffix != ".py":
        raise UserError(f"plugin {path}: not a .py file")
    try:
        source_bytes = path.read_bytes()
    except OSError as error:
        raise UserError(f"plugin {path}: cannot read it ({error.strerror or error})") from None
    spec = importlib.util.spec_from_file_location(f"hadabench_plugin_{path.stem}", path)
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ in the user's folder
    before = set(sys.modules)
    try:
        with contained(f"plugin {path}: import failed"):  # a broken plugin: say which and why
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = writes_bytecode
    with contained(f"plugin {path}"):  # a module __getattr__, a dict subclass: plugin code too
        declared = {kind: getattr(module, kind, None) for kind in KINDS}
        tables = {kind: list(dict.items(table)) if isinstance(table, dict) else None
                  for kind, table in declared.items() if table is not None}
    if not tables:
        raise UserError(f"plugin {path}: defines no TRANSFORMS = {{'name': factory, ...}} "
                        "(or FAMILIES = {'name': Family(...)}, METRICS = {'name': Metric(...)})")
    twice = _written_twice(source_bytes)
    source, code = f"file {path}", f"sha256:{_code_digest(source_bytes, path, set(sys.modules) - before)}"
    transforms()  # the built-in names first, so that a plugin cannot shadow them
    registries = {"FAMILIES": FAMILIES, "TRANSFORMS": TRANSFORMS, "METRICS": METRICS}
    declared = [(kind, registries[kind]) for kind in registries if kind in tables]
    for kind, registry in declared:  # the shape and every name first, then every value
        if not tables[kind]:  # not a dict (None), or an empty one
            raise UserError(f"plugin {path}: {kind} must be a non-empty dict {{'name': ..., ...}}")
        if twice.get(kind):
            raise UserError(f"plugin {path}: {kind} has the name {twice[kind][0]!r} twice "
                            "(a dict keeps only the last)")
        for name, _ in tables[kind]:
            try:
                check_name(registry.kind, name)
            except UserError as error:
                raise UserError(f"plugin {path}: {kind}: {error}") from None
    checked = []
    for kind, registry in declared:  # every entry checked before any is registered
        for name, value in tables[kind]:
            try:
                name = registry.check_entry(name, value, source)
                if kind == "TRANSFORMS":
                    _check_signature(name, value)
            except UserError as error:
                raise UserError(f"plugin {path}: {error}") from None
            checked.append((registry, name, value))
    for registry, name, value in checked:
        registry.register(name, value, source, code)
    return [name for _, name, _ in checked]


def _check_signature(name: str, factory) -> None:
    """The parameters of a factory are read from its signature (``hadabench ls``, the checks of
    ``--transforms``): one that has none is refused here, not in the middle of a listing."""
    with contained(f"transform {name!r}: its factory has no readable signature"):
        inspect.signature(factory)


def _written_twice(source: bytes) -> dict[str, list]:
    """The constant keys written twice in a top-level ``KIND = {...}`` of the file's source (a
    dict literal keeps only the last, silently): {kind: [key, ...]}."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):  # the import has run: it was valid; this is not a check
        return {}
    twice = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, ast.AnnAssign) else []
        if not isinstance(getattr(node, "value", None), ast.Dict):
            continue
        keys = [k.value for k in node.value.keys if isinstance(k, ast.Constant)]
        repeated = list(dict.fromkeys(k for i, k in enumerate(keys) if k in keys[:i]))
        for target in targets:
            if isinstance(target, ast.Name) and target.id in KINDS and repeated:
                twice[target.id] = repeated
    return twice


def _code_digest(source: bytes, path: Path, imported: set[str]) -> str:
    """The sha256 of a plugin's code: its file, and every module it imported from its own
    folder (a helper beside it), so that a change to either recomputes its cells. A plugin
    without such helpers keeps the digest of its file alone."""
    folder = path.resolve().parent
    helpers = []
    for name in sorted(imported):
        file = getattr(sys.modules.get(name), "__file__", None)
        if file and Path(file).suffix == ".py" and Path(file).resolve().parent == folder \
                and Path(file).resolve() != path.resolve():
            helpers.append(Path(file).read_bytes())
    digest = hashlib.sha256(source)
    for helper in helpers:
        digest.update(hashlib.sha256(helper).digest())
    return digest.hexdigest()
