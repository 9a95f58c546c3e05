"""``hadabench leaderboard``: markdown tables from result files."""

from __future__ import annotations

from pathlib import Path

from benchmark.errors import UserError
from benchmark.fileio import write_atomic
from benchmark.reports.leaderboard import find_results, render
from benchmark.run.folder import check_folder


def command(args) -> int:

    if Path(args.output).is_dir():
        raise UserError(f"-o {args.output} is a folder: give the markdown file to write")
    check_folder(Path(args.output).parent, "-o")
    text = render(find_results(args.results), args.output)
    write_atomic(args.output, text)
    print(f"wrote {args.output}")
    return 0


def add_parser(sub):
    board = sub.add_parser("leaderboard", help="write markdown tables from result files")
    board.add_argument("results", nargs="+",
                       help="results.json files, run folders, or folders of run folders")
    board.add_argument("-o", "--output", default="leaderboard/README.md")
    board.set_defaults(func=command)
