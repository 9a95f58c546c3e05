"""Nothing a user or a contributor hands hadabench breaks it (issue 25), by mechanism:

1. plugins contained (benchmark/plugins.py, benchmark/registry.py): whatever a plugin's import or
   factory raises, ``sys.exit()`` included, is one line naming the plugin; ``KeyboardInterrupt``
   still interrupts; bad names are refused before anything is registered;
2. inert markdown (benchmark/results/markdown.py): every report the project writes, rendered from a
   results document whose every string is hostile, holds no tag, no event handler, no link out;
3. writes that destroy nothing (benchmark/fileio.py): an OSError is one line naming the path, the old
   file intact, no temporary file left; no output onto an input.

Each class is generated (exceptions x where they are raised, names x kinds, payloads x every
string field of the schema, failures x every step of a write), not listed case by case.
"""

from __future__ import annotations

import errno
import functools
import html
import json
import os
import re
import subprocess
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from benchmark.cli import main
from benchmark.errors import UserError
from benchmark.results.schema import read_results

ROOT = Path(__file__).parents[1]


def committed(relative: str) -> dict:
    """A published results file as committed (``git show HEAD:...``), so that a benchmark being
    rerun into leaderboard/ meanwhile changes nothing here; the file itself without git."""
    return json.loads(_committed_text(relative))


@functools.cache
def _committed_text(relative: str) -> bytes:
    try:
        done = subprocess.run(["git", "show", f"HEAD:{relative}"], cwd=ROOT, capture_output=True, timeout=60)
        if done.returncode == 0:
            json.loads(done.stdout)
            return done.stdout
    except (OSError, subprocess.TimeoutExpired, ValueError):
        pass
    return (ROOT / relative).read_bytes()


EMBEDDED = "leaderboard/embedded/results.json"
STUDY = "leaderboard/sensitivity/results.json"


@pytest.fixture
def embedded_run(tmp_path) -> Path:
    """A run folder holding the committed embedded results, and a file beside them."""
    from benchmark.fileio import write_json

    run = tmp_path / "run"
    run.mkdir()
    write_json(run / "results.json", committed(EMBEDDED))
    (run / "grid_w4a4.png").write_bytes(b"png")
    return run


def one_line_error(capsys, code) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(err) == 1 and err[0].startswith("hadabench: error: "), err
    return err[0]


# == 1. plugins contained ==========================================================================

# what a plugin's code may do: (id, statement, what the one line says)
RAISES = [
    ("RuntimeError", "raise RuntimeError('boom')", "RuntimeError: boom"),
    ("ZeroDivisionError", "1 / 0", "ZeroDivisionError: division by zero"),
    ("KeyError", "{}['missing']", "KeyError: 'missing'"),
    ("ImportError", "import hadabench_no_such_module", "ModuleNotFoundError"),
    ("AssertionError", "assert False", "AssertionError"),
    ("RecursionError", "def f(): return f()\nf()", "RecursionError"),
    ("multi-line message", "raise RuntimeError('line one\\nline two')", "RuntimeError: line one line two"),
    ("unprintable", "class E(Exception):\n    def __str__(self): raise ValueError('no')\nraise E()",
     "E: <unprintable>"),
    ("UserError", "from benchmark.errors import UserError\nraise UserError('mine')", "mine"),
    ("sys.exit()", "import sys\nsys.exit()", "sys.exit(None)"),
    ("sys.exit(0)", "import sys\nsys.exit(0)", "sys.exit(0)"),
    ("sys.exit(3)", "import sys\nsys.exit(3)", "sys.exit(3)"),
    ("sys.exit(msg)", "import sys\nsys.exit('bye')", "sys.exit('bye')"),
    ("raise SystemExit", "raise SystemExit(7)", "sys.exit(7)"),
]


def _at_import(statement: str) -> str:
    return "if True:\n" + textwrap.indent(statement, "    ") + "\n"


def _in_factory(statement: str, name: str = "broken") -> str:
    return "def factory():\n" + textwrap.indent(statement, "    ") + f"\nTRANSFORMS = {{{name!r}: factory}}\n"


@pytest.mark.parametrize("statement, says", [r[1:] for r in RAISES], ids=[r[0] for r in RAISES])
def test_whatever_an_import_raises_is_one_line_naming_the_plugin(tmp_path, capsys, statement, says):
    plugin = tmp_path / "plugin.py"
    plugin.write_text(_at_import(statement))
    line = one_line_error(capsys, main(["ls", "--plugin", str(plugin)]))
    assert f"plugin {plugin}: import failed" in line and says in line


@pytest.mark.parametrize("statement, says", [r[1:] for r in RAISES if r[0] not in ("UserError",)],
                         ids=[r[0] for r in RAISES if r[0] not in ("UserError",)])
def test_whatever_a_plugin_factory_raises_is_one_line_naming_the_plugin(tmp_path, statement, says):
    from benchmark import create_transform, load_plugin_file

    plugin = tmp_path / "plugin.py"
    plugin.write_text(_in_factory(statement))
    load_plugin_file(plugin)
    with pytest.raises(UserError) as raised:
        create_transform("broken")
    message = str(raised.value)
    assert "\n" not in message and "transform 'broken'" in message
    if "Error" in says and not says.startswith(("ValueError", "TypeError")):
        assert f"plugin file {plugin}" in message  # named: the plugin and the exception's type
    assert says.split(":")[0] in message


