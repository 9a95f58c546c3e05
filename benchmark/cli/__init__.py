"""The ``hadabench`` command line (also ``python -m benchmark``): one module per subcommand.

Bad input (``benchmark.errors.UserError``) is one line and exit status 2; any other exception
is a bug and keeps its traceback (exit 1).
"""

from __future__ import annotations

import argparse
import sys

from benchmark.cli import check, compare, leaderboard, ls, microbench, power, run, sensitivity, validate
from benchmark.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line like every other bad input, not the whole usage
        raise UserError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hadabench", description="The ``hadabench`` command line (also ``python -m benchmark``).")
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = run.add_parser(sub)
    sensitivity.add_parser(sub, run_parser)
    for module in (leaderboard, check, power, compare, ls, validate, microbench):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.argv = sys.argv[1:] if argv is None else None  # what a restart with pinned numerics re-runs
        return args.func(args)
    except UserError as error:  # bad input from the user: one line, exit 2
        print(f"hadabench: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
