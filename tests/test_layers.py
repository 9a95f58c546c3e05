"""The package's architecture: layers that import only downward, and no import cycle.

Parsed from the source (every import, at module level or inside a function), so a cycle hidden
by a lazy import fails here too. The layer of a module is its subpackage's (or, for a module
at the top, its own), in the order of ``LAYERS``; the package's ``__init__`` is the public
facade above everything and is not checked.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "benchmark"

# Lowest first: a module may import its own layer and the layers before it.
LAYERS = [
    ("_compat", "_version", "errors", "registry", "fileio", "annotations", "logs"),
    ("quant",),
    ("transform",),
    ("families",),
    ("api",),
    ("models", "captions"),
    ("metrics",),
    ("results", "plugins"),
    ("testing",),
    ("run",),
    ("reports",),
    ("cli", "__main__"),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("benchmark", *path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports (``from pkg import module`` resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found |= {target for target in targets if target.split(".")[0] == "benchmark"}
    return {target if target in modules else target.rpartition(".")[0] for target in found} - {name}


def _layer(module: str) -> int:
    return len(LAYERS) if module == "benchmark" else RANK[module.split(".")[1]]  # the facade: above all


def test_every_module_has_a_layer():
    unknown = {name.split(".")[1] for name in _modules() if name != "benchmark"} - set(RANK)
    assert not unknown, f"add these to LAYERS: {sorted(unknown)}"


def test_imports_run_only_downward():
    modules = _modules()
    upward = [f"{name} -> {target}" for name, path in modules.items() if name != "benchmark"
              for target in sorted(_imports(name, path, modules)) if _layer(target) > _layer(name)]
    assert not upward, "imports that run upward:\n" + "\n".join(upward)


def test_no_import_cycle():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items() if name != "benchmark"}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_core_never_imports_plugins_or_scripts():
    modules = _modules()
    offending = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offending += [f"{name} imports {n}" for n in names if n.split(".")[0] in ("baselines", "scripts", "tests")]
    assert not offending, "\n".join(offending)
