"""``hadabench compare``: two runs of the same captions, paired cell by cell."""

from __future__ import annotations

from tabulate import tabulate

from benchmark.errors import UserError
from benchmark.metrics.registry import metric_spec
from benchmark.results.compare import compare_runs
from benchmark.results.schema import read_results


def difference(interval) -> str:
    """``mean [low, high]``, signed; in scientific notation when two decimals would print a
    non-zero difference as +0.00 (two kernels that differ in a few rounding flips)."""
    size = max(abs(interval.mean), abs(interval.low), abs(interval.high))
    fmt = "{:+.2f}" if size >= 0.005 or size == 0 else "{:+.1e}"
    return f"{fmt.format(interval.mean)} [{fmt.format(interval.low)}, {fmt.format(interval.high)}]"


def command(args) -> int:
    spec = metric_spec(args.metric)
    rows = compare_runs(read_results(args.a), read_results(args.b), spec)
    if not rows:
        raise UserError(f"{args.a} and {args.b} share no cell with per-caption values of {spec.key}")
    print(f"{spec.header}: B − A per cell, paired bootstrap over the same captions (95% interval)\n"
          f"A = {args.a}\nB = {args.b}\n")
    print(tabulate([[r["cell"], spec.fmt.format(r["a"]), spec.fmt.format(r["b"]),
                     difference(r["difference"]),
                     f"{r['p_value']:.3f}", "B " + r["verdict"] if r["verdict"] != "not significant" else r["verdict"]]
                    for r in rows],
                   headers=["cell", "A", "B", "B − A [95%]", "p", "verdict"], tablefmt="github"))
    return 0


def add_parser(sub):
    pair = sub.add_parser("compare", help="two runs of the same captions, cell by cell: paired differences")
    pair.add_argument("a", help="a results.json or run folder")
    pair.add_argument("b", help="another one, of the same evaluation captions and seeds")
    pair.add_argument("--metric", default="sqnr_db", help="a per-sample metric (default sqnr_db)")
    pair.set_defaults(func=command)
