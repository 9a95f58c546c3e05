"""One run over two CPU processes (``torchrun``, gloo) gives the numbers of one process: per
sample, in the leaderboard and in the calibration statistics; a killed two-process run resumes.
Also the exact merge of calibration parts, which makes that possible."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from benchmark.cli import main
from benchmark.reports.leaderboard import render
from benchmark.results.schema import read_results
from benchmark.run.calibration import caption_seeds, collect_part, merge_parts
from benchmark.run.cells import same_alphas
from benchmark.run.distributed import share

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = Path(__file__).parent / "plugins"
# 17 captions: two batches (16 + 1) of evaluation and of calibration, so both are split.
SPLIT = ["--calib-size", "17", "--eval-size", "17", "--steps", "2", "--metrics", "sqnr", "--device", "cpu",
         "--precisions", "w4a4", "--transforms", "hadanorm"]
# 16 captions: one batch, so the two processes take a cell each: rounds (none, raises) and
# (makes_nan, stalls); "raises" fails on the second process, "makes_nan" on the main one.
SPREAD = ["--calib-size", "2", "--eval-size", "16", "--steps", "2", "--metrics", "sqnr", "--device", "cpu",
          "--precisions", "w4a4", "--transforms", "none,raises,makes_nan,stalls",
          "--plugin", str(PLUGINS / "failing.py"), "--plugin", str(PLUGINS / "stalls.py")]


def launch(folder: Path, flags: list[str], stall: bool = False, **popen) -> subprocess.Popen:
    """``torchrun --nproc-per-node 2 -m benchmark run`` into folder/run (cache folder/cache)."""
    # the threads of the one-process run (in this process), which results.json and the
    # leaderboard record (numerics.threads); torchrun would give each process 1
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": str(torch.get_num_threads())}
    if stall:
        env["HADABENCH_TEST_STALL"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "benchmark", "run", "--out", str(folder / "run"), "--cache-dir", str(folder / "cache"),
               *flags]
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def run_two(folder: Path, flags: list[str], code: int = 0) -> str:
    process = launch(folder, flags)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == code, output
    return output


def run_one(folder: Path, flags: list[str], code: int = 0) -> None:
    assert main(["run", "--out", str(folder / "run"), "--cache-dir", str(folder / "cache"), *flags]) == code


def leaderboard(folder: Path) -> str:
    return render([folder / "run"], folder / "README.md").replace(str(folder), "<folder>")


def test_share_takes_whole_contiguous_batches():
    assert [list(share(5, 2, i)) for i in range(2)] == [[0, 1], [2, 3, 4]]
    assert [list(share(1, 2, i)) for i in range(2)] == [[], [0]]
    assert sorted(b for i in range(8) for b in share(63, 8, i)) == list(range(63))


def test_a_cell_whose_processes_chose_different_alphas_fails():
    """alpha="auto" is searched on every process: parts built with other alphas are not one
    cell (the main process fails it, naming the group); the same alphas, or none, pass."""
    part = lambda alpha: {"groups": {"blocks.0.attn": {"alpha": 0.5}, "blocks.0.ff": {"alpha": alpha}}}
    same_alphas([part(0.25), part(0.25)])
    same_alphas([{"groups": {"g": {"center": True}}}] * 2)
    with pytest.raises(RuntimeError, match=r"different alphas for blocks.0.ff \(0.25 and 0.75\)"):
        same_alphas([part(0.25), part(0.75)])


def test_calibration_parts_merge_exactly(tmp_path):
    from benchmark.families.examples import save_tiny_pixart
    from benchmark.models import load_model

    model = load_model(str(save_tiny_pixart(tmp_path / "pipeline")))
    captions = ["a red cat", "two dogs in a field", "a bus on the street"]
    seeds = caption_seeds(len(captions))
    settings = dict(steps=2, batch_size=2, max_sample_tokens=600, seed=3)  # batches of 2 and 1
    whole = merge_parts([collect_part(model, captions, seeds, **settings)])
    parts = merge_parts([collect_part(model, captions[:2], seeds[:2], **settings),
                         collect_part(model, captions[2:], seeds[2:], **settings, first_batch=1)])
    for name, stats in whole.items():
        for field in ("absmax", "centered_absmax", "mean", "sample"):
            assert torch.equal(getattr(stats, field), getattr(parts[name], field)), (name, field)
        assert stats.tokens == parts[name].tokens
    # the sample is bounded and drawn from every batch, not only the last one
    sample = whole["transformer_blocks.0.self_attn_qkv"].sample
    assert sample.shape[0] * sample.shape[1] <= 600 and sample.shape[0] > 1


@pytest.mark.slow  # end to end
def test_two_processes_give_the_numbers_of_one(tmp_path):
    run_one(tmp_path / "one", SPLIT)
    output = run_two(tmp_path / "two", SPLIT)
    one, two = read_results(tmp_path / "one" / "run"), read_results(tmp_path / "two" / "run")
    assert two["environment"]["processes"] == 2 and one["environment"]["processes"] == 1
    assert set(one["cells"]) == set(two["cells"]) == {"w4a4/hadanorm"}
    for key, cell in one["cells"].items():
        assert cell["status"] == "ok"
        assert len(cell["per_sample"]["sqnr_db"]) == 17
        for field in ("metrics", "per_sample", "groups"):
            assert two["cells"][key][field] == cell[field], (key, field)
    assert leaderboard(tmp_path / "one") == leaderboard(tmp_path / "two")
    for name in ("reference.safetensors", "images/w4a4/hadanorm/16.png", "grid_w4a4.png"):
        assert (tmp_path / "one" / "run" / name).read_bytes() == (tmp_path / "two" / "run" / name).read_bytes()
    # the calibration statistics (both processes collected a batch) are the same bytes
    [cache_one], [cache_two] = (sorted((tmp_path / d / "cache").glob("*.safetensors")) for d in ("one", "two"))
    assert cache_one.read_bytes() == cache_two.read_bytes()
    # the second process wrote nothing: the same files in both run folders
    files = {d: sorted(p.relative_to(tmp_path / d).as_posix() for p in (tmp_path / d / "run").rglob("*"))
             for d in ("one", "two")}
    assert files["one"] == files["two"]
    assert output.count("w4a4/hadanorm: sqnr_db") == 1  # one voice: the main process logs


@pytest.mark.slow  # end to end
def test_a_killed_two_process_run_resumes(tmp_path):
    results = tmp_path / "two" / "run" / "results.json"
    process = launch(tmp_path / "two", SPREAD, stall=True)
    try:  # the first round is recorded; the second process stalls in the second round
        while process.poll() is None and not (results.exists() and len(read_results(results)["cells"]) == 2):
            time.sleep(0.1)
    finally:  # the workers (in sessions of their own) and the launcher, mid-run
        for child in [*psutil.Process(process.pid).children(recursive=True), process]:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        output, _ = process.communicate()
    first = read_results(results)  # complete and valid: written atomically
    assert list(first["cells"]) == ["w4a4/none", "w4a4/raises"], output
    # a cell failing on the second process fails, with the reason a single process gives
    assert first["cells"]["w4a4/raises"]["reason"] == "RuntimeError: this transform always fails"
    assert "plugins/failing.py:12 in " in first["cells"]["w4a4/raises"]["raised_at"]  # the plugin's line

    output = run_two(tmp_path / "two", SPREAD, code=1)  # 1: cells failed
    second = read_results(results)
    assert "w4a4/none: done before (ok), skipped" in output
    assert list(second["cells"]) == ["w4a4/none", "w4a4/raises", "w4a4/makes_nan", "w4a4/stalls"]
    for key, cell in first["cells"].items():
        assert second["cells"][key] == cell  # skipped, not redone
    # cells spread over the processes give the numbers and failures of one process
    run_one(tmp_path / "one", SPREAD, code=1)
    one = read_results(tmp_path / "one" / "run")
    for key, cell in one["cells"].items():
        for field in ("status", "reason", "per_sample"):
            assert second["cells"][key][field] == cell[field], (key, field)
