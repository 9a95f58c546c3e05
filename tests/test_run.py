"""``hadabench run`` end to end on the embedded model (few captions, few steps): results,
resuming, failing cells, refusals, and the leaderboard and check on a real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.results.schema import read_results
from benchmark.run.runner import Run

PLUGINS = Path(__file__).parent / "plugins"
FAST = ["--calib-size", "2", "--eval-size", "2", "--steps", "3", "--metrics", "sqnr", "--device", "cpu"]


def run(out, *flags, cache=None):
    return main(["run", "--out", str(out), "--cache-dir", str(cache or Path(out).parent / "cache"),
                 *FAST, *flags])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished run: hadanorm and none at w4a4 and fp."""
    out = tmp_path_factory.mktemp("run") / "embedded"
    assert run(out, "--precisions", "w4a4,fp", "--transforms", "none,hadanorm") == 0
    return out


def test_results_file(finished):
    results = read_results(finished)
    assert set(results["cells"]) == {"w4a4/none", "w4a4/hadanorm", "fp/none", "fp/hadanorm"}
    assert results["captions"]["source"] == "embedded" and len(results["captions"]["evaluation"]["ids"]) == 2
    assert results["config"]["steps"] == 3 and len(results["config_hash"]) == 16
    assert results["environment"]["torch"] and results["environment"]["device"] == "cpu"
    assert results["calibration"]["cache"] in ("hit", "miss")
    hadanorm = results["cells"]["w4a4/hadanorm"]
    assert hadanorm["params"] == {} and hadanorm["transform_config"]["alpha"] == 0.5  # its defaults, recorded
    assert hadanorm["transform_config"]["center"] is True
    for key, cell in results["cells"].items():
        assert cell["status"] == "ok", key
        assert cell["kernel"] == ["torch"]
        assert len(cell["per_sample"]["sqnr_db"]) == 2
        assert set(cell["timings"]) == {"quantize_s", "generate_s", "metrics_s"}
        assert (finished / "images" / cell["precision"] / cell["label"] / "01.png").is_file()
    # fp: transforms on, quantizers off; the end-to-end exactness check
    assert results["cells"]["fp/hadanorm"]["metrics"]["sqnr_db"]["value"] > 80
    assert results["cells"]["w4a4/hadanorm"]["metrics"]["sqnr_db"]["value"] < 40
    hadanorm = results["cells"]["w4a4/hadanorm"]["groups"]
    assert all(g["correction"] == "quantized_token" and g["center"] for g in hadanorm.values())
    assert (finished / "grid_w4a4.png").is_file() and results["grids"]["w4a4"] == "grid_w4a4.png"


def test_leaderboard_and_check_on_a_run(finished, tmp_path, capsys):
    board = tmp_path / "README.md"
    assert main(["leaderboard", str(finished.parent), "-o", str(board)]) == 0
    text = board.read_text()
    assert "## embedded" in text and "### w4a4 · run" in text and "| hadanorm" in text
    assert "grid_w4a4.png" in text and "clip\\_score" in text  # not computed, with the reason (escaped)
    assert "too few captions for a claim: 2 &lt; 10" in text  # 2 captions: said out loud
    # native numerics: the paired gate, which 2 captions cannot feed (smallest one-sided p 1/4)
    assert main(["check", str(finished), "--baseline", str(finished / "results.json")]) == 2
    assert "cannot flag anything: with 2 captions" in capsys.readouterr().err


def test_resume_after_a_crash(tmp_path, monkeypatch):
    out = tmp_path / "run"
    original = Run.record_cell
    calls = []

    def crash_on_second_cell(self, job, *args):
        calls.append(job)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while the second cell runs
        return original(self, job, *args)

    monkeypatch.setattr(Run, "record_cell", crash_on_second_cell)
    with pytest.raises(KeyboardInterrupt):
        run(out, "--precisions", "w4a4", "--transforms", "none,quarot")
    first = read_results(out)  # complete and valid: written atomically
    assert list(first["cells"]) == ["w4a4/none"]
    assert not list(out.glob(".*.tmp"))

    monkeypatch.setattr(Run, "record_cell", original)
    assert run(out, "--precisions", "w4a4", "--transforms", "none,quarot") == 0
    second = read_results(out)
    assert list(second["cells"]) == ["w4a4/none", "w4a4/quarot"]
    assert second["cells"]["w4a4/none"] == first["cells"]["w4a4/none"]  # skipped, not redone
    assert second["calibration"]["cache"] == "hit"