@pytest.mark.parametrize("where", ["import", "factory"])
def test_keyboard_interrupt_still_interrupts(tmp_path, where):
    from benchmark import create_transform, load_plugin_file

    plugin = tmp_path / "plugin.py"
    plugin.write_text(_at_import("raise KeyboardInterrupt") if where == "import"
                      else _in_factory("raise KeyboardInterrupt"))
    with pytest.raises(KeyboardInterrupt):
        load_plugin_file(plugin)
        create_transform("broken")


def test_built_in_factories_are_not_wrapped():
    from benchmark.transform.registry import TRANSFORMS, transforms

    transforms()
    assert TRANSFORMS.get("none") is TRANSFORMS.entry("none").value


# bad names, for every kind a plugin declares: (id, the table's source)
BAD_NAMES = [("int", "1"), ("None", "None"), ("tuple", "('a',)"), ("float", "1.5"), ("bytes", "b'x'"),
             ("empty", "''"), ("blank", "'   '"), ("newline", "'a\\nb'"), ("tab", "'a\\tb'"),
             ("padded", "' a'"), ("bidi", "'a\\u202eb'")]
KINDS = ["TRANSFORMS", "FAMILIES", "METRICS"]


def _table(kind: str, keys: list[str]) -> str:
    value = {"TRANSFORMS": "factory", "FAMILIES": "None", "METRICS": "None"}[kind]
    return ("def factory():\n    return None\n"
            f"{kind} = {{{', '.join(f'{k}: {value}' for k in keys)}}}\n")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("key", [k for _, k in BAD_NAMES], ids=[i for i, _ in BAD_NAMES])
def test_a_bad_name_is_one_line_and_ls_still_works(tmp_path, capsys, kind, key):
    from benchmark.transform.registry import transforms

    plugin = tmp_path / "plugin.py"
    plugin.write_text(_table(kind, ["'fine_name'", key]))
    line = one_line_error(capsys, main(["ls", "--plugin", str(plugin)]))
    assert f"plugin {plugin}: {kind}: a " in line and " name must be " in line
    assert "fine_name" not in transforms()  # checked whole: nothing of the file registered
    assert main(["ls"]) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_a_name_written_twice_is_one_line(tmp_path, capsys, kind):
    plugin = tmp_path / "plugin.py"
    plugin.write_text(_table(kind, ["'twice'", "'other'", "'twice'"]))
    line = one_line_error(capsys, main(["ls", "--plugin", str(plugin)]))
    assert "the name 'twice' twice" in line


@pytest.mark.parametrize("declared", ["[('x', None)]", "{}", "'x'", "None and 1 or 5"])
def test_a_table_that_is_not_a_dict_is_one_line(tmp_path, capsys, declared):
    plugin = tmp_path / "plugin.py"
    plugin.write_text(f"TRANSFORMS = {declared}\n")
    line = one_line_error(capsys, main(["ls", "--plugin", str(plugin)]))
    assert "must be a non-empty dict" in line


def test_a_module_getattr_that_raises_is_one_line(tmp_path, capsys):
    plugin = tmp_path / "plugin.py"
    plugin.write_text("def __getattr__(name):\n    raise RuntimeError('lazy ' + name)\n")
    line = one_line_error(capsys, main(["ls", "--plugin", str(plugin)]))
    assert f"plugin {plugin}: RuntimeError: lazy" in line


def test_a_factory_without_a_signature_is_refused_before_ls(tmp_path, capsys):
    plugin = tmp_path / "plugin.py"
    plugin.write_text("class Odd:\n    __call__ = None\n    @property\n    def __signature__(self):\n"
                      "        raise TypeError('none')\nTRANSFORMS = {'odd': Odd()}\n")
    line = one_line_error(capsys, main(["ls", "--plugin", str(plugin)]))
    assert "transform 'odd': its factory has no readable signature: TypeError: none" in line


