"""Calibration: what the pass collects, and the disk cache's hit, miss and corruption paths."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import logging

import pytest
import torch

from benchmark.families.examples import save_tiny_pixart
from benchmark.models import load_model
from benchmark.run.calibration import calibrate, caption_seeds, collect_stats, read_captions
from benchmark.transform.base import CalibrationStats

CAPTIONS = ["a red cat sitting on the table", "two dogs in a field", "a bus on the street"]
STEPS = 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(str(save_tiny_pixart(tmp_path_factory.mktemp("tiny") / "pipeline")))


def test_stats_match_all_activations(tiny):
    seen = {}
    groups = tiny.targets()
    hooks = [g.linears[0][1].register_forward_pre_hook(
        lambda m, args, name=g.name: seen.setdefault(name, []).append(args[0].detach().clone()))
        for g in groups]
    try:
        tiny.generate(CAPTIONS, caption_seeds(3), steps=STEPS, batch_size=2)
    finally:
        for h in hooks:
            h.remove()
    stats = collect_stats(tiny, CAPTIONS, caption_seeds(3), steps=STEPS, batch_size=2, max_sample_tokens=256,
                          tokens_per_row=256)
    assert set(stats) == {g.name for g in groups}
    for name, calls in seen.items():
        # batches of 2 and 1 captions, doubled by classifier-free guidance, at every step
        assert len(calls) == 2 * STEPS
        full = [CalibrationStats.from_activations(x) for x in calls]
        s = stats[name]
        assert s.tokens == sum(x.shape[0] * x.shape[1] for x in calls)
        assert torch.equal(s.absmax, torch.stack([f.absmax for f in full]).amax(0))
        assert torch.equal(s.centered_absmax, torch.stack([f.centered_absmax for f in full]).amax(0))
        mean = sum(x.double().sum((0, 1)) for x in calls) / s.tokens
        assert torch.allclose(s.mean.double(), mean, rtol=1e-5, atol=1e-6)
        assert s.sample.dim() == 3 and s.sample.shape[0] * s.sample.shape[1] <= 256
    # text tokens (300 for Sigma's T5) are subsampled to 256 per row: one row fits
    assert stats["transformer_blocks.0.cross_attn_kv"].sample.shape[1:] == (256, 32)


def test_cache_miss_hit_and_stale(tiny, tmp_path):
    stats, info = calibrate(tiny, CAPTIONS, steps=STEPS, cache_dir=tmp_path)
    assert info.status == "miss" and info.path.with_suffix(".json").is_file()
    again, info2 = calibrate(tiny, CAPTIONS, steps=STEPS, cache_dir=tmp_path)
    assert info2.status == "hit" and info2.key == info.key
    for name in stats:
        for field in ("absmax", "centered_absmax", "mean", "sample"):
            assert torch.equal(getattr(stats[name], field), getattr(again[name], field))
        assert stats[name].tokens == again[name].tokens
    # other captions, steps or seed: another key, computed afresh
    for kwargs in ({"captions": CAPTIONS[:2]}, {"steps": STEPS + 1}, {"seed": 5}):
        args = {"captions": CAPTIONS, "steps": STEPS, **kwargs}
        _, other = calibrate(tiny, cache_dir=tmp_path, **args)
        assert other.status == "miss" and other.key != info.key
    # other floating-point paths (here the thread count; also the device, the vector ISA and
    # MKL's branch): their bits differ, so another key
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        _, elsewhere = calibrate(tiny, CAPTIONS, steps=STEPS, cache_dir=tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert elsewhere.status == "miss" and elsewhere.payload["computed_on"]["threads"] == threads + 1
    # new weights (the file's mtime changes): another key
    weights = info.payload["model"]["weights"][0]["path"]
    os.utime(weights, ns=(1, 1))
    _, changed = calibrate(tiny, CAPTIONS, steps=STEPS, cache_dir=tmp_path)
    assert changed.status == "miss" and changed.key != info.key


@pytest.mark.parametrize("damage", ["truncate tensors", "garbage json", "delete tensors",
                                    "edit payload", "flip a byte", "json holds []", "tokens not numbers"])
def test_corrupt_cache_is_rebuilt(tiny, tmp_path, damage, caplog):
    stats, info = calibrate(tiny, CAPTIONS, steps=STEPS, cache_dir=tmp_path)
    tensors, meta = info.path.with_suffix(".safetensors"), info.path.with_suffix(".json")
    if damage == "truncate tensors":
        tensors.write_bytes(tensors.read_bytes()[:100])
    elif damage == "garbage json":
        meta.write_text("{not json")
    elif damage == "delete tensors":
        tensors.unlink()
    elif damage == "json holds []":
        meta.write_text("[]")
    elif damage == "tokens not numbers":
        data = json.loads(meta.read_text())
        data["tokens"] = {name: "abc" for name in data["tokens"]}
        meta.write_text(json.dumps(data))
    elif damage == "edit payload":
        data = json.loads(meta.read_text())
        data["payload"]["steps"] = 99
        meta.write_text(json.dumps(data))
    else:
        raw = bytearray(tensors.read_bytes())
        raw[-5] ^= 0xFF
        tensors.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="benchmark.calibration"):
        rebuilt, info2 = calibrate(tiny, CAPTIONS, steps=STEPS, cache_dir=tmp_path)
    assert any("rebuilding" in r.getMessage() for r in caplog.records)
    assert info2.status.startswith("rebuilt:")
    assert torch.equal(rebuilt["transformer_blocks.1.ffn_down"].absmax, stats["transformer_blocks.1.ffn_down"].absmax)
    _, info3 = calibrate(tiny, CAPTIONS, steps=STEPS, cache_dir=tmp_path)
    assert info3.status == "hit"


def test_calibration_refuses_a_quantized_model(tiny):
    with tiny.quantized("none", "w4a4"):
        with pytest.raises(RuntimeError, match="restore"):
            calibrate(tiny, CAPTIONS, steps=STEPS, cache_dir=None)


def test_alpha_auto_is_recorded(tiny):
    stats, _ = calibrate(tiny, CAPTIONS, steps=STEPS, cache_dir=None)
    with tiny.quantized("smoothquant", "w4a4", stats, alpha="auto") as described:
        pass
    assert all(d["alpha_search"] == "auto" and 0 <= d["alpha"] <= 1 for d in described.values())


def test_read_captions(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("a cat\n\n  a dog  \n")
    assert read_captions(path) == ["a cat", "a dog"]
    path.write_text("\n")
    with pytest.raises(ValueError, match="no captions"):
        read_captions(path)


def test_shipped_caption_sets_are_disjoint():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "benchmark" / "data" / "embedded"
    calibration, evaluation = read_captions(root / "calibration.txt"), read_captions(root / "evaluation.txt")
    assert len(calibration) == len(evaluation) == 64 and not set(calibration) & set(evaluation)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the GPU scripts' day)")
def test_statistics_of_gpu_activations_live_on_the_cpu_and_scale_a_gpu_model():
    """Fresh statistics of GPU activations are where cached ones are read back (the CPU): a
    scaling transform then quantizes a GPU model from either. (A GPU run once failed every
    HadaNorm cell whose calibration was collected in the same process, not read back.)"""
    from benchmark import quantize_linear

    x = torch.randn(2, 16, 32, device="cuda")
    stats = CalibrationStats.from_activations(x)
    assert {t.device.type for t in (stats.absmax, stats.centered_absmax, stats.mean, stats.sample)} == {"cpu"}
    module = quantize_linear(torch.nn.Linear(32, 8).cuda(), "hadanorm", "w4a4", calibration=stats, alpha=0.5)
    assert torch.isfinite(module(x)).all()
