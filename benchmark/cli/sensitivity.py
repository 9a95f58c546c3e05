"""``hadabench sensitivity``: one quantizer at a time, roles x transforms and blocks x roles."""

from __future__ import annotations

from benchmark.cli.common import pin
from benchmark.cli.run import run_flags
from benchmark.run.config import load_config
from benchmark.run.sensitivity import STUDY_DEFAULTS, study


def command(args) -> int:
    pin(load_config(args.config, run_flags(args), defaults=STUDY_DEFAULTS, fresh=args.fresh), args)
    return study(args.config, run_flags(args), block_view=args.block_view, fresh=args.fresh,
                 report=args.report)


def add_parser(sub, run):
    # The same flags as run (a copy of its arguments), other defaults: benchmark/run/sensitivity.py
    parser = sub.add_parser("sensitivity", parents=[run], conflict_handler="resolve",
                           help="one quantizer at a time: roles x transforms, and blocks x roles")
    parser.add_argument("--block-view", metavar="TRANSFORM",
                       help="the transform (label) of the blocks x roles view (default: the first)")
    parser.add_argument("--report", action="store_true",
                       help="only write the tables and heatmaps of the cells finished so far")
    parser.set_defaults(func=command)
