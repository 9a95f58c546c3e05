"""Rewrite the generated sections of the docs from the code: ``python -m scripts.sync_docs``.

- docs/running.md, between ``<!-- options:begin -->`` and ``<!-- options:end -->``: the run
  option table, from ``RunConfig``'s options (``benchmark.run.config.options_table``).
- docs/results-schema.md, between ``<!-- schema:begin -->`` and ``<!-- schema:end -->``: every key
  of results.json, from ``RESULTS`` (``benchmark.results.schema.schema_table``).

tests/test_readme.py fails when a generated section differs from what this would write.
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchmark.results.schema import schema_table
from benchmark.run.config import options_table

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {ROOT / "docs" / "running.md": {"options": options_table},
            ROOT / "docs" / "results-schema.md": {"schema": schema_table}}


def replace_section(text: str, name: str, body: str) -> str:
    begin, end = f"<!-- {name}:begin -->\n", f"\n<!-- {name}:end -->"
    start, stop = text.index(begin) + len(begin), text.index(end)
    return text[:start] + body + text[stop:]


def main() -> int:
    for path, sections in SECTIONS.items():
        text = path.read_text(encoding="utf-8")
        for name, generate in sections.items():
            text = replace_section(text, name, generate())
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
