"""Bad input, as a new user (or a careless contributor) gives it: every case must end in exit
code 2, exactly one stderr line ``hadabench: error: ...``, no traceback, and nothing written
(every file and folder of the case's sandbox, the run folder included, byte for byte as before).

Each case runs ``benchmark.cli.main`` in-process, in its own sandbox (the working directory, so
that a default ``--out results`` would be caught too) holding a copy of one finished tiny run.
``python tests/test_bad_input.py`` prints the count: "N bad inputs, N handled as promised".
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub id with no hub: what tox sets, and these machines have

import contextlib
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.run.folder import LOCK_NAME, FolderLock

PLUGINS = Path(__file__).parent / "plugins"
FAST = ["--eval-size", "2", "--calib-size", "2", "--steps", "2", "--transforms", "none",
        "--precisions", "w8a8", "--metrics", "sqnr", "--device", "cpu"]
RUN = ["run", "--out", "{run}", "--cache-dir", "{sandbox}/cache", *FAST]
FRESH = [*RUN, "--fresh"]  # --fresh too: nothing may be cleared before the input is checked
ISSUE_15 = "issue 15: transform parameters checked against the factory (another branch)"


@dataclass
class Case:
    id: str
    argv: list[str]
    message: str  # a fragment of the one error line
    toml: str | None = None  # written to {sandbox}/c.toml ({toml} in argv)
    results: Callable | str | None = None  # replaces {run}/results.json: f(document) or raw text
    baseline: Callable | str | None = None  # written to {sandbox}/baseline.json, from the run's results
    xfail: str | None = None  # handled on another branch
    plugin: str | None = None  # written to {sandbox}/plugin.py


def drop(*keys):
    def mutate(doc):
        for key in keys:
            doc.pop(key)
        return doc
    return mutate


def first_cell(change):
    def mutate(doc):
        change(next(iter(doc["cells"].values())))
        return doc
    return mutate


def setting(path, value):
    def mutate(doc):
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return doc
    return mutate


def toml_case(id, text, message, **kw):
    return Case(id, ["run", "--config", "{toml}"], message, toml=text, **kw)


CASES = [
    # -- flags: types and ranges --
    Case("eval-size abc", [*FRESH, "--eval-size", "abc"], "argument --eval-size: invalid int value"),
    Case("calib-size 1.5", [*FRESH, "--calib-size", "1.5"], "invalid int value"),
    Case("steps x", [*FRESH, "--steps", "x"], "invalid int value"),
    Case("seed abc", [*FRESH, "--seed", "abc"], "invalid int value"),
    Case("seed -1", [*FRESH, "--seed", "-1"], "seed must be an integer from 0"),
    Case("guidance abc", [*FRESH, "--guidance-scale", "abc"], "invalid float value"),
    Case("guidance nan", [*FRESH, "--guidance-scale", "nan"], "guidance_scale must be a finite number"),
    Case("guidance inf", [*FRESH, "--guidance-scale", "inf"], "guidance_scale must be a finite number"),
    Case("guidance -1", [*FRESH, "--guidance-scale", "-1"], "guidance_scale must be a finite number"),
    Case("eval-size 0", [*FRESH, "--eval-size", "0"], "eval_size must be a positive integer"),
    Case("eval-size -3", [*FRESH, "--eval-size", "-3"], "eval_size must be a positive integer"),
    Case("calib-size 0", [*FRESH, "--calib-size", "0"], "calib_size must be a positive integer"),
    Case("steps 0", [*FRESH, "--steps", "0"], "steps must be a positive integer"),
    Case("eval-size too large", [*FRESH, "--eval-size", "100000"], "larger than the source"),
    Case("precisions empty", [*FRESH, "--precisions", ""], "no precisions given"),
    Case("precisions w4a9", [*FRESH, "--precisions", "w4a9"], "precision"),
    Case("precisions w1a4", [*FRESH, "--precisions", "w1a4"], "precision"),
    Case("precisions fp16", [*FRESH, "--precisions", "fp16"], "precision"),
    Case("precisions twice", [*FRESH, "--precisions", "w4a4,w4a4"], "listed twice"),
    Case("transforms empty", [*FRESH, "--transforms", ""], "cannot read transform"),
    Case("transforms unknown", [*FRESH, "--transforms", "none,nosuch"], "unknown transform 'nosuch'"),
    Case("transforms twice", [*FRESH, "--transforms", "none,none"], "listed twice"),
    Case("transform param not k=v", [*FRESH, "--transforms", "hadanorm(alpha)"], "not key=value"),
    Case("transform bad syntax", [*FRESH, "--transforms", "hadanorm(alpha=1"], "cannot read transform"),
    Case("transform alpha 2", [*FRESH, "--transforms", "hadanorm(alpha=2)"], "alpha"),
    Case("transform alpha abc", [*FRESH, "--transforms", "hadanorm(alpha=abc)"], "alpha"),
    Case("transform unknown param", [*FRESH, "--transforms", "hadanorm(nosuch=1)"], "no parameter 'nosuch'"),
    Case("transform correction", [*FRESH, "--transforms", "hadanorm(correction=bogus)"], "correction"),
    Case("quarot seed abc", [*FRESH, "--transforms", "quarot(seed=abc)"], "seed", xfail=ISSUE_15),
    Case("block_size 0", [*FRESH, "--transforms", "hadanorm(hadamard=block,block_size=0)"], "block_size",
         xfail=ISSUE_15),
    Case("ignored param", [*FRESH, "--transforms", "hadanorm(block_size=<script>alert(1)</script>)"],
         "block_size", xfail=ISSUE_15),
    Case("metrics empty", [*FRESH, "--metrics", ""], "no metrics given"),
    Case("metrics unknown", [*FRESH, "--metrics", "sqnr,kid"], "unknown metric 'kid'"),
    Case("captions unknown", [*FRESH, "--captions", "imagenet"], "unknown caption source"),
    Case("captions file, no file", [*FRESH, "--captions", "file"], "needs --caption-file"),
    Case("caption file missing", [*FRESH, "--captions", "file", "--caption-file", "/nonexistent/c.txt"],
         "no such caption file"),
    Case("caption file empty", [*FRESH, "--captions", "file", "--caption-file", "{sandbox}/empty.txt"],
         "caption"),
    Case("coco missing", [*FRESH, "--captions", "coco", "--coco-annotations", "/nonexistent/c.json"], "COCO"),
    Case("coco not json", [*FRESH, "--captions", "coco", "--coco-annotations", "{sandbox}/a_file.txt"],
         "invalid JSON"),
    Case("dtype", [*FRESH, "--dtype", "float8"], "unknown dtype"),
    Case("device tpu", [*FRESH, "--device", "tpu"], "unknown device"),
    Case("device cuda without one", [*FRESH, "--device", "cuda"], "no CUDA device"),
    Case("kernel unknown", [*FRESH, "--kernel", "cuda"], "unknown kernel"),
    Case("kernel triton on cpu", [*FRESH, "--kernel", "triton"], "kernel 'triton' cannot run on cpu"),
    Case("plugin missing", [*FRESH, "--plugin", "/nonexistent/p.py"], "no such file"),
    Case("plugin not .py", [*FRESH, "--plugin", "{sandbox}/a_file.txt"], "not a .py file"),
    Case("plugin import fails", [*FRESH, "--plugin", "{sandbox}/broken.py"], "import failed"),
    Case("plugin without TRANSFORMS", [*FRESH, "--plugin", "{sandbox}/empty.py"], "defines no TRANSFORMS"),
    Case("plugin redefines a baseline", [*FRESH, "--plugin", "{sandbox}/clash.py"], "already exists"),
    Case("unknown flag", [*FRESH, "--stepz", "3"], "unrecognized arguments: --stepz"),
    Case("flag without value", [*FRESH, "--steps"], "expected one argument"),
    Case("no command", [], "required: command"),
    Case("unknown command", ["rn"], "invalid choice"),
    # -- the run folder and the cache --
    Case("out a file", [*FRESH, "--out", "{sandbox}/a_file.txt"], "is a file, not a folder"),
    Case("out under a file", [*FRESH, "--out", "{sandbox}/a_file.txt/sub"], "is under a file"),
    Case("out in /proc", [*FRESH, "--out", "/proc/hadabench-x"], "cannot write there"),
    Case("cache-dir a file", [*FRESH, "--cache-dir", "{sandbox}/a_file.txt"], "--cache-dir"),
    Case("cache-dir under a file", [*FRESH, "--cache-dir", "{sandbox}/a_file.txt/c"], "is under a file"),
    Case("another configuration", [*RUN, "--steps", "3"], "another configuration"),
    Case("other weights", RUN, "results of other model",
         results=setting(["model", "weights_sha256"], "0" * 64)),
    Case("other captions", RUN, "results of other captions", results=setting(["captions", "seed"], 99)),
    # -- a damaged or crafted results.json in the run folder (resuming reads it) --
    Case("results: no config_hash", RUN, "config_hash is missing", results=drop("config_hash")),
    Case("results: no model", RUN, "model is missing", results=drop("model")),
    Case("results: cells []", RUN, "cells is [], not an object", results=setting(["cells"], [])),
    Case("results: cell without status", RUN, "status is missing", results=first_cell(lambda c: c.pop("status"))),
    Case("results: status bogus", RUN, "status", results=first_cell(lambda c: c.update(status="done"))),
    Case("results: metric abc", RUN, "value is \"abc\"",
         results=first_cell(lambda c: c["metrics"]["sqnr_db"].update(value="abc"))),
    Case("results: schema only", RUN, "is missing", results=json.dumps({"schema": "hadabench.results/1"})),
    Case("results: other schema", RUN, "schema", results=json.dumps({"schema": "x"})),
    Case("results: a list", RUN, "not an object", results="[]"),
    Case("results: invalid JSON", RUN, "invalid JSON", results="{"),
    Case("results: not UTF-8", RUN, "not UTF-8", results="\udcff"),
    Case("results: config precisions 5", RUN, "config.precisions", results=setting(["config", "precisions"], 5)),
    Case("results: timings abc", RUN, "timings", results=first_cell(lambda c: c["timings"].update(x="abc"))),
    # -- the model --
    Case("model hub id offline", [*FRESH, "--model", "hadabench/no-such-model"], "cannot load a pipeline"),
    Case("model path missing", [*FRESH, "--model", "/nonexistent/model"], "/nonexistent/model"),
    Case("model empty folder", [*FRESH, "--model", "{sandbox}/empty_dir"], "empty_dir"),
    Case("model embedded.json {}", [*FRESH, "--model", "{sandbox}/bad_model"], "bad_model"),
    Case("model empty", [*FRESH, "--model", ""], "model is empty"),
    # -- the configuration file --
    Case("config missing", [*FRESH, "--config", "/nonexistent/c.toml"], "no such configuration"),
    Case("config a folder", [*FRESH, "--config", "{sandbox}/empty_dir"], "cannot read it"),
    Case("config not TOML", [*FRESH, "--config", "{toml}"], "invalid TOML", toml="steps = [\n"),
    Case("config not UTF-8", [*FRESH, "--config", "{sandbox}/binary.toml"], "not UTF-8"),
    toml_case("toml unknown key", "stepz = 3", "unknown configuration key 'stepz'"),
    toml_case("toml precisions = 5", "precisions = 5", "precisions must be a list"),
    toml_case("toml transforms = 5", "transforms = 5", "transforms must be a string or a list"),
    toml_case("toml transforms = [5]", "transforms = [5]", "a transform is a string or a table"),
    toml_case("toml transform table without name", "transforms = [{alpha = 0.5}]", "needs a 'name'"),
    toml_case("toml transform param list", 'transforms = [{name = "hadanorm", alpha = [1]}]',
              "must be a number, string or boolean"),
    toml_case("toml plugins = 5", "plugins = 5", "plugins must be a list"),
    toml_case("toml metrics = 5", "metrics = 5", "metrics must be a list"),
    toml_case("toml model = 5", "model = 5", "model must be a string"),
    toml_case("toml out = 5", "out = 5", "out must be a string"),
    toml_case("toml seed abc", 'seed = "abc"', "seed must be an integer"),
    toml_case("toml cache_dir = 5", "cache_dir = 5", "cache_dir must be a string or none"),
    toml_case("toml steps = true", "steps = true", "steps must be an integer"),
    toml_case("toml eval_size = 2.5", "eval_size = 2.5", "eval_size must be an integer"),
    toml_case("toml guidance abc", 'guidance_scale = "abc"', "guidance_scale must be a number"),
    toml_case("toml guidance nan", "guidance_scale = nan", "guidance_scale must be a finite number"),
    toml_case("toml download_weights yes", 'download_weights = "yes"', "download_weights must be true or false"),
    toml_case("toml captions = 1", "captions = 1", "captions must be a string"),
    toml_case("toml device = 1", "device = 1", "device must be a string or none"),
    toml_case("toml dtype = 1", "dtype = 1", "dtype must be a string"),
    toml_case("toml kernel = true", "kernel = true", "kernel must be a string"),
    toml_case("toml precisions = []", "precisions = []", "no precisions given"),
    # -- leaderboard --
    Case("leaderboard missing file", ["leaderboard", "{sandbox}/nope.json", "-o", "{sandbox}/b.md"],
         "no such results file"),
    Case("leaderboard folder without runs", ["leaderboard", "{sandbox}/empty_dir", "-o", "{sandbox}/b.md"],
         "no results.json"),
    Case("leaderboard -o a folder", ["leaderboard", "{run}", "-o", "{sandbox}/empty_dir"], "is a folder"),
    Case("leaderboard -o under a file", ["leaderboard", "{run}", "-o", "{sandbox}/a_file.txt/b.md"],
         "is a file, not a folder"),
    Case("leaderboard schema only", ["leaderboard", "{run}", "-o", "{sandbox}/b.md"], "is missing",
         results=json.dumps({"schema": "hadabench.results/1"})),
    Case("leaderboard cells []", ["leaderboard", "{run}", "-o", "{sandbox}/b.md"], "cells is []",
         results=setting(["cells"], [])),
    Case("leaderboard metric abc", ["leaderboard", "{run}", "-o", "{sandbox}/b.md"], "\"abc\"",
         results=first_cell(lambda c: c["metrics"]["sqnr_db"].update(value="abc"))),
    Case("leaderboard no config_hash", ["leaderboard", "{run}", "-o", "{sandbox}/b.md"], "config_hash",
         results=drop("config_hash")),
    Case("leaderboard reason not text", ["leaderboard", "{run}", "-o", "{sandbox}/b.md"], "reason",
         results=first_cell(lambda c: c.update(reason={"x": 1}))),
    # -- check --
    Case("check tolerance abc", ["check", "{run}", "--baseline", "{sandbox}/baseline.json"], "tolerance",
         baseline=setting(["tolerance", "sqnr_db"], "abc")),
    Case("check tolerance -1", ["check", "{run}", "--baseline", "{sandbox}/baseline.json"], "finite number >= 0",
         baseline=setting(["tolerance", "sqnr_db"], -1)),
    Case("check tolerance empty", ["check", "{run}", "--baseline", "{sandbox}/baseline.json"], "no tolerance",
         baseline=setting(["tolerance"], {})),
    Case("check baseline without cells", ["check", "{run}", "--baseline", "{sandbox}/baseline.json"],
         "cells is missing", baseline=drop("cells")),
    Case("check baseline cells {}", ["check", "{run}", "--baseline", "{sandbox}/baseline.json"], "no cells",
         baseline=setting(["cells"], {})),
    Case("check baseline missing", ["check", "{run}", "--baseline", "{sandbox}/nope.json"], "no such results file"),
    Case("check baseline other config", ["check", "{run}", "--baseline", "{sandbox}/baseline.json"],
         "not comparable", baseline=setting(["config_hash"], "0" * 16)),
    Case("check run malformed", ["check", "{run}", "--baseline", "{sandbox}/baseline.json"], "status is missing",
         baseline=lambda doc: doc, results=first_cell(lambda c: c.pop("status"))),
    Case("check paired, too few captions", ["check", "{run}", "--baseline", "{sandbox}/baseline.json"],
         "cannot flag anything", baseline=setting(["tolerance"], {"sqnr_db": 0.01})),
    # -- validate, microbench --
    Case("validate alpha abc", ["validate", "hadanorm", "--param", "alpha=abc"], "alpha"),
    Case("validate param not k=v", ["validate", "hadanorm", "--param", "alpha"], "key=value"),
    Case("validate unknown param", ["validate", "hadanorm", "--param", "nosuch=1"], "no parameter 'nosuch'"),
    Case("validate unknown name", ["validate", "nosuch"], "neither a plugin"),
    Case("validate missing file", ["validate", "/nonexistent/p.py"], "no such file"),
    Case("microbench precision", ["microbench", "--precision", "w9a9"], "precision"),
    Case("microbench repeats abc", ["microbench", "--repeats", "abc"], "invalid int value"),
]


# -- generated by kind (issue 25): a new kind of failure is a new row of one of these tables --

# what a plugin's code may do, at its import or in its factory: (id, statement)
PLUGIN_RAISES = [
    ("RuntimeError", "raise RuntimeError('boom')"), ("ZeroDivisionError", "1 / 0"),
    ("KeyError", "{}['missing']"), ("ImportError", "import hadabench_no_such_module"),
    ("AssertionError", "assert False"), ("RecursionError", "def f(): return f()\nf()"),
    ("AttributeError", "None.x"), ("OSError", "open('/nonexistent/hadabench')"),
    ("multi-line message", "raise RuntimeError('one\\ntwo\\nthree')"),
    ("unprintable", "class E(Exception):\n    def __str__(self): raise ValueError('no')\nraise E()"),
    ("sys.exit()", "import sys\nsys.exit()"), ("sys.exit(0)", "import sys\nsys.exit(0)"),
    ("sys.exit(3)", "import sys\nsys.exit(3)"), ("sys.exit(msg)", "import sys\nsys.exit('bye\\nnow')"),
    ("SystemExit(7)", "raise SystemExit(7)"), ("exit()", "exit(5)"),
]
# what a plugin's table may be named with, for every kind it declares: (id, key source)
PLUGIN_NAMES = [("int", "1"), ("None", "None"), ("tuple", "('a',)"), ("float", "1.5"), ("bytes", "b'x'"),
                ("bool", "True"), ("empty", "''"), ("blank", "'   '"), ("newline", "'a\\nb'"),
                ("padded", "' a '"), ("bidi override", "'a\\u202eb'"), ("NUL", "'a\\x00b'")]
PLUGIN_KINDS = ("TRANSFORMS", "FAMILIES", "METRICS")
# where a writer must not write: (id, the path, the message)
OUTPUTS = [
    ("the run's results.json", "{run}/results.json", "destroy"),
    ("the run's reference", "{run}/reference.safetensors", "destroy"),
    ("the run's grid", "{run}/grid_w8a8.png", "destroy"),
    ("an image of the run", "{run}/images/fp/00.png", "destroy"),
    ("the run's lock", "{run}/.hadabench.lock", "destroy"),
    ("through ..", "{run}/images/../results.json", "destroy"),
    ("a link to results.json", "{sandbox}/link.md", "destroy"),
    ("a folder", "{sandbox}/empty_dir", "is a folder"),
    ("the run folder", "{run}", "is a folder"),
    ("a name of 300 characters", "{sandbox}/" + "x" * 300 + ".md", "too long"),
    ("a folder of 300 characters", "{sandbox}/" + "x" * 300 + "/b.md", "too long"),
]
WRITERS = [("leaderboard -o", ["leaderboard", "{run}", "-o", "{out}"]),
           ("leaderboard of the folder -o", ["leaderboard", "{sandbox}", "-o", "{out}"]),
           ("check --write-baseline", ["check", "{run}", "--baseline", "{out}", "--write-baseline"])]


def _at_import(statement: str) -> str:
    return "if True:\n" + textwrap.indent(statement, "    ") + "\n"


def _table(kind: str, keys: list[str]) -> str:
    return "def factory():\n    return None\n" + f"{kind} = {{{', '.join(f'{k}: factory' for k in keys)}}}\n"


GENERATED = [
    *[Case(f"plugin import: {id} ({command})", [*argv, "--plugin", "{sandbox}/plugin.py"], "import failed",
           plugin=_at_import(statement))
      for id, statement in PLUGIN_RAISES for command, argv in (("run", FRESH), ("ls", ["ls"]))],
    *[Case(f"plugin factory: {id}", [*FRESH, "--plugin", "{sandbox}/plugin.py", "--transforms", "none,broken"],
           "transform 'broken': its factory (plugin file",
           plugin="def broken():\n" + textwrap.indent(statement, "    ") + "\nTRANSFORMS = {'broken': broken}\n")
      for id, statement in PLUGIN_RAISES],
    *[Case(f"plugin {kind} name {id} ({command})", [*argv, "--plugin", "{sandbox}/plugin.py"], f"{kind}: a ",
           plugin=_table(kind, ["'fine'", key]))
      for kind in PLUGIN_KINDS for id, key in PLUGIN_NAMES for command, argv in (("run", FRESH), ("ls", ["ls"]))],
    *[Case(f"plugin {kind} name twice", [*FRESH, "--plugin", "{sandbox}/plugin.py"], "twice",
           plugin=_table(kind, ["'twice'", "'other'", "'twice'"])) for kind in PLUGIN_KINDS],
    *[Case(f"plugin {kind} = {value}", [*FRESH, "--plugin", "{sandbox}/plugin.py"], "non-empty dict",
           plugin=f"{kind} = {value}\n")
      for kind in PLUGIN_KINDS for value in ("{}", "[('x', None)]", "'x'", "5")],
    Case("plugin __getattr__ raises", [*FRESH, "--plugin", "{sandbox}/plugin.py"], "RuntimeError: lazy",
         plugin="def __getattr__(name):\n    raise RuntimeError('lazy ' + name)\n"),
    Case("plugin name of 300 characters", [*FRESH, "--plugin", "{sandbox}/" + "x" * 300 + ".py"], "too long"),
    *[Case(f"{writer} onto {id}", [a.replace("{out}", path) for a in argv], message)
      for writer, argv in WRITERS for id, path, message in OUTPUTS],
]
CASES += GENERATED


# -- the harness --

def _sandbox_files(sandbox: Path) -> None:
    (sandbox / "a_file.txt").write_text("not a folder\n")
    (sandbox / "empty.txt").write_text("")
    (sandbox / "binary.toml").write_bytes(b"\xff\xfe\x00steps = 1")
    (sandbox / "empty_dir").mkdir()
    (sandbox / "bad_model").mkdir()
    (sandbox / "bad_model" / "embedded.json").write_text("{}")
    (sandbox / "broken.py").write_text("raise ImportError('broken on purpose')\n")
    (sandbox / "empty.py").write_text("x = 1\n")
    (sandbox / "clash.py").write_text("from baselines.none import none\nTRANSFORMS = {'hadanorm': none}\n")
    if (sandbox / "run").is_dir():
        (sandbox / "link.md").symlink_to(sandbox / "run" / "results.json")


def set_up(case: Case, finished: Path, sandbox: Path) -> list[str]:
    """The case's sandbox (a copy of the finished run, input files), and its argv."""
    run = sandbox / "run"
    shutil.copytree(finished, run)
    _sandbox_files(sandbox)
    results = json.loads((finished / "results.json").read_text())
    if case.baseline is not None:
        base = case.baseline(json.loads(json.dumps(results))) if callable(case.baseline) else case.baseline
        (sandbox / "baseline.json").write_text(base if isinstance(base, str) else json.dumps(base))
    if case.results is not None:
        doc = case.results(results) if callable(case.results) else case.results
        text = doc if isinstance(doc, str) else json.dumps(doc)
        (run / "results.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    if case.toml is not None:
        (sandbox / "c.toml").write_text(case.toml + "\n")
    if case.plugin is not None:
        (sandbox / "plugin.py").write_text(case.plugin)
    return [a.format(run=run, sandbox=sandbox, toml=sandbox / "c.toml") for a in case.argv]


def snapshot(root: Path) -> dict:
    """Every path under root: a folder, or a file's sha256."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


@contextlib.contextmanager
def captured_stderr():
    """Without pytest: fd 2 and sys.stderr into a file (what Python, the libraries' logging
    and C code print)."""
    with tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        stream = open(sink.fileno(), "w", closefd=False, encoding="utf-8")
        out = []
        try:
            with contextlib.redirect_stderr(stream):
                yield out
        finally:
            stream.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            out.append(sink.read().decode("utf-8", "replace"))


@contextlib.contextmanager
def captured_by(capfd):
    """With pytest: its fd-level capture (sys.stderr and fd 2)."""
    capfd.readouterr()
    out = []
    yield out
    out.append(capfd.readouterr().err)


def outcome(case: Case, finished: Path, sandbox: Path, capture=captured_stderr) -> list[str]:
    """What is wrong with how the case was handled (empty: handled as promised)."""
    argv = set_up(case, finished, sandbox)
    before = snapshot(sandbox)
    cwd = os.getcwd()
    os.chdir(sandbox)
    try:
        with capture() as err:
            try:
                code = main(argv)
            except SystemExit as exit_:  # argparse's --help would; nothing else should
                code = f"SystemExit({exit_.code})"
            except BaseException as error:  # noqa: BLE001  (a traceback is what we are looking for)
                code = f"raised {type(error).__name__}: {error}"
    finally:
        os.chdir(cwd)
    lines = err[0].strip().splitlines()
    problems = []
    if code != 2:
        problems.append(f"exit code {code}, not 2")
    if len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines, not 1: {lines[:3]}")
    if any("Traceback" in line for line in lines):
        problems.append("a traceback")
    if lines and not lines[-1].startswith("hadabench: error: "):
        problems.append(f"last line is not 'hadabench: error: ...': {lines[-1]!r}")
    if lines and case.message not in lines[-1]:
        problems.append(f"{case.message!r} not in {lines[-1]!r}")
    after = snapshot(sandbox)
    if after != before:
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        problems.append(f"the sandbox changed: {changed[:5]}")
    return problems


def finish_tiny_run(out: Path) -> Path:
    code = main(["run", "--out", str(out), "--cache-dir", str(out.parent / "cache"), *FAST])
    assert code == 0 and (out / "results.json").is_file()
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return finish_tiny_run(tmp_path_factory.mktemp("bad_input") / "finished")


def not_yet_refused(case: Case) -> bool:
    """A case for another branch that this tree does not refuse yet: not run here (it would
    run whole cells); once that branch is merged, it runs like every other case."""
    from benchmark.run.config import parse_transforms
    from benchmark.transform.registry import create_transform

    spec = parse_transforms(case.argv[case.argv.index("--transforms", len(FRESH)) + 1])[0]
    try:
        create_transform(spec.name, **dict(spec.params))
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("case", [
    pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.xfail, run=False)]
                 if c.xfail and not_yet_refused(c) else []) for c in CASES])
def test_bad_input(case, finished, tmp_path, capfd, monkeypatch):
    # test_kernels switches Triton's CPU interpreter on for the session; off, triton on a CPU is bad input
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if case.id == "device cuda without one":
        import torch
        if torch.cuda.is_available():
            pytest.skip("there is a CUDA device here")
    problems = outcome(case, finished, tmp_path, lambda: captured_by(capfd))
    assert not problems, problems


def test_the_table_is_wide():
    assert len(CASES) >= 100 and len({c.id for c in CASES}) == len(CASES)
    assert len(GENERATED) >= 100  # issue 25: generated by kind


def test_no_writer_writes_over_any_file_of_a_run(finished, tmp_path, capfd):
    """Every file a finished run holds, whatever it is (a new kind of file the run writes is
    covered the day it is added), refused as the output of every writer."""
    files = sorted(p.relative_to(finished) for p in finished.rglob("*") if p.is_file())
    assert len(files) >= 5
    tried = 0
    for number, relative in enumerate(files):
        for index, (writer, argv) in enumerate(WRITERS):
            sandbox = tmp_path / f"s{number}_{index}"
            sandbox.mkdir()
            case = Case(f"{writer} onto {relative}", [a.replace("{out}", "{run}/" + str(relative)) for a in argv],
                        "destroy")
            problems = outcome(case, finished, sandbox, lambda: captured_by(capfd))
            assert not problems, (case.id, problems)
            tried += 1
    assert tried == len(files) * len(WRITERS)


# -- the real entry point, once: one line from a fresh process too --

@pytest.mark.slow  # end to end
def test_a_bad_input_in_a_fresh_process(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("precisions = 5\n")
    done = subprocess.run([sys.executable, "-m", "benchmark", "run", "--config", str(config)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["hadabench: error: precisions must be a list (of str), got 5"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]


# -- one run per folder --

@pytest.mark.slow  # end to end
def test_a_second_run_into_a_held_folder_is_refused(finished, tmp_path, capfd):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = snapshot(run)
    first = FolderLock(run)  # the first run, holding its folder
    first.acquire()
    try:
        code = main(["run", "--out", str(run), "--cache-dir", str(tmp_path / "cache"), *FAST, "--fresh"])
        err = capfd.readouterr().err.strip().splitlines()
    finally:
        first.release()
    assert code == 2 and len(err) == 1 and "in use by another hadabench run" in err[0]
    assert snapshot(run) == before  # --fresh did not clear the first run's folder
    assert not (tmp_path / "cache").exists()
    # once the first run is over, the folder is free again (and the run resumes: nothing to do)
    assert main(["run", "--out", str(run), "--cache-dir", str(tmp_path / "cache"), *FAST]) == 0
    assert json.loads((run / "results.json").read_text())["cells"] == \
        json.loads((finished / "results.json").read_text())["cells"]


def test_a_refused_run_leaves_no_folder_behind(tmp_path, capfd):
    out = tmp_path / "new" / "run"
    assert main(["run", "--out", str(out), *FAST, "--model", str(tmp_path / "nosuch")]) == 2
    assert not (tmp_path / "new").exists()  # the lock's folder and file are removed again
    assert LOCK_NAME not in capfd.readouterr().err


if __name__ == "__main__":  # the count, without pytest
    import torch

    with tempfile.TemporaryDirectory() as root:
        done = finish_tiny_run(Path(root) / "finished")
        from benchmark.families.registry import FAMILIES
        from benchmark.metrics.registry import METRICS
        from benchmark.transform.registry import TRANSFORMS

        handled = tried = 0
        for number, case in enumerate(CASES):
            for registry in (TRANSFORMS, FAMILIES, METRICS):  # what pytest's fixture does: no plugin leaks
                registry.reset()
            sandbox = Path(root) / f"case{number}"
            sandbox.mkdir()
            if case.id == "device cuda without one" and torch.cuda.is_available():
                continue
            problems = ([f"not refused here ({case.xfail})"] if case.xfail and not_yet_refused(case)
                        else outcome(case, done, sandbox))
            handled, tried = handled + (not problems), tried + 1
            print(f"{'ok  ' if not problems else 'FAIL'} {case.id}" + (f": {problems}" if problems else ""))
        print(f"{tried} bad inputs, {handled} handled as promised")


# -- a crafted results.json, rendered by the leaderboard and read back --

EVIL = {
    "model": "evil\n# Injected heading <script>alert(1)</script>",
    "label": "hadanorm(block_size=<script>alert(1)</script>) | ``` ",
    "reason": "[x](javascript:alert(1)) ![i](https://evil.example/p.png) <img src=x onerror=alert(1)>",
    "commit": "</details><iframe src=https://evil.example></iframe>",
    "captions": "coco\n\n```\n</details>\n<script>",
}


def crafted(run: Path) -> dict:
    doc = json.loads((run / "results.json").read_text())
    doc["config"]["model"] = EVIL["model"]
    doc["config"]["captions"] = EVIL["captions"]
    doc["environment"]["git_commit"] = EVIL["commit"]
    doc["metric_setup"]["clip_score"] = {"status": "not computed", "reason": EVIL["reason"]}
    (cell,) = doc["cells"].values()
    doc["cells"] = {"w8a8/evil": {**cell, "label": EVIL["label"]},
                    "w8a8/failed": {**cell, "label": "`x`", "status": "failed", "reason": EVIL["reason"]}}
    doc["grids"] = {"w8a8": "../../../../etc/passwd"}
    return doc


def test_a_crafted_results_file_renders_inert(finished, tmp_path):
    from markdown_it import MarkdownIt

    from benchmark.reports.leaderboard import render

    run = tmp_path / "runs" / "evil"
    shutil.copytree(finished, run)
    (run / "results.json").write_text(json.dumps(crafted(run)))
    (tmp_path / "runs" / "passwd").write_text("outside the run folder\n")
    (run / "outside.png").symlink_to(tmp_path / "runs" / "passwd")
    text = render([run], tmp_path / "runs" / "README.md")
    lines = text.splitlines()
    # headings, fences and the details block: only the ones the leaderboard writes
    assert [line[:3] for line in lines if line.startswith("#")] == ["# h", "## ", "###"]
    assert [line for line in lines if line.startswith("```")] == ["```json", "```"]
    assert sum("<details>" in line for line in lines) == 1 and sum("</details>" in line for line in lines) == 1
    # every table row has the table's columns: no pipe broke out of a cell
    rows = [line for line in lines if line.startswith("|")]
    assert len(rows) == 5 and len({len(re.findall(r"(?<!\\)\|", row)) for row in rows}) == 1
    outside_code = text.split("```json")[0]
    assert "](" not in outside_code.replace("\\](", "")  # no markdown link or image survived
    # read back as GitHub would (HTML allowed): no tag but markdown's own and the details block
    html = MarkdownIt("commonmark").enable("table").render(text)
    tags = set(re.findall(r"<\s*/?\s*([a-zA-Z0-9]+)", html))
    assert tags <= {"h1", "h2", "h3", "p", "table", "thead", "tbody", "tr", "th", "td", "strong", "ul", "li",
                    "pre", "code", "details", "summary"}, tags
    assert html.count("<h1>") == 1 and html.count("<h2>") == 1 and html.count("<details>") == 1
    # the label as the run recorded it, escaped, and the json block still JSON
    assert "hadanorm(block\\_size=&lt;script&gt;alert(1)&lt;/script&gt;) \\| \\`\\`\\`" in text
    block = text.split("```json\n", 1)[1].split("\n```", 1)[0]
    assert json.loads(block)["config"]["model"] == EVIL["model"]


def test_only_files_inside_the_run_folder_are_linked(finished, tmp_path):
    from benchmark.reports import markdown as md

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (tmp_path / "secret.png").write_text("x")
    (run / "escape.png").symlink_to(tmp_path / "secret.png")
    assert md.link("g", "grid_w8a8.png", run, tmp_path, image=True) == "![g](run/grid_w8a8.png)"
    for target in ("../secret.png", str(tmp_path / "secret.png"), "escape.png", "missing.png",
                   "javascript:alert(1)", "grid_w8a8.png/../../secret.png"):
        assert md.link("g", target, run, tmp_path, image=True) == "g", target


# -- caches and temporary files --

def test_a_stale_reference_is_generated_again(finished, tmp_path, capfd):
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "results.json").unlink()  # nothing to resume: the reference alone decides
    good = load_file(run / "reference.safetensors")
    # another configuration's reference, same caption count: the shapes alone would pass
    save_file({k: torch.zeros_like(v) for k, v in good.items()}, run / "reference.safetensors",
              metadata={"key": "another configuration"})
    assert main(["run", "--out", str(run), "--cache-dir", str(tmp_path / "cache"), *FAST]) == 0
    assert "generated with other settings; generating again" in capfd.readouterr().err
    again = load_file(run / "reference.safetensors")
    assert all(again[k].equal(good[k]) for k in good)
    with safe_open(run / "reference.safetensors", "pt") as handle:
        assert json.loads(handle.metadata()["key"])["steps"] == 2
    cells = [json.loads((d / "results.json").read_text())["cells"] for d in (finished, run)]
    assert cells[1]["w8a8/none"]["metrics"] == cells[0]["w8a8/none"]["metrics"]


def test_concurrent_writers_never_share_a_temporary_file(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from benchmark.fileio import write_atomic

    target = tmp_path / "00.png"

    def write(content: bytes) -> None:
        for _ in range(200):
            write_atomic(target, content)

    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(write, b"a" * 4096), pool.submit(write, b"b" * 4096)]:
            future.result()  # the fixed ".00.png.tmp" of before raised FileNotFoundError here
    assert target.read_bytes() in (b"a" * 4096, b"b" * 4096)
    assert [p.name for p in tmp_path.iterdir()] == ["00.png"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
