"""``hadabench power``: interval widths, and the captions a claim needs."""

from __future__ import annotations

from tabulate import tabulate

from benchmark.errors import UserError
from benchmark.metrics.registry import metric_spec
from benchmark.results.compare import power_rows
from benchmark.results.schema import read_results


def command(args) -> int:
    if not args.target > 0:
        raise UserError(f"--target must be a positive number, got {args.target}")
    spec = metric_spec(args.metric)
    results = read_results(args.results)
    rows = power_rows(results, spec, args.target)
    if not rows:
        raise UserError(f"{args.results}: no cell has per-caption values of {spec.key}")
    print(f"{spec.header}: 95% bootstrap half-width of each cell's mean and of each paired difference "
          f"at this run's captions, and the captions needed for ±{args.target:g} (half-width ∝ 1/√n)\n")
    print(tabulate([[r["precision"], r["comparison"], spec.fmt.format(r["mean"]),
                     f"±{r['half_width']:.2f}", r["captions"], r["needed"] or "-", r.get("verdict", "")]
                    for r in rows],
                   headers=["precision", "cell or paired difference", "mean", "95% half-width", "captions",
                            f"needed for ±{args.target:g}", "paired test"], tablefmt="github"))
    return 0


def add_parser(sub):
    power = sub.add_parser("power", help="interval widths of a run's cells and paired differences, "
                                         "and the captions a claim needs")
    power.add_argument("results", help="a results.json or run folder")
    power.add_argument("--metric", default="sqnr_db", help="a per-sample metric (default sqnr_db)")
    power.add_argument("--target", type=float, default=0.25, help="the half-width wanted (default 0.25)")
    power.set_defaults(func=command)
