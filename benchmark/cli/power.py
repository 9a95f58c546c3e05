"""``hadabench power``: interval widths, and the captions a claim needs."""

from __future__ import annotations

from tabulate import tabulate

from benchmark.cli.common import path_argument
from benchmark.errors import UserError
from benchmark.metrics.registry import metric_spec
from benchmark.reports import markdown as md
from benchmark.results.compare import power_rows
from benchmark.results.schema import read_results
from benchmark.results.stats import ALPHA, INTERVAL, describe_intervals, describe_test, small_sample_note

POWER = 0.8


def command(args) -> int:
    if not args.target > 0:
        raise UserError(f"--target must be a positive number, got {args.target}")
    spec = metric_spec(args.metric)
    if not spec.per_sample:
        raise UserError(f"{spec.key} is a set-level metric (one number per set of images): it has no per-caption "
                        "values to pair, test or size")
    results = read_results(args.results)
    rows = power_rows(results, spec, args.target, power=POWER)
    if not rows:
        raise UserError(f"{args.results}: no cell has per-caption values of {spec.key}")
    level = f"{INTERVAL['level']:.0%}"
    families = sorted({(r["precision"], r["tests"]) for r in rows if "tests" in r})
    methods = describe_intervals(r["interval"] for r in rows)
    print(f"{spec.header}: mean ± half-width of the {methods}, for each cell and each paired "
          "difference at this run's captions.\n"
          f"- precision ±{args.target:g}: captions for a {level} t-interval of ±{args.target:g} "
          "(a precision target, not power: about even odds of calling a difference of that size significant)\n"
          f"- {POWER:.0%} power: captions to detect the observed paired difference (taken as the truth) with a "
          f"two-sided test at Holm's strictest threshold {ALPHA:g} / pairs\n"
          f"- p, Holm p, verdict: {describe_test()}; Holm's correction over all pairs of a precision at "
          f"family-wise {ALPHA:g}"
          + (" (" + ", ".join(f"{md.text(precision)}: {tests} pairs" for precision, tests in families) + ")"
             if families else "")
          + "\n")
    note = small_sample_note(min(r["captions"] for r in rows))
    if note:
        print(f"small sample: {note}\n")
    print(tabulate([[md.cell(r["precision"]), md.cell(r["comparison"]), spec.fmt.format(r["mean"]),
                     f"±{r['half_width']:.2f}",
                     r["captions"], r["for_half_width"] or "-", _or_blank(r, "for_power", "-"),
                     _p(r, "p_value"), _p(r, "p_holm"), r.get("verdict", "")]
                    for r in rows],
                   headers=["precision", "cell or paired difference", "mean", f"{level} half-width", "captions",
                            f"precision ±{args.target:g}", f"{POWER:.0%} power", "p", "Holm p", "verdict"],
                   tablefmt="github", disable_numparse=True))
    return 0


def _or_blank(row: dict, key: str, missing: str) -> str:
    if key not in row:
        return ""
    return missing if row[key] is None else str(row[key])


def _p(row: dict, key: str) -> str:
    return f"{row[key]:.3g}" if key in row else ""


def add_parser(sub):
    power = sub.add_parser("power", help="interval widths of a run's cells and paired differences, "
                                         "and the captions a claim needs")
    power.add_argument("results", type=path_argument, help="a results.json or run folder")
    power.add_argument("--metric", default="sqnr_db", help="a per-sample metric (default sqnr_db)")
    power.add_argument("--target", type=float, default=0.25, help="the half-width wanted (default 0.25)")
    power.set_defaults(func=command)