def test_a_failing_plugin_fails_only_its_cell(tmp_path, capsys):
    out = tmp_path / "run"
    code = run(out, "--precisions", "w4a4", "--transforms", "raises,none,makes_nan",
               "--plugin", str(PLUGINS / "failing.py"))
    assert code == 1
    cells = read_results(out)["cells"]
    assert cells["w4a4/raises"]["status"] == "failed"
    assert "RuntimeError: this transform always fails" in cells["w4a4/raises"]["reason"]
    assert "failing.py:12 in " in cells["w4a4/raises"]["raised_at"]  # where to look
    assert cells["w4a4/makes_nan"]["status"] == "failed"
    assert "NaN" in cells["w4a4/makes_nan"]["reason"]
    assert cells["w4a4/none"]["status"] == "ok"
    assert "w4a4/raises: FAILED" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--transforms", "none,nosuch"], "unknown transform 'nosuch'"),
    (["--model", "hadabench/no-such-model"], "cannot load a pipeline"),
    (["--metrics", "sqnr,kid"], "unknown metric 'kid'"),
    (["--precisions", "w4a9"], "precision"),
    (["--transforms", "hadanorm(alpha=2)"], "alpha"),
    (["--captions", "file", "--caption-file", "/nonexistent/captions.txt"], "no such caption file"),
    (["--eval-size", "100000"], "larger than the source"),
    (["--steps", "5"], "another configuration"),  # resuming a different configuration
    (["--config", "BAD_TOML"], "unknown configuration key 'stepz'"),
])
def test_bad_configuration_exits_2_and_keeps_results(finished, tmp_path, capsys, flags, message):
    toml = tmp_path / "bad.toml"
    toml.write_text("stepz = 3\n")
    flags = [str(toml) if f == "BAD_TOML" else f for f in flags]
    before = {p: p.read_bytes() for p in sorted(finished.rglob("*")) if p.is_file()}
    fresh = [] if message == "another configuration" else ["--fresh"]  # --fresh may change it
    capsys.readouterr()
    code = main(["run", "--out", str(finished), "--cache-dir", str(tmp_path / "cache"),
                 *FAST, "--precisions", "w4a4,fp", "--transforms", "none,hadanorm", *fresh, *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("hadabench: error: ") and message in err[-1]
    after = {p: p.read_bytes() for p in sorted(finished.rglob("*")) if p.is_file()}
    assert after == before  # --fresh too: nothing is cleared before the configuration is checked


def test_config_file_and_flags(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('precisions = ["w6a6"]\ntransforms = "none"\nsteps = 9\n')
    out = tmp_path / "run"
    assert run(out, "--config", str(config)) == 0  # FAST's --steps 3 overrides the file's 9
    results = read_results(out)
    assert results["config"]["steps"] == 3 and list(results["cells"]) == ["w6a6/none"]
    assert json.loads((out / "results.json").read_text())["schema"] == "hadabench.results/1"


@pytest.mark.parametrize("field, value, message", [
    (("model", "weights_sha256"), "0" * 64, "results of other model"),  # the model retrained since
    # computed on a GPU (where the device is not given, "cuda when available", it is not in
    # the configuration's hash): its cells would not compare with this machine's
    (("environment", "device"), "cuda", "computed on cuda, and this run is on cpu"),
])
def test_resume_refuses_results_it_cannot_extend(finished, tmp_path, capsys, field, value, message):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    results = json.loads((out / "results.json").read_text())
    results[field[0]][field[1]] = value
    (out / "results.json").write_text(json.dumps(results))
    before = (out / "results.json").read_bytes()
    code = main(["run", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), *FAST,
                 "--precisions", "w4a4,fp", "--transforms", "none,hadanorm"])
    assert code == 2 and message in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before


def test_an_inexact_plugin_fails_its_cell_and_never_ranks(tmp_path, capsys):
    """tests/plugins/inexact.py rotates without folding: exact at fp it is not."""
    out = tmp_path / "run"
    code = run(out, "--steps", "2", "--precisions", "w4a4", "--transforms", "none,inexact,wrong_width",
               "--plugin", str(PLUGINS / "inexact.py"), "--plugin", str(PLUGINS / "wrong_width.py"))
    assert code == 1
    results = read_results(out)
    cells = results["cells"]
    inexact = cells["w4a4/inexact"]
    assert inexact["status"] == "failed" and inexact["reason"].startswith("NotExact: not exact at full precision: "
                                                                         "transformer_blocks.")
    assert inexact["exactness"]["exact"] is False and inexact["exactness"]["worst_relative_error"] > 1e-3
    assert inexact["exactness"]["group"] in inexact["reason"] and inexact["metrics"] == {}
    assert all(g["exact_error"] > 0 for g in inexact["groups"].values())
    assert inexact["source"] == f"file {PLUGINS / 'inexact.py'}" and inexact["code"].startswith("sha256:")
    wrong = cells["w4a4/wrong_width"]  # a wrong shape: the group, the expected and the actual shape
    assert wrong["status"] == "failed" and "output 0 has shape" in wrong["reason"] and "expected" in wrong["reason"]
    assert "transformer_blocks.0.self_attn_qkv" in wrong["reason"]
    none = cells["w4a4/none"]  # the other cells are unaffected
    assert none["status"] == "ok" and none["exactness"]["exact"] and none["exactness"]["worst_relative_error"] == 0
    assert all(g["exact_error"] == 0 for g in none["groups"].values()) and "precision" in none["groups"][
        "transformer_blocks.0.ffn_up"]
    board = tmp_path / "README.md"
    assert main(["leaderboard", str(out), "-o", str(board)]) == 0
    row = next(line for line in board.read_text().splitlines() if line.startswith("| inexact"))
    assert "failed: NotExact" in row  # a failed row, no numbers to rank

    # --allow-inexact: the same transform runs, recorded and marked (another configuration)
    capsys.readouterr()
    marked = tmp_path / "marked"
    assert run(marked, "--steps", "2", "--precisions", "w4a4", "--transforms", "inexact", "--allow-inexact",
               "--plugin", str(PLUGINS / "inexact.py")) == 0
    results = read_results(marked)
    assert results["config"]["allow_inexact"] is True
    cell = results["cells"]["w4a4/inexact"]
    assert cell["status"] == "ok" and cell["exactness"]["exact"] is False and "sqnr_db" in cell["metrics"]
    assert "INEXACT at fp" in capsys.readouterr().err
    assert main(["leaderboard", str(marked), "-o", str(board)]) == 0
    assert "| inexact (NOT EXACT at fp: relative error" in board.read_text()


@pytest.mark.slow  # end to end
def test_adding_one_transform_to_a_finished_run_reruns_nothing_else(finished, tmp_path, capsys):
    """The published leaderboard takes one more row: resume with only the new transform."""
    import shutil

    out = tmp_path / "board"
    shutil.copytree(finished, out)
    before = read_results(out)
    plugin = tmp_path / "signed.py"
    plugin.write_text("from benchmark import AffineTransform\n"
                      "def signed():\n"
                      "    '''Hadamard with its own random signs.'''\n"
                      "    return AffineTransform(name='signed', rotation='full', random_signs=True, seed=7)\n"
                      "TRANSFORMS = {'signed': signed}\n")
    capsys.readouterr()
    assert run(out, "--precisions", "w4a4,fp", "--transforms", "signed", "--plugin", str(plugin)) == 0
    after = read_results(out)
    assert list(after["cells"]) == list(before["cells"]) + ["w4a4/signed", "fp/signed"]
    for key, cell in before["cells"].items():
        assert after["cells"][key] == cell  # kept as they were, not recomputed
    assert after["config_hash"] == before["config_hash"]
    assert [t["name"] for t in after["config"]["transforms"]] == ["none", "hadanorm", "signed"]
    assert after["config"]["plugins"] == [str(plugin)]
    assert after["cells"]["fp/signed"]["metrics"]["sqnr_db"]["value"] > 80
    assert "done before (ok), skipped" not in capsys.readouterr().err  # only the requested transforms ran

    # the plugin's code changes: its own cells are computed again, the others stay
    plugin.write_text(plugin.read_text().replace("seed=7", "seed=8"))
    assert run(out, "--precisions", "w4a4,fp", "--transforms", "signed,none", "--plugin", str(plugin)) == 0
    again = read_results(out)
    assert again["cells"]["w4a4/signed"]["code"] != after["cells"]["w4a4/signed"]["code"]
    assert again["cells"]["w4a4/none"] == before["cells"]["w4a4/none"]
    assert "w4a4/signed: its code changed" in capsys.readouterr().err


def test_a_second_run_restates_only_what_it_changes(tmp_path, capsys):
    # the folder's configuration stands for the flags a second run leaves out; a subset of its
    # precisions joins it; the summary counts this invocation's cells
    out = tmp_path / "run"
    assert run(out, "--precisions", "w4a4,w6a6", "--transforms", "none") == 0
    capsys.readouterr()
    assert main(["run", "--out", str(out), "--transforms", "quarot", "--precisions", "w6a6"]) == 0
    err = capsys.readouterr().err
    assert "this run: 1 cells computed, 0 done before, 0 failed; the folder: 3 cells" in err
    results = read_results(out)
    assert set(results["cells"]) == {"w4a4/none", "w6a6/none", "w6a6/quarot"}
    assert results["config"]["precisions"] == ["w4a4", "w6a6"]
    assert [t["name"] for t in results["config"]["transforms"]] == ["none", "quarot"]
    assert main(["run", "--out", str(out), "--precisions", "w8a8"]) == 2  # not a subset: another configuration
    assert "holds results of another configuration" in capsys.readouterr().err
