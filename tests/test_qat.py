"""Quantization-aware fine-tuning (``--qat-steps``): the straight-through estimator, the
option's hash and checks, and fine-tuning the embedded model (few captions, few steps)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmark.captions import load_captions, make_splits
from benchmark.cli import main
from benchmark.errors import UserError
from benchmark.models import load_model
from benchmark.quant.grid import Precision, fake_quantize, quantize_weight
from benchmark.results.schema import read_results
from benchmark.run import qat
from benchmark.run.calibration import caption_seeds, collect_stats
from benchmark.run.config import RunConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = ["a red square on a blue background", "a green circle", "a yellow triangle on black"]
STEPS = 3


def test_straight_through_keeps_the_values_and_passes_the_gradient():
    x = torch.randn(4, 40) * 3
    want = fake_quantize(x, 3)
    for grid in ("zero_point", "min_anchored"):
        leaf = x.clone().requires_grad_()
        got = fake_quantize(leaf, 3, grid)
        assert torch.equal(got.detach(), fake_quantize(x, 3, grid))  # bit for bit
        (got * torch.arange(40.0)).sum().backward()
        assert torch.equal(leaf.grad, torch.arange(40.0).expand(4, 40))  # identity, not round's zero
    assert not torch.equal(want, x)
    w = torch.randn(8, 200).requires_grad_()
    quantize_weight(w, 4).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_w4a3_is_a_precision():
    p = Precision.parse("w4a3")
    assert (p.weight_bits, p.activation_bits, p.name) == (4, 3, "w4a3")


def test_default_keeps_every_published_hash():
    for toml, folder in (("benchmark.toml", "embedded"), ("benchmark-gptq.toml", "embedded-gptq")):
        published = read_results(ROOT / "leaderboard" / folder)["config_hash"]
        config = ROOT / "leaderboard" / toml
        assert load_config(str(config), fresh=True).hash() == published
        assert load_config(str(config), {"qat_steps": 0}, fresh=True).hash() == published
    plain = RunConfig().validate()
    assert plain.qat_steps is None and "qat_steps" in plain.to_json()
    assert RunConfig(qat_steps=40).validate().hash() != plain.hash()
    assert RunConfig(qat_steps=40).validate().hash() != RunConfig(qat_steps=20).validate().hash()


@pytest.mark.parametrize("value, message", [
    (-1, "qat_steps must be an integer >= 0, got -1"),
    (1.5, "qat_steps must be an integer or none, got 1.5"),
    ("4", "qat_steps must be an integer or none, got '4'"),
])
def test_bad_values_are_refused_in_one_line(value, message):
    with pytest.raises(UserError) as error:
        load_config(overrides={"qat_steps": value})
    assert str(error.value) == message and "\n" not in str(error.value)
    with pytest.raises(UserError, match="weight_rounding='gptq' cannot be fine-tuned"):
        load_config(overrides={"qat_steps": 4, "weight_rounding": "gptq"})


@pytest.mark.parametrize("flag, message", [("-2", "qat_steps must be an integer >= 0, got -2"),
                                           ("1.5", "invalid int value: '1.5'")])
def test_bad_flags_exit_2_with_one_line(tmp_path, capsys, flag, message):
    assert main(["run", "--out", str(tmp_path / "out"), "--qat-steps", flag]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def embedded():
    model = load_model("embedded")
    seeds = caption_seeds(len(CAPTIONS))
    stats = collect_stats(model, CAPTIONS, seeds, steps=STEPS, batch_size=2)
    return model, stats


def _finetuned(model, stats, teacher, precision="w4a3", transform="quarot"):
    with model.quantized(transform, precision, stats):
        record = qat.finetune(model, teacher, label="test")
        generation = model.generate(CAPTIONS[:2], [7, 8], steps=STEPS, batch_size=2)
    return record, generation


def test_finetuning_lowers_the_loss_and_restores_the_model(embedded):
    model, stats = embedded
    before = {k: v.clone() for k, v in model.transformer.state_dict().items()}
    teacher = qat.record_teacher(model, CAPTIONS, STEPS, 8, seed=0, batch_size=2)
    assert teacher.steps == 8 and set(teacher.calls) == set(teacher.draws)
    assert all(0 <= i < 2 * STEPS for i in teacher.draws)  # 2 batches of captions x 3 steps
    with model.quantized("none", "w4a3", stats):
        ptq = model.generate(CAPTIONS[:2], [7, 8], steps=STEPS, batch_size=2)
    record, generation = _finetuned(model, stats, teacher, transform="none")
    assert record["final_loss"] < record["initial_loss"]
    assert record["trained_groups"] == len(model.targets()) and record["untrained_groups"] == []
    assert len(record["step_losses"]) == 8 and record["steps"] == 8 and record["seconds"] > 0
    assert not torch.equal(generation.latents, ptq.latents)  # the fine-tuned weights generated
    after = model.transformer.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in model.transformer.parameters())


def test_record_teacher_refuses_no_steps(embedded):
    model, _ = embedded
    for steps in (0, -3, 2.5):
        with pytest.raises(UserError, match="positive number of steps"):
            qat.record_teacher(model, CAPTIONS, STEPS, steps)


def test_finetuning_is_deterministic(embedded):
    model, stats = embedded
    first_teacher = qat.record_teacher(model, CAPTIONS, STEPS, 4, seed=3, batch_size=2)
    second_teacher = qat.record_teacher(model, CAPTIONS, STEPS, 4, seed=3, batch_size=2)
    assert first_teacher.draws == second_teacher.draws
    first, first_images = _finetuned(model, stats, first_teacher, "w4a4", "hadanorm")
    second, second_images = _finetuned(model, stats, second_teacher, "w4a4", "hadanorm")
    for key in ("initial_loss", "final_loss", "step_losses"):
        assert first[key] == second[key]
    assert torch.equal(first_images.latents, second_images.latents)
    assert qat.record_teacher(model, CAPTIONS, STEPS, 4, seed=4, batch_size=2).draws != first_teacher.draws


def test_a_run_fine_tunes_on_calibration_captions_only(tmp_path, monkeypatch):
    from benchmark.models.embedded.adapter import TextEncoder
    from benchmark.run import runner

    encoded, original_encode = [], TextEncoder.encode
    recording = []

    def spy_teacher(model, captions, *args, **kwargs):
        recording.append(True)
        try:
            return qat.record_teacher(model, captions, *args, **kwargs)
        finally:
            recording.pop()

    def spy_encode(self, captions):
        if recording:
            encoded.extend(captions)
        return original_encode(self, captions)

    monkeypatch.setattr(runner, "record_teacher", spy_teacher)
    monkeypatch.setattr(TextEncoder, "encode", spy_encode)
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--calib-size", "2",
                 "--eval-size", "2", "--steps", "2", "--metrics", "sqnr", "--device", "cpu",
                 "--precisions", "w4a3", "--transforms", "none", "--qat-steps", "3"]) == 0
    results = read_results(out)
    cell = results["cells"]["w4a3/none"]
    assert cell["qat"]["steps"] == 3 and cell["timings"]["qat_s"] > 0
    assert results["config"]["qat_steps"] == 3 and results["qat_teacher"]["captions"] == "calibration"
    seen = {c for c in encoded if c}  # "" is the unconditional caption
    split = make_splits(load_captions("embedded", None), 2, 2, seed=0)  # the run's splits
    assert seen == {c.text for c in split.calibration}
    assert not seen & {c.text for c in split.evaluation}