def _install(tmp_path, monkeypatch, body: str, group: str = "hadabench.transforms", name: str = "bad") -> None:
    module = f"hadabench_ep_{abs(hash(body)) % 10**8}"
    (tmp_path / f"{module}.py").write_text(body)
    info = tmp_path / "thirdparty-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{name} = {module}:factory\n")
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.parametrize("statement, says", [r[1:] for r in RAISES], ids=[r[0] for r in RAISES])
def test_an_entry_point_that_fails_to_load_is_listed_broken(tmp_path, monkeypatch, capsys, statement, says):
    from benchmark import create_transform

    _install(tmp_path, monkeypatch, _at_import(statement))
    assert main(["ls"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| bad "))
    assert "BROKEN" in row and says in row
    with pytest.raises(UserError, match="cannot be loaded"):
        create_transform("bad")


def test_an_entry_point_factory_that_fails_names_its_distribution(tmp_path, monkeypatch):
    from benchmark import create_transform

    _install(tmp_path, monkeypatch, "def factory():\n    raise RuntimeError('deep')\n")
    with pytest.raises(UserError, match=r"plugin entry point \(thirdparty\)\) failed: RuntimeError: deep"):
        create_transform("bad")


# == 2. inert markdown everywhere ==================================================================

PAYLOADS = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "https://evil.example/x",
            "www.evil.example", "a@evil.example", "&lt;b&gt;", "<https://evil.example>",
            "[x](https://evil.example)", "javascript:alert(1)", "![i](https://evil.example/i.png)",
            "<a href='https://evil.example' onclick=alert(1)>x</a>", "line\none\r\n# heading", "| pipe | cell |",
            "`code` ``` fence", "mailto:a@evil.example", "//evil.example/x", "evil.com/x", "@mention :+1:"]
_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def hostile(document: dict, offset: int = 0, spec=None) -> dict:
    """``document`` with every string field rewritten to a payload, guided by the results schema:
    a string the schema pins (an enum, "inf") or a number written as a string is kept, and so is a
    key that names a registered metric (the reports look numbers up by it); every other string
    value is rewritten, and so is every key of a free-keyed object (``Each``) or a key that
    another field names (a role, a column, a precision), consistently: one string, one payload.
    The n-th string gets payload n + ``offset``: over all offsets, every field gets every payload."""
    from benchmark.fileio import Each, Key
    from benchmark.metrics.registry import metric_specs
    from benchmark.results.schema import RESULTS

    metric_keys = set(metric_specs())
    values = set()

    def collect(node):
        if isinstance(node, dict):
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)
        elif isinstance(node, str):
            values.add(node)

    collect(document)
    mapping: dict[str, str] = {}

    def rewrite(text: str) -> str:
        if text not in mapping:
            mapping[text] = f"{PAYLOADS[(len(mapping) + offset) % len(PAYLOADS)]} {len(mapping)}"
        return mapping[text]

    def unwrap(sub):
        return sub.spec if isinstance(sub, Key) else sub

    def pinned(value: str, sub) -> bool:
        options = sub if isinstance(sub, tuple) else (sub,)
        return any(isinstance(o, (set, frozenset)) and value in o for o in options) or bool(_NUMBER.fullmatch(value))

    def walk(node, sub):
        sub = unwrap(sub)
        if isinstance(sub, tuple) and isinstance(node, dict):
            sub = next((s for s in sub if isinstance(s, (dict, Each))), None)
        if isinstance(node, str):
            return node if pinned(node, sub) else rewrite(node)
        if isinstance(node, list):
            return [walk(v, sub[0] if isinstance(sub, list) else None) for v in node]
        if not isinstance(node, dict):
            return node
        out = {}
        for key, value in node.items():
            child = sub.spec if isinstance(sub, Each) else sub.get(key) if isinstance(sub, dict) else None
            free = isinstance(sub, Each) or key in values
            new_key = rewrite(key) if free and key not in metric_keys and not _NUMBER.fullmatch(key) else key
            out[new_key] = walk(value, child)
        return out

    return walk(document, spec if spec is not None else RESULTS)


def test_the_generator_rewrites_every_string_and_a_new_field_too():
    document = committed(EMBEDDED)
    document["a_field_added_later"] = {"nested": ["text"], "free": "more text"}
    next(iter(document["cells"].values()))["another_new_one"] = "text"
    rewritten = hostile(document)
    from benchmark.metrics.registry import metric_specs

    def strings(node):
        if isinstance(node, dict):
            for key, value in node.items():
                yield key, True
                yield from strings(value)
        elif isinstance(node, list):
            for value in node:
                yield from strings(value)
        elif isinstance(node, str):
            yield node, False

    kept = {s for s, is_key in strings(rewritten) if not is_key and not any(p in s for p in PAYLOADS)}
    assert kept <= {"hadabench.results/1", "ok", "failed", "inf", "-inf", "nan"} | \
        {s for s in kept if _NUMBER.fullmatch(s)}, kept
    assert rewritten["a_field_added_later"]["free"].startswith(tuple(PAYLOADS))
    assert all(k in metric_specs() or any(p in k for p in PAYLOADS)
               for cell in rewritten["cells"].values() for k in cell["metrics"])
    assert all(any(p in key for p in PAYLOADS) for key in rewritten["cells"])


_ALLOWED_TAGS = {"h1", "h2", "h3", "h4", "p", "table", "thead", "tbody", "tr", "th", "td", "strong", "em", "ul",
                 "ol", "li", "pre", "code", "details", "summary", "a", "img", "br", "hr"}
# what a linkifier would make a link of, in text that is not code
_BARE_LINK = re.compile(r"(?i)\b(?:https?|ftp|mailto|javascript):|\bwww\.|//[\w-]+\.\w|[\w.+-]+@[\w-]+\.\w"
                        r"|\b[\w-]+\.(?:com|org|net|example)\b")


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.text, self.all, self._code = [], [], [], 0

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._code += tag in ("code", "pre")

    def handle_endtag(self, tag):
        self._code -= tag in ("code", "pre")

    def handle_data(self, data):
        self.all.append(data)
        if not self._code:
            self.text.append(data)


def _renderers():
    from markdown_it import MarkdownIt

    found = [MarkdownIt("commonmark").enable("table")]
    try:
        import linkify_it  # noqa: F401  (markdown-it-py's linkify needs linkify-it-py)
    except ImportError:
        return found  # then the regex over the text outside code stands in for it
    return [*found, MarkdownIt("commonmark", {"linkify": True}).enable(["linkify", "table"])]


