"""The README's Python example must run as written."""

import re
from pathlib import Path


def test_readme_python_example_runs():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks, "the README shows no Python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_readme_run_flags_exist():
    from benchmark.cli import build_parser

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    table = readme[readme.index("## Running the benchmark"):readme.index("## Results\n")]
    documented = set(re.findall(r"`(--[a-z-]+)", table))
    run = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "run")[1]
    accepted = {option for action in run._actions for option in action.option_strings}
    assert documented and documented <= accepted, documented - accepted
    assert accepted - {"-h", "--help"} <= documented, "undocumented: " + str(accepted - documented)
