"""``hadabench check``: the regression gate."""

from __future__ import annotations

from benchmark.cli.common import path_argument
from benchmark.reports.check import check as check_run
from benchmark.reports.check import write_baseline


def command(args) -> int:
    if args.write_baseline:
        write_baseline(args.results, args.baseline)
        print(f"wrote baseline {args.baseline}")
        return 0
    return check_run(args.results, args.baseline)


def add_parser(sub):
    gate = sub.add_parser("check", help="fail when a run regresses against a baseline")
    gate.add_argument("results", type=path_argument, help="the run's results.json or folder")
    gate.add_argument("--baseline", required=True, type=path_argument, help="a results file with a tolerance table")
    gate.add_argument("--write-baseline", action="store_true",
                      help="make RESULTS the baseline (keeping the baseline's tolerance)")
    gate.set_defaults(func=command)
