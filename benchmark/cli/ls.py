"""``hadabench ls``: what is registered (transforms, families, models, metrics) and the precisions."""

from __future__ import annotations

from tabulate import tabulate

from benchmark.cli.common import load_plugins, path_argument
from benchmark.families.registry import families
from benchmark.metrics.registry import METRICS
from benchmark.models import ADAPTERS, MODELS, ROLES
from benchmark.quant.kernels import KERNELS
from benchmark.transform.registry import parameter_defaults, transforms


def command(args) -> int:
    load_plugins(args.plugin)

    rows = [[e.name, e.source, ", ".join(f"{k}={v!r}" for k, v in parameter_defaults(e).items()) or "-", e.summary]
            for e in sorted(transforms().values(), key=lambda e: e.name)]
    print("Transforms:\n")
    print(tabulate(rows, headers=["name", "source", "parameters (defaults)", "description"],
                   tablefmt="github"))
    print("\nModel families (where the targets of each transformer are; --plugin/entry points add more):\n")
    print(_families_table())
    print("\nModels (--model):\n")
    print(tabulate(MODELS.items(), headers=["model", "description"], tablefmt="github"))
    print(f"\nModel adapters (how --model is loaded; entry points add more): {_entries(ADAPTERS)}")
    print("\nMetrics (--metrics):\n")
    rows = [(e.name, e.value.description if e.value else f"BROKEN: {e.error}") for e in METRICS.entries().values()]
    print(tabulate(rows, headers=["metric", "description"], tablefmt="github"))
    print(f"\nKernels (--kernel, besides auto): {_entries(KERNELS)}")
    print(f"\nRoles (--roles) of the default family, pixart: {', '.join(ROLES)} (another family's: its row "
          "above); blocks (--blocks): e.g. 0-3 or 0,2")
    print("\nPrecisions: fp, w<b>a<b>, a<b> (activations only), w<b> (weights only), 2 to 8 bits "
          "each (e.g. w4a4, w6a6, w4a8, a4, w4); the 4-bit float formats mxfp4 and nvfp4 for both "
          "sides or in place of one side's bits (e.g. wmxfp4a8)")
    return 0


def _entries(registry) -> str:
    return ", ".join(f"{e.name} ({e.source})" if not e.error else f"{e.name} (BROKEN: {e.error})"
                     for e in registry.entries().values())


def _families_table() -> str:
    rows = [[e.name, e.source, ", ".join(e.value.transformer), ", ".join(e.value.roles)]
            if e.value is not None else [e.name, e.source, "-", f"BROKEN: {e.error}"]
            for e in families().values()]
    return tabulate(rows, headers=["family", "source", "transformer", "roles"], tablefmt="github")


def add_parser(sub):
    ls = sub.add_parser("ls", help="list transforms (with their source) and precisions")
    ls.add_argument("--plugin", action="append", metavar="FILE", type=path_argument,
                    help="also list a .py file's transforms")
    ls.set_defaults(func=command)
