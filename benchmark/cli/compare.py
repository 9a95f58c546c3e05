"""``hadabench compare``: two runs of the same captions, paired cell by cell."""

from __future__ import annotations

from tabulate import tabulate

from benchmark.cli.common import path_argument
from benchmark.errors import UserError
from benchmark.metrics.registry import metric_spec
from benchmark.reports import markdown as md
from benchmark.results.compare import compare_runs
from benchmark.results.schema import read_results
from benchmark.results.stats import ALPHA, INTERVAL, describe_intervals, describe_test, small_sample_note


def difference(interval) -> str:
    """``mean [low, high]``, signed; in scientific notation when two decimals would print a
    non-zero difference as +0.00 (two kernels that differ in a few rounding flips)."""
    size = max(abs(interval.mean), abs(interval.low), abs(interval.high))
    fmt = "{:+.2f}" if size >= 0.005 or size == 0 else "{:+.1e}"
    return f"{fmt.format(interval.mean)} [{fmt.format(interval.low)}, {fmt.format(interval.high)}]"


def command(args) -> int:
    spec = metric_spec(args.metric)
    if not spec.per_sample:
        raise UserError(f"{spec.key} is a set-level metric (one number per set of images): it has no per-caption "
                        "values to pair, test or size")
    rows = compare_runs(read_results(args.a), read_results(args.b), spec)
    if not rows:
        raise UserError(f"{args.a} and {args.b} share no cell with per-caption values of {spec.key}")
    level = f"{INTERVAL['level']:.0%}"
    exact = "exact" if all(r["exact"] for r in rows) else "Monte Carlo where above the exact limit"
    methods = describe_intervals(r["difference"] for r in rows)
    print(f"{spec.header}: B − A per cell over the same captions: the mean difference [{methods}]\n"
          f"p: {describe_test()}; here {exact}\n"
          f"Holm p, verdict: Holm's correction over the {len(rows)} cells compared, at family-wise {ALPHA:g}\n"
          f"A = {args.a}\nB = {args.b}\n")
    note = small_sample_note(min(r["captions"] for r in rows))
    if note:
        print(f"small sample: {note}\n")
    print(tabulate([[md.cell(r["cell"]), spec.fmt.format(r["a"]), spec.fmt.format(r["b"]), difference(r["difference"]),
                     f"{r['p_value']:.3g}", f"{r['p_holm']:.3g}",
                     f"B {r['verdict']} (Holm)" if r["verdict"] != "not significant" else r["verdict"]]
                    for r in rows],
                   headers=["cell", "A", "B", f"B − A [{level}]", "p", "Holm p", "verdict"], tablefmt="github",
                   disable_numparse=True))
    return 0


def add_parser(sub):
    pair = sub.add_parser("compare", help="two runs of the same captions, cell by cell: paired differences")
    pair.add_argument("a", type=path_argument, help="a results.json or run folder")
    pair.add_argument("b", type=path_argument, help="another one, of the same evaluation captions and seeds")
    pair.add_argument("--metric", default="sqnr_db", help="a per-sample metric (default sqnr_db)")
    pair.set_defaults(func=command)
