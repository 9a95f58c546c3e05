"""``hadabench leaderboard``: markdown tables from result files, and (``--readme``) the README's
results section, generated from one of those runs (benchmark/reports/findings.py)."""

from __future__ import annotations

from pathlib import Path

from benchmark.cli.common import path_argument
from benchmark.errors import UserError
from benchmark.fileio import check_output_path, write_atomic
from benchmark.reports.findings import link, pick_run, readme_section, replace_section, run_name
from benchmark.reports.leaderboard import find_results, render
from benchmark.results.schema import read_results
from benchmark.run.folder import check_folder


def _read_readme(path: str) -> str:
    if not Path(path).is_file():
        raise UserError(f"--readme {path}: no such file")
    try:
        with open(path, encoding="utf-8", newline="") as handle:  # line endings kept as they are
            return handle.read()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"--readme {path}: cannot read it ({error})") from None


def command(args) -> int:
    check_output_path(args.output, args.results)  # not a folder, nor over an input run's files
    if Path(args.output).is_dir():
        raise UserError(f"-o {args.output} is a folder: give the markdown file to write")
    if (args.readme_run is not None or args.readme_with) and args.readme is None:
        raise UserError("--readme-run and --readme-with need --readme (the README whose results section they feed)")
    check_folder(Path(args.output).parent, "-o")
    files = find_results(args.results)
    readme = None
    if args.readme is not None:  # everything checked before anything is written
        check_output_path(args.readme, args.results)
        original = _read_readme(args.readme)
        replace_section(original, "", f"--readme {args.readme}")
        source = pick_run(files, args.readme_run or "embedded")
        results = read_results(source)
        if "study" in results:
            raise UserError(f"--readme-run {run_name(source)}: a {results['study'].get('kind')} study, not a "
                            "benchmark run")
        companions = []
        for name in dict.fromkeys(args.readme_with or []):
            if not any(run_name(path) == name for path in files):  # not published (yet): left out, said so
                print(f"note: --readme-with {name}: no run folder of that name among the results; left out")
                continue
            companions.append((name, read_results(pick_run(files, name, "--readme-with"))))
        section = readme_section(results, run_name(source), link(args.output, args.readme),
                                 companions=companions)
        readme = replace_section(original, section, f"--readme {args.readme}")
    text = render(files, args.output)
    write_atomic(args.output, text)
    print(f"wrote {args.output}")
    if readme is not None:
        write_atomic(args.readme, readme)
        print(f"wrote the results section of {args.readme} (run {run_name(source)})")
    return 0


def add_parser(sub):
    board = sub.add_parser("leaderboard", help="write markdown tables from result files")
    board.add_argument("results", nargs="+", type=path_argument,
                       help="results.json files, run folders, or folders of run folders")
    board.add_argument("-o", "--output", default="leaderboard/README.md", type=path_argument)
    board.add_argument("--readme", metavar="FILE", type=path_argument,
                       help="also rewrite this README's results section (between <!-- results:begin --> and "
                            "<!-- results:end -->) from one of the runs: its headline table and findings")
    board.add_argument("--readme-run", metavar="NAME",
                       help="the run folder among the results that feeds --readme (default: embedded)")
    board.add_argument("--readme-with", metavar="NAME", action="append",
                       help="another run folder of the same captions for --readme (repeatable): its precisions "
                            "become columns, or, where it shares a precision, it is compared transform by "
                            "transform; a name not among the results is left out with a note")
    board.set_defaults(func=command)