def assert_inert(markdown: str, base: Path, folders: list[Path], shown: list[str]) -> None:
    """Rendered as GitHub would (raw HTML allowed): only markdown's own tags (and the details
    blocks the reports write themselves), no event handler, links only to files in ``folders``,
    and no text outside code that a linkifier would make a link of; the strings ``shown`` are
    still there, as text (made inert, not dropped)."""
    for renderer in _renderers():
        parser = _Tags()
        parser.feed(renderer.render(markdown))
        for tag, attrs in parser.tags:
            assert tag in _ALLOWED_TAGS, (tag, attrs)
            assert not [a for a in attrs if a.lower().startswith("on")], (tag, attrs)
            for attribute in ("href", "src"):
                if attribute in attrs:
                    url = html.unescape(attrs[attribute])
                    assert not re.match(r"(?i)[a-z][a-z0-9+.-]*:|/", url), url
                    from urllib.parse import unquote
                    target = (base / unquote(url)).resolve()
                    assert target.is_file() and any(target.is_relative_to(f.resolve()) for f in folders), url
        text = "".join(parser.text)
        assert not _BARE_LINK.search(text), _BARE_LINK.search(text)
    parser = _Tags()
    parser.feed(_renderers()[0].render(markdown))
    text = "".join(parser.all)
    for string in shown:
        visible = " ".join(string.split())
        assert visible in " ".join(text.split()), visible


OFFSETS = [pytest.param(k, marks=[pytest.mark.slow] if k else [], id=f"payload+{k}") for k in range(len(PAYLOADS))]


@pytest.fixture(scope="module", params=OFFSETS)
def hostile_runs(tmp_path_factory, request):
    """Two run folders: the committed embedded run and the committed sensitivity study, every
    string of their results hostile (the study's README written by its own writer); one pair per
    payload offset (the first in the fast tests, all under ``slow``)."""
    from benchmark.fileio import write_json
    from benchmark.run.sensitivity import write_report

    root = tmp_path_factory.mktemp("hostile")
    runs = {}
    for name, source in (("embedded", EMBEDDED), ("study", STUDY)):
        folder = root / "runs" / name
        folder.mkdir(parents=True)
        document = hostile(committed(source), request.param)
        write_json(folder / "results.json", document)
        runs[name] = folder
    (root / "runs" / "outside.png").write_text("not the run's\n")
    (runs["embedded"] / "escape.png").symlink_to(root / "runs" / "outside.png")
    study = json.loads((runs["study"] / "results.json").read_text())
    write_report(study, runs["study"])
    return root / "runs", runs


def test_the_leaderboard_of_hostile_runs_is_inert(hostile_runs):
    from benchmark.reports.leaderboard import render

    base, runs = hostile_runs
    text = render([runs["embedded"], runs["study"]], base / "README.md")
    models = [read_results(run)["config"]["model"] for run in runs.values()]
    labels = [cell["label"] for cell in read_results(runs["embedded"])["cells"].values()]
    assert_inert(text, base, list(runs.values()), [*models, *labels])


def test_the_sensitivity_readme_of_a_hostile_study_is_inert(hostile_runs):
    _, runs = hostile_runs
    readme = (runs["study"] / "README.md").read_text()
    study = read_results(runs["study"])
    assert_inert(readme, runs["study"], [runs["study"]], [study["config"]["model"], *study["study"]["rows"]])
    assert sorted(p.name for p in runs["study"].iterdir() if p.suffix == ".png")  # heatmaps, in the folder
    assert all(p.parent == runs["study"] for p in runs["study"].rglob("*.png"))


CLI_TABLES = {
    "check": lambda run: ["check", str(run), "--baseline", str(run / "results.json")],
    "compare": lambda run: ["compare", str(run), str(run)],
    "power": lambda run: ["power", str(run)],
}


@pytest.mark.parametrize("command", CLI_TABLES)
def test_check_compare_and_power_read_hostile_runs(hostile_runs, capsys, command):
    _, runs = hostile_runs
    assert main(CLI_TABLES[command](runs["embedded"])) in (0, 1)  # a verdict, not a traceback
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("command", CLI_TABLES)
def test_the_tables_of_check_compare_and_power_are_inert(hostile_runs, capsys, command):
    base, runs = hostile_runs
    capsys.readouterr()
    assert main(CLI_TABLES[command](runs["embedded"])) in (0, 1)
    cells = read_results(runs["embedded"])["cells"]
    # power names a cell by its label, and only the cells with per-caption values
    shown = [c["label"] for c in cells.values() if (c.get("per_sample") or {}).get("sqnr_db")] \
        if command == "power" else list(cells)
    assert_inert(capsys.readouterr().out, base, list(runs.values()), shown)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_one_escaping_function_for_every_payload(payload):
    from benchmark.reports import markdown as md

    for rendered in (md.text(payload), md.cell(payload), f"| {md.cell(payload)} |\n|---|\n| x |"):
        for renderer in _renderers():
            parser = _Tags()
            parser.feed(renderer.render(rendered))
            assert {tag for tag, _ in parser.tags} <= {"p", "code", "table", "thead", "tbody", "tr", "th", "td"}
            assert not _BARE_LINK.search("".join(parser.text))
    assert "\n" not in md.text(payload)


def test_links_only_to_files_inside_the_folder(tmp_path):
    from benchmark.reports import markdown as md

    run = tmp_path / "run"
    run.mkdir()
    (run / "in.png").write_text("x")
    (tmp_path / "out.png").write_text("x")
    (run / "link.png").symlink_to(tmp_path / "out.png")
    assert md.link("g", "in.png", run, tmp_path) == "[g](run/in.png)"
    for target in ("../out.png", tmp_path / "out.png", "link.png", "nope.png", "", ".", "https://evil.example",
                   "in.png\x00", "javascript:alert(1)", {"a": 1}, None, "a" * 300):
        assert md.link("g", target, run, tmp_path) == "g", target


