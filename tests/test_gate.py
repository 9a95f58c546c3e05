"""The CI gate end to end: pinned numerics reproduce a run bit for bit, and a transform that
got slightly worse (about 0.3 dB) fails the gate while an honest rerun passes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.quant.numerics import PINNED_ENV
from benchmark.results.schema import metric_value, read_results

PLUGIN = Path(__file__).parent / "plugins" / "degraded.py"
ROOT = Path(__file__).resolve().parents[1]


def pinned_run(out: Path, cache: Path, degrade: str) -> subprocess.CompletedProcess:
    """``python -m benchmark run`` as a user starts it: it pins its own numerics (restarting
    itself), so the environment of this test process does not matter."""
    env = {k: v for k, v in os.environ.items() if k not in PINNED_ENV}
    env["HADABENCH_TEST_DEGRADE"] = degrade
    return subprocess.run(
        [sys.executable, "-m", "benchmark", "run", "--out", str(out), "--cache-dir", str(cache),
         "--calib-size", "2", "--eval-size", "4", "--steps", "4", "--metrics", "sqnr", "--device", "cpu",
         "--precisions", "w6a6", "--transforms", "degraded", "--plugin", str(PLUGIN), "--numerics", "pinned"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def check(run: Path, baseline: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmark", "check", str(run), "--baseline",
                           str(baseline / "results.json")], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # end to end
def test_gate_fails_a_degraded_transform_and_passes_an_honest_rerun(tmp_path):
    cache = tmp_path / "cache"
    runs = {name: tmp_path / name for name in ("baseline", "rerun", "degraded")}
    for name, level in (("baseline", "0"), ("rerun", "0"), ("degraded", "0.0012")):
        done = pinned_run(runs[name], cache, level)
        assert done.returncode == 0, done.stderr
    numerics = read_results(runs["baseline"])["environment"]["numerics"]
    assert numerics["mode"] == "pinned" and numerics["aten_cpu_capability"] == "AVX2"
    assert numerics["mkl_cbwr"] == PINNED_ENV["MKL_CBWR"] and numerics["mkldnn"] is False

    def sqnr(name):
        cell = read_results(runs[name])["cells"]["w6a6/degraded"]
        return metric_value(cell["metrics"]["sqnr_db"]), cell["per_sample"]["sqnr_db"]

    assert sqnr("rerun") == sqnr("baseline")  # pinned: bit for bit, caption by caption
    drop = sqnr("baseline")[0] - sqnr("degraded")[0]
    assert 0.1 < drop < 1.0, drop  # a small regression, far below any 4-bit effect

    honest = check(runs["rerun"], runs["baseline"])
    assert honest.returncode == 0 and "gate: exact" in honest.stdout and "no regression" in honest.stdout
    caught = check(runs["degraded"], runs["baseline"])
    assert caught.returncode == 1 and "REGRESSION" in caught.stdout and "w6a6/degraded sqnr_db" in caught.stdout


def test_pinned_numerics_refused_in_process_without_the_environment(tmp_path, monkeypatch, capsys):
    for key in PINNED_ENV:
        monkeypatch.delenv(key, raising=False)
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--numerics", "pinned", "--device", "cpu", "--metrics", "sqnr",
                 "--eval-size", "2", "--calib-size", "2", "--steps", "2", "--transforms", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MKL_CBWR=COMPATIBLE,STRICT" in err[0]
    assert not out.exists()


def test_unknown_numerics_mode_is_bad_input(capsys):
    assert main(["run", "--numerics", "fast"]) == 2
    assert "unknown numerics 'fast'" in capsys.readouterr().err


def test_a_gpu_run_turns_tf32_off_and_back_on():
    """On a GPU, float32 is float32 in every op for the run (cuDNN's convolutions default to
    TF32, which the quantized cells' linears would not use); the user's settings come back."""
    import torch

    from benchmark.quant import numerics

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with numerics.pinned("native", "cuda:0") as described:
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
            assert described["tf32"] is False and "not applied on cuda:0" in described["mode"]
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.slow  # end to end
def test_float32_is_pinned_through_the_precision_api_the_program_uses():
    """After torch's per-backend API (2.9+) set TF32 and oneDNN's bf16, reading the legacy
    flags raises: a GPU run and the exactness check then go through the new API, computing a
    matmul as without those settings, and give the user's settings back. A fresh process,
    since the two APIs' state cannot be reset."""
    code = """
import torch
from benchmark.quant import numerics
a, b = torch.randn(256, 256, generator=torch.Generator().manual_seed(0)).split(128)
exact = a @ b.T
torch.backends.cuda.matmul.fp32_precision = "tf32"
torch.backends.mkldnn.matmul.fp32_precision = "bf16"
ops = [torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.mkldnn.matmul]
with numerics.pinned("native", "cuda:0") as described:
    assert [op.fp32_precision for op in ops] == ["ieee"] * 3 and described["tf32"] is False
with numerics.ieee_float32():
    assert torch.equal(a @ b.T, exact)
assert [op.fp32_precision for op in ops] == ["tf32", "tf32", "bf16"], [op.fp32_precision for op in ops]
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_every_gated_configuration_hashes_like_its_published_run():
    """Each run of tox's gate (``--config X --out .../NAME`` and its flags) has the hash of the
    committed ``leaderboard/NAME`` it is checked against: a default that changes (a metric added
    to the default list) fails here in a second, not after the gate's twenty minutes."""
    import configparser
    import shlex

    from benchmark.run.config import load_config

    root = Path(__file__).parents[1]
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(root / "tox.ini")
    runs = [shlex.split(line.replace("{/}", "/")) for line in tox["testenv:gate"]["commands"].splitlines()
            if line.strip().startswith("hadabench run")]
    assert len(runs) >= 5
    for argv in runs:
        flags = {flag: value for flag, value in zip(argv, [*argv[1:], ""], strict=True)
                 if flag.startswith("--") and not value.startswith("--")}  # --fresh takes no value
        name = flags["--out"].rsplit("/", 1)[-1]
        overrides = {"qat_steps": int(flags["--qat-steps"])} if "--qat-steps" in flags else {}
        config = load_config(str(root / flags["--config"]), overrides, fresh=True)
        assert config.hash() == read_results(root / "leaderboard" / name)["config_hash"], name
