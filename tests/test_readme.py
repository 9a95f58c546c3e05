"""The documentation (README.md and docs/*.md) must be true to the code.

- every ```python block runs as written (a block that cannot run offline is fenced ```py);
- the table of run options in docs/running.md names every flag of ``hadabench run``, and only those;
- every relative link points to a file that exists;
- the README is a front page: at most 200 lines.
"""

import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A fenced block (at the start of a line, or indented in a list item): its language and body.
FENCE = re.compile(r"^[ \t]*```([\w+-]*)[^\n`]*\n(.*?)^[ \t]*```", re.S | re.M)


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _python_blocks(page: Path) -> list[str]:
    return [textwrap.dedent(body) for language, body in FENCE.findall(page.read_text()) if language == "python"]


DOCS = ["getting-started", "transforms", "models-and-families", "running", "results-schema", "statistics",
        "numerics", "distributed", "kernels-and-speed", "sensitivity", "findings", "api", "contributing"]


def test_the_front_page_links_every_doc():
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in DOCS if f"](docs/{name}.md)" not in readme]
    assert not missing, f"README.md does not link to docs/{missing}"


def test_the_docs_show_python_examples():
    assert any(_python_blocks(page) for page in PAGES), "no page shows a Python example"


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_python_examples_run(page):
    for number, block in enumerate(_python_blocks(page), 1):
        exec(compile(block, f"{_name(page)} (python block {number})", "exec"), {"__name__": "__docs__"})


def _options_table() -> str:
    text = (ROOT / "docs" / "running.md").read_text()
    begin, end = "<!-- options:begin -->\n", "<!-- options:end -->"
    assert text.count(begin) == 1 and text.count(end) == 1, "docs/running.md: the options markers, once each"
    return text[text.index(begin) + len(begin):text.index(end)]


def test_run_flags_exist():
    from benchmark.cli import build_parser

    table = _options_table()
    rows = [line for line in table.splitlines() if line.startswith("|")][2:]  # below the header and its rule
    assert rows, "docs/running.md: no options table between the markers"
    assert all(row.startswith("| `") for row in rows), "a row of the options table does not start with `flag`"
    documented = set(re.findall(r"`(--[a-z][a-z-]*)", table))
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    accepted = {option for action in run._actions for option in action.option_strings} - {"-h", "--help"}
    assert documented <= accepted, "documented but not accepted: " + str(sorted(documented - accepted))
    assert accepted <= documented, "undocumented: " + str(sorted(accepted - documented))


def test_generated_doc_sections_are_current():
    """The option table is RunConfig's (benchmark.run.config.options_table), never typed by hand."""
    from scripts.sync_docs import SECTIONS, replace_section

    for path, sections in SECTIONS.items():
        text = path.read_text()
        for name, generate in sections.items():
            assert replace_section(text, name, generate()) == text, \
                f"{path.name}: the {name} section is stale: python -m scripts.sync_docs"


def _relative_links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())      # code blocks hold no links
    text = re.sub(r"`[^`\n]*`", "``", text)     # nor does inline code (its link text may)
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)
    return [target for target in targets if not re.match(r"[a-zA-Z][a-zA-Z+.-]*:", target)]


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_relative_links_resolve(page):
    missing = [target for target in _relative_links(page)
               if target.partition("#")[0] and not (page.parent / target.partition("#")[0]).exists()]
    assert not missing, f"{_name(page)} links to files that do not exist: {missing}"


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move the detail to docs/"
    # the results section is generated between these markers, each on a line of its own
    for marker in ("<!-- results:begin -->", "<!-- results:end -->"):
        assert lines.count(marker) == 1, f"README.md: {marker} once, on its own line"
    assert lines.index("<!-- results:begin -->") < lines.index("<!-- results:end -->")