# == 3. writes that destroy nothing ================================================================

def _no_temporary(folder: Path) -> None:
    assert not [p.name for p in folder.rglob("*") if p.name.endswith(".tmp")]


FAILURES = [errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EIO, errno.ENAMETOOLONG, errno.EDQUOT]
STEPS = ["mkstemp", "write", "fsync", "chmod", "replace"]


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("code", FAILURES, ids=[errno.errorcode[c] for c in FAILURES])
@pytest.mark.parametrize("data", ["text", "callable"])
def test_a_failed_write_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch, step, code, data):
    import tempfile

    from benchmark import fileio

    target = tmp_path / "results.json"
    target.write_text("old\n")

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    if step == "mkstemp":
        monkeypatch.setattr(tempfile, "mkstemp", fail)
    elif step == "write" and data == "text":
        real = os.fdopen

        class Full:
            def __init__(self, handle):
                self.handle = handle

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.handle.close()

            def write(self, _):
                fail()

            def __getattr__(self, name):
                return getattr(self.handle, name)

        monkeypatch.setattr(os, "fdopen", lambda fd, mode: Full(real(fd, mode)))
    elif step != "write":
        monkeypatch.setattr(os, step, fail)
    payload = fail if (step == "write" and data == "callable") else \
        (lambda path: Path(path).write_text("new\n")) if data == "callable" else "new\n"
    with pytest.raises(UserError) as raised:
        fileio.write_atomic(target, payload)
    monkeypatch.undo()
    assert str(target) in str(raised.value) and "\n" not in str(raised.value)
    assert target.read_text() == "old\n"
    _no_temporary(tmp_path)


def test_an_interrupted_write_leaves_no_temporary_file(tmp_path):
    from benchmark.fileio import write_atomic

    target = tmp_path / "a.png"
    target.write_bytes(b"old")

    def interrupted(path):
        Path(path).write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, interrupted)
    assert target.read_bytes() == b"old"
    _no_temporary(tmp_path)


LONG = "x" * 300


def _writers(run: Path):
    """Every writer of this change, each given a path: (id, call)."""
    from benchmark.fileio import write_atomic, write_json
    from benchmark.reports.check import write_baseline
    from benchmark.run.sensitivity import write_report

    study = committed(STUDY)
    return {
        "write_atomic": lambda path: write_atomic(path, "x"),
        "write_atomic(callable)": lambda path: write_atomic(path, lambda tmp: Path(tmp).write_text("x")),
        "write_json": lambda path: write_json(path, {"a": 1}),
        "write_baseline": lambda path: write_baseline(str(run), str(path)),
        "sensitivity write_report": lambda path: write_report(study, path),
        "leaderboard -o": lambda path: main(["leaderboard", str(run), "-o", str(path)]),
        "check --write-baseline": lambda path: main(["check", str(run), "--baseline", str(path), "--write-baseline"]),
    }


WRITERS = ["write_atomic", "write_atomic(callable)", "write_json", "write_baseline", "sensitivity write_report",
           "leaderboard -o", "check --write-baseline"]
BAD_TARGETS = {
    "name of 300 characters": lambda tmp: tmp / f"{LONG}.md",
    "folder of 300 characters": lambda tmp: tmp / LONG / "out.md",
    "under a file": lambda tmp: tmp / "a_file" / "out.md",
    "in /proc (no one writes there)": lambda tmp: Path("/proc/hadabench-test") / "out.md",
}


@pytest.mark.parametrize("target", BAD_TARGETS)
@pytest.mark.parametrize("writer", WRITERS)
def test_every_writer_refuses_a_bad_target_in_one_line(tmp_path, embedded_run, capsys, writer, target):
    (tmp_path / "a_file").write_text("x")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    try:
        code = _writers(embedded_run)[writer](BAD_TARGETS[target](tmp_path))
    except UserError as error:
        assert "\n" not in str(error)
    else:
        one_line_error(capsys, code)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


OVER_AN_INPUT = {  # (inputs given, the output): each must be refused, every input intact
    "the results file": lambda run: ([run / "results.json"], run / "results.json"),
    "the run's results.json, the run given": lambda run: ([run], run / "results.json"),
    "a file of the run": lambda run: ([run], run / "grid_w4a4.png"),
    "through ..": lambda run: ([run], run / "sub" / ".." / "results.json"),
    "a link to results.json": lambda run: ([run], run.parent / "link.md"),
    "the run in a folder of runs": lambda run: ([run.parent], run / "results.json"),
    "relative": lambda run: ([Path(os.path.relpath(run))], Path(os.path.relpath(run / "results.json"))),
}


@pytest.mark.parametrize("case", OVER_AN_INPUT)
def test_an_output_onto_an_input_is_refused(embedded_run, case):
    from benchmark.fileio import check_output_path, sha256_file

    run = embedded_run
    (run.parent / "link.md").symlink_to(run / "results.json")
    inputs, output = OVER_AN_INPUT[case](run)
    before = {p: sha256_file(p) for p in run.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match="destroy"):
        check_output_path(output, inputs)
    assert {p: sha256_file(p) for p in run.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("output", ["README.md", "run/new.md", "other/results.json"])
def test_an_output_beside_the_inputs_is_allowed(tmp_path, embedded_run, output):
    from benchmark.fileio import check_output_path

    run = embedded_run
    check_output_path(tmp_path / output, [tmp_path])
    check_output_path(tmp_path / output, [run])


@pytest.mark.parametrize("argv", [
    ["leaderboard", "{run}", "-o", "{run}/results.json"],
    ["leaderboard", "{run}/results.json", "-o", "{run}/results.json"],
    ["leaderboard", "{root}", "-o", "{run}/grid_w4a4.png"],
    ["check", "{run}", "--baseline", "{run}/results.json", "--write-baseline"],
    ["check", "{run}", "--baseline", "{root}", "--write-baseline"],
], ids=["leaderboard onto results.json", "leaderboard onto its file", "leaderboard onto a grid",
        "baseline onto the run", "baseline onto a folder"])
def test_the_commands_refuse_to_write_over_their_input(tmp_path, embedded_run, capsys, argv):
    from benchmark.fileio import sha256_file

    run = embedded_run
    before = {p: sha256_file(p) for p in tmp_path.rglob("*") if p.is_file()}
    line = one_line_error(capsys, main([a.format(run=run, root=tmp_path) for a in argv]))
    assert "destroy" in line or "is a folder" in line
    assert {p: sha256_file(p) for p in tmp_path.rglob("*") if p.is_file()} == before


# == 4. a validating reader for every file kind ====================================================

WRONG = [[1, 2], {"x": 1}, "text", 10**400, None, -1.5, True]


def _schema_paths(spec, where=()):
    """Every path the results schema names (``Each`` keys and list items stand for their first)."""
    from benchmark.fileio import Each, Key

    spec = spec.spec if isinstance(spec, Key) else spec
    if isinstance(spec, tuple):
        spec = next((s for s in spec if isinstance(s, (dict, Each, list))), None)
    if isinstance(spec, dict):
        for key, sub in spec.items():
            yield (*where, key)
            yield from _schema_paths(sub, (*where, key))
    elif isinstance(spec, Each):
        yield from _schema_paths(spec.spec, (*where, Each))
    elif isinstance(spec, list):
        yield from _schema_paths(spec[0], (*where, 0))


def _document_paths(node, where=()):
    """Every path of a document (the first key of each free-keyed object, the first item of a list)."""
    items = list(node.items()) if isinstance(node, dict) else [(0, node[0])] if isinstance(node, list) and node else []
    free = where and where[-1] in ("cells", "per_sample", "groups", "metric_setup", "metrics", "grids", "tolerance")
    for key, value in items[:1] if free else items:
        yield (*where, key)
        yield from _document_paths(value, (*where, key))


def _place(document, path, value) -> bool:
    """``document`` with ``value`` at ``path`` (``Each``: the first key there); False when a parent
    is missing or not a container."""
    from benchmark.fileio import Each

    node = document
    for i, key in enumerate(path):
        if key is Each:
            if not isinstance(node, dict) or not node:
                return False
            key = next(iter(node))
        last = i == len(path) - 1
        if isinstance(node, dict) and (last or key in node):
            if last:
                node[key] = value
            node = node.get(key)
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            if last:
                node[key] = value
            node = node[key]
        else:
            return False
    return True


@functools.cache
def _small_results() -> str:
    document = committed(EMBEDDED)
    document["cells"] = dict(list(document["cells"].items())[:2])
    return json.dumps(document)


def _field_cases():
    """(path, wrong value): every field of the document and of the schema, each with a value of
    another type (a 400-digit integer among them), cycling through ``WRONG``."""
    from benchmark.results.schema import RESULTS

    document = json.loads(_small_results())
    paths = list(dict.fromkeys([*_document_paths(document), *_schema_paths(RESULTS)]))
    return [(path, WRONG[i % len(WRONG)]) for i, path in enumerate(paths)]


def _path_id(path) -> str:
    return ".".join("*" if not isinstance(k, (str, int)) else str(k) for k in path)


READERS = [
    lambda run, base, out: ["leaderboard", str(run), "-o", str(out)],
    lambda run, base, out: ["check", str(run), "--baseline", str(base)],
    lambda run, base, out: ["compare", str(base), str(run)],
    lambda run, base, out: ["power", str(run / "results.json")],
]


@pytest.mark.parametrize("path, wrong", _field_cases(), ids=lambda v: _path_id(v) if isinstance(v, tuple) else None)
def test_a_wrong_type_at_any_field_is_read_or_refused_in_one_line(tmp_path, capsys, path, wrong):
    """Every reader of results files (leaderboard, check, compare, power), given a file with one
    field of the wrong type: it works (a field that is only printed) or refuses in one line naming
    the file; never a traceback. The schema's own paths are included, so a field is covered the
    day it is added to ``RESULTS``."""
    document = json.loads(_small_results())
    if not _place(document, path, wrong):
        pytest.skip("a field inside an optional object that this document does not have")
    base, run = tmp_path / "base", tmp_path / "run"
    base.mkdir(), run.mkdir()
    (base / "results.json").write_text(_small_results())
    (run / "results.json").write_text(json.dumps(document))
    for reader in READERS:
        code = main(reader(run, base, tmp_path / "out.md"))
        if code == 2:
            line = one_line_error(capsys, code)
            assert "results" in line or str(run) in line, line
        else:
            assert code in (0, 1), code  # 1: check found a regression, compare a difference
            capsys.readouterr()


@pytest.mark.parametrize("kind, name, text", [
    ("results", "results.json", "[" * 100_000 + "]" * 100_000),
    ("results", "results.json", '{"a":' * 200 + "1" + "}" * 200),
    ("config", "config.toml", "a = " + "[" * 600 + "]" * 600),
    ("config", "config.toml", "".join(f"[{'.'.join(['t'] * 80)}]\n")),
    ("coco", "captions.json", "[" * 100_000 + "]" * 100_000),
])
def test_a_nesting_bomb_is_one_line_for_every_parser(tmp_path, capsys, kind, name, text):
    path = tmp_path / name
    path.write_text(text)
    argv = {"results": ["power", str(path)],
            "config": ["run", "--config", str(path), "--out", str(tmp_path / "out")],
            "coco": ["run", "--captions", "coco", "--coco-annotations", str(path), "--out", str(tmp_path / "out")]}
    line = one_line_error(capsys, main(argv[kind]))
    assert str(path) in line, line
    assert not (tmp_path / "out").exists()


def test_a_file_larger_than_its_kind_may_be_is_refused_before_it_is_read(tmp_path):
    from benchmark.fileio import read_json

    path = tmp_path / "results.json"
    path.write_text(json.dumps({"x": "y" * 2000}))
    with pytest.raises(UserError, match=r"bytes, more than a results file may hold \(1,000\)"):
        read_json(path, dict, "results file", max_bytes=1000)


def test_the_writer_checks_what_it_writes_against_the_same_schema(tmp_path):
    from benchmark.run.folder import RunFolder

    document = json.loads(_small_results())
    RunFolder(tmp_path).write_results(document)  # what hadabench wrote reads back
    assert read_results(tmp_path) == document
    del next(iter(document["cells"].values()))["status"]
    with pytest.raises(AssertionError, match=r"invalid results document: cells\[.*\]\.status is missing"):
        RunFolder(tmp_path).write_results(document)


def test_the_schema_reference_in_the_docs_is_generated_from_the_schema():
    from benchmark.results.schema import RESULTS, schema_table

    text = (ROOT / "docs" / "results-schema.md").read_text(encoding="utf-8")
    assert schema_table() in text
    assert "| `cells.<precision/label>.metrics.<metric key>.value` |" in schema_table()
    assert all(f"| `{key}` |" in text for key in RESULTS)


# == 5. resume after damage: kill -9 anywhere, a damaged file anywhere ============================

TINY = ["run", "--calib-size", "2", "--eval-size", "2", "--steps", "3", "--metrics", "sqnr,psnr", "--device", "cpu",
        "--precisions", "w4a4", "--transforms", "none,quarot"]
# where the process is killed: the n-th atomic rename onto a path that ends so (the file is then
# complete in its temporary name and absent, or old, under its own)
KILL_POINTS = {"reference": ("reference.safetensors", 1), "calibration": (".json", 1), "cell": ("01.png", 2)}
_KILLER = """
import os, signal, sys
from pathlib import Path
ending, nth = sys.argv[1], int(sys.argv[2])
seen, replace = [0], os.replace
def killing(src, dst, *a, **k):
    name = str(dst)
    if name.endswith(ending) and (ending != ".json" or Path(name).name.startswith("calibration-")):
        seen[0] += 1
        if seen[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
    return replace(src, dst, *a, **k)
os.replace = killing
from benchmark.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _tiny(out: Path, cache: Path) -> list[str]:
    return [*TINY, "--out", str(out), "--cache-dir", str(cache)]


def _outcome(out: Path) -> tuple:
    """What must not change: every cell's per-caption values and every image's bytes."""
    cells = read_results(out)["cells"]
    values = {key: (cell["status"], cell.get("per_sample")) for key, cell in cells.items()}
    images = {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "images").rglob("*.png"))}
    return values, images


@pytest.fixture(scope="module")
def finished_tiny(tmp_path_factory) -> Path:
    """A finished tiny run (``run/``) and its calibration cache (``cache/``), never changed."""
    root = tmp_path_factory.mktemp("uninterrupted")
    assert main(_tiny(root / "run", root / "cache")) == 0
    return root


@pytest.fixture
def uninterrupted(finished_tiny) -> tuple:
    return _outcome(finished_tiny / "run")


@pytest.fixture
def tiny_copy(finished_tiny, tmp_path) -> tuple[Path, Path]:
    import shutil

    for name in ("run", "cache"):
        shutil.copytree(finished_tiny / name, tmp_path / name)
    return tmp_path / "run", tmp_path / "cache"


@pytest.mark.slow
@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_9_anywhere_then_resume_gives_the_same_numbers_and_bytes(tmp_path, uninterrupted, point):
    out, cache = tmp_path / "run", tmp_path / "cache"
    ending, nth = KILL_POINTS[point]
    killed = subprocess.run([sys.executable, "-c", _KILLER, ending, str(nth), *_tiny(out, cache)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert main(_tiny(out, cache)) == 0
    assert _outcome(out) == uninterrupted
    assert not [p for p in tmp_path.rglob("*.tmp")]  # the killed write's temporary file: cleared


def _damage_reference(out, cache, how):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = out / "reference.safetensors"
    with safe_open(path, "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(path)
    if how == "one caption short":
        tensors = {k: v[:1].contiguous() for k, v in tensors.items()}
    else:
        tensors["latents"] = torch.full_like(tensors["latents"], float("nan"))
    save_file(tensors, str(path), metadata=metadata)  # the key intact: only the contents lie


def _damage_cache(out, cache, how):
    import hashlib

    from safetensors.torch import load_file, save_file

    meta_path = next(cache.glob("calibration-*.json"))
    tensor_path = meta_path.with_suffix(".safetensors")
    tensors = load_file(tensor_path)
    name = next(k for k in tensors if k.endswith("/mean"))
    tensors[name] = tensors[name][:-1].contiguous() if how == "wrong shape" else tensors[name] * float("nan")
    save_file(tensors, str(tensor_path))
    meta = json.loads(meta_path.read_text())
    meta["tensors_sha256"] = hashlib.sha256(tensor_path.read_bytes()).hexdigest()  # its checksum updated
    meta_path.write_text(json.dumps(meta))


def _damage_image(out, cache, how):
    image = out / "images" / "w4a4" / "quarot" / "01.png"
    image.unlink() if how == "deleted" else image.write_bytes(image.read_bytes()[:200])


DAMAGES = [(_damage_reference, "one caption short", "reference: .* is damaged"),
           (_damage_reference, "all NaN", "reference: .* is damaged"),
           (_damage_cache, "wrong shape", "calibration cache .*: group .*: mean of shape"),
           (_damage_cache, "NaN", "calibration cache .*: group .*: mean holds values that are not finite"),
           (_damage_image, "deleted", "w4a4/quarot: done before, but 1 of its 2 images missing"),
           (_damage_image, "truncated", "w4a4/quarot: done before, but 01.png unreadable")]


@pytest.mark.slow
@pytest.mark.parametrize("damage, how, note", DAMAGES, ids=[f"{d.__name__[8:]}: {h}" for d, h, _ in DAMAGES])
def test_a_damaged_file_is_recomputed_and_the_rest_is_bit_identical(tiny_copy, uninterrupted, caplog, damage, how,
                                                                   note):
    out, cache = tiny_copy
    damage(out, cache, how)
    with caplog.at_level("INFO", logger="benchmark"):
        assert main(_tiny(out, cache)) == 0
    assert re.search(note, caplog.text), caplog.text[-3000:]
    assert _outcome(out) == uninterrupted


@pytest.mark.slow
def test_truncated_results_are_refused_in_one_line_and_kept(tiny_copy, capsys):
    out, cache = tiny_copy
    results = out / "results.json"
    results.write_bytes(results.read_bytes()[:500])
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    capsys.readouterr()
    line = one_line_error(capsys, main(_tiny(out, cache)))
    assert "results.json: not a results file (invalid JSON" in line
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before


# == 6. an over-long name for every path a command takes ============================================

def _path_actions():
    """(subcommand, action) for every argument that names a file or folder: those whose type is
    ``path_argument`` (the run options' path flags get it from ``option(path=True)``)."""
    from benchmark.cli import build_parser
    from benchmark.cli.common import path_argument

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return [(name, action) for name, parser in sub.choices.items() for action in parser._actions
            if action.type is path_argument]


def test_every_argument_that_names_a_file_is_checked_as_a_path():
    """A new path flag cannot forget the check: an argument whose name says it holds a path has
    ``type=path_argument``."""
    from benchmark.cli import build_parser

    pathy = re.compile(r"file|dir|path|out|model|config|results|baseline|plugin|reference|annotations|readme$|^a$|^b$")
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    named = {(name, a.dest) for name, parser in sub.choices.items() for a in parser._actions
             if a.nargs != 0 and a.dest != "help" and pathy.search(a.dest)}
    assert named == {(name, a.dest) for name, a in _path_actions()}
    assert len(named) >= 20


def _argv(name: str, action, value: str, tmp: Path) -> list[str]:
    if name in ("run", "sensitivity"):
        argv = [name, "--steps", "2", "--eval-size", "1", "--calib-size", "1", "--transforms", "none",
                "--precisions", "w4a4" if name == "run" else "a4", "--metrics", "sqnr",
                "--out", str(tmp / "out"), "--cache-dir", str(tmp / "cache")]
        argv += {"caption_file": ["--captions", "file"], "coco_annotations": ["--captions", "coco"],
                 "fid_reference": ["--metrics", "sqnr,fid"]}.get(action.dest, [])
        return [*argv, action.option_strings[-1], value]
    run = str(ROOT / "leaderboard" / "embedded")
    if not action.option_strings:
        return {"leaderboard": [name, value, "-o", str(tmp / "x.md")], "check": [name, value, "--baseline", run],
                "power": [name, value], "validate": [name, value],
                "compare": [name, value, run] if action.dest == "a" else [name, run, value]}[name]
    return {"leaderboard": [name, run, "-o", str(tmp / "x.md")], "check": [name, run]}.get(name, [name]) + \
        [action.option_strings[-1], value]


@pytest.mark.parametrize("name, action", _path_actions(), ids=lambda v: v if isinstance(v, str) else v.dest)
@pytest.mark.parametrize("where", ["file", "folder"])
def test_an_over_long_name_is_one_line_for_every_path(tmp_path, capsys, name, action, where):
    value = str(tmp_path / ("x" * 300)) if where == "file" else str(tmp_path / ("y" * 300) / "f")
    line = one_line_error(capsys, main(_argv(name, action, value, tmp_path)))
    assert "too long" in line, line
    assert not (tmp_path / "out").exists()
