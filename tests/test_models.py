"""Model adapters: the tiny PixArt-Sigma pipeline through the real loading path (offline),
target discovery, generation determinism, swapping targets in and out, and the shipped
embedded model."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may come from the hub

import shutil

import pytest
import torch
from torch import nn

from benchmark.families.examples import save_tiny_pixart
from benchmark.models import ROLES, load_model
from benchmark.models.base import TargetGroup, _SharedCall
from benchmark.models.embedded import EMBEDDED_DIR
from benchmark.run.calibration import calibrate
from benchmark.transform.registry import BASELINES

CAPTIONS = ["a red cat sitting on the table", "two dogs in a field"]
SEEDS = [11, 12]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_pixart(tmp_path_factory.mktemp("tiny") / "pipeline")


@pytest.fixture(scope="module")
def tiny(tiny_folder):
    return load_model(str(tiny_folder))


@pytest.fixture(scope="module")
def embedded():
    if not (EMBEDDED_DIR / "embedded.json").is_file():
        pytest.fail("the embedded model is missing: python -m scripts.train_embedded")
    return load_model("embedded")


def test_tiny_pipeline_loads_from_hub_cache_offline(tiny_folder, tmp_path):
    # The hub layout: models--org--name/snapshots/<commit>/..., refs/main -> commit.
    repo = tmp_path / "models--hadabench--tiny-pixart-sigma"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    model = load_model("hadabench/tiny-pixart-sigma", cache_dir=str(tmp_path))
    assert type(model.pipe).__name__ == "PixArtSigmaPipeline"
    # the hub's tokenizer layout: spiece.model only, converted on load
    assert sorted(p.name for p in (tiny_folder / "tokenizer").iterdir()) == ["spiece.model", "tokenizer_config.json"]
    assert model.pipe.tokenizer("a red cat").input_ids[-1] == model.pipe.tokenizer.eos_token_id
    out = model.generate(CAPTIONS[:1], SEEDS[:1], steps=2)
    assert out.latents.shape == (1, 4, 8, 8)


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="cannot load a pipeline from 'hadabench/absent'"):
        load_model("hadabench/absent", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model("embedded", dtype="int3")


def test_tiny_generation_shapes_and_determinism(tiny):
    a = tiny.generate(CAPTIONS, SEEDS, steps=20)
    assert a.latents.shape == (2, 4, 8, 8) and a.images.shape == (2, 3, 16, 16)
    assert a.images.min() >= 0 and a.images.max() <= 1 and a.latents.dtype == torch.float32
    # The same batch twice, and a caption whose neighbour's seed changed: same shapes, same
    # kernels, so bit for bit (each caption's noise comes from its own seed).
    assert torch.equal(tiny.generate(CAPTIONS, SEEDS, steps=20).latents, a.latents)
    c = tiny.generate(CAPTIONS, [SEEDS[0], 99], steps=20)
    assert torch.equal(a.latents[0], c.latents[0]) and not torch.equal(a.latents[1], c.latents[1])
    # Another batch size may take other BLAS kernels (MKL picks them by shape): equal up to
    # float32 rounding (measured <= 5e-7 of the latent range, ATen AVX-512 and default), far below
    # what a batching bug (a caption given another's noise or mask) would change.
    b = tiny.generate(CAPTIONS, SEEDS, steps=20, batch_size=1)
    assert torch.allclose(b.latents, a.latents, rtol=0, atol=1e-5 * a.latents.abs().max().item())


def _check_targets(model):
    groups = model.targets()
    blocks = model.transformer.transformer_blocks
    assert len(groups) == len(ROLES) * len(blocks)
    assert len({g.name for g in groups}) == len(groups)
    listed = {name: (g.role, g.block_index) for g in groups for name, _ in g.linears}
    in_blocks = {name: module for name, module in model.transformer.named_modules()
                 if isinstance(module, nn.Linear) and name.startswith("transformer_blocks.")}
    assert set(listed) == set(in_blocks)  # every block linear, once; nothing outside the blocks
    expected = {"attn1.to_q": "self_attn_qkv", "attn1.to_k": "self_attn_qkv", "attn1.to_v": "self_attn_qkv",
                "attn1.to_out.0": "self_attn_out", "attn2.to_q": "cross_attn_q",
                "attn2.to_k": "cross_attn_kv", "attn2.to_v": "cross_attn_kv",
                "attn2.to_out.0": "cross_attn_out", "ff.net.0.proj": "ffn_up", "ff.net.2": "ffn_down"}
    for name, (role, block) in listed.items():
        _, index, rest = name.split(".", 2)
        assert (role, block) == (expected[rest], int(index)), name
    for g in groups:  # members of a group read the same input width
        assert len({lin.in_features for _, lin in g.linears}) == 1


def test_targets_tiny(tiny):
    _check_targets(tiny)


def test_targets_embedded(embedded):
    _check_targets(embedded)
    assert {g.in_features for g in embedded.targets()} == {192, 768}


def test_shared_call_runs_group_once_per_input():
    calls = []

    class Group(nn.Module):
        def forward(self, x):
            calls.append(1)
            return x + 1, x + 2, x + 3

    group = TargetGroup("g", "self_attn_qkv", 0, [(f"l{i}", nn.Linear(4, 4)) for i in range(3)])
    shared = _SharedCall(Group(), group)
    x = torch.zeros(2, 4)
    assert [shared.output(i, x)[0, 0].item() for i in range(3)] == [1, 2, 3] and len(calls) == 1
    shared.output(0, x)
    x.add_(10)  # changed in place: a new input
    assert shared.output(1, x)[0, 0].item() == 12 and len(calls) == 3
    assert shared.output(2, torch.zeros(2, 4))[0, 0].item() == 3 and len(calls) == 4


def test_shared_call_names_the_group_and_shapes_of_a_wrong_output():
    class Narrow(nn.Module):
        def forward(self, x):
            return (x[..., :3],)

    group = TargetGroup("transformer_blocks.5.ffn_down", "ffn_down", 5, [("l", nn.Linear(4, 4))])
    with pytest.raises(ValueError, match=r"transformer_blocks\.5\.ffn_down: output 0 has shape \(2, 3\), "
                                         r"expected \(2, 4\)"):
        _SharedCall(Narrow(), group).output(0, torch.zeros(2, 4))


def _fp_unchanged(model, captions, seeds, stats):
    reference = model.generate(captions, seeds, steps=20)
    for name in BASELINES:
        with model.quantized(name, "fp", stats) as described:
            assert len(described) == len(model.targets())
            out = model.generate(captions, seeds, steps=20)
        error = (out.latents - reference.latents).norm() / reference.latents.norm()
        assert error < 1e-4, f"{name}: relative error {error:.2e} at fp"
    # auto alpha too, through the same path; describe() records the choice
    with model.quantized("hadanorm", "fp", stats, alpha="auto") as described:
        out = model.generate(captions, seeds, steps=20)
    assert all("alpha" in d for d in described.values())
    assert (out.latents - reference.latents).norm() / reference.latents.norm() < 1e-4
    assert torch.equal(model.generate(captions, seeds, steps=20).latents, reference.latents)


def test_every_transform_at_fp_leaves_latents_unchanged_tiny(tiny):
    stats, _ = calibrate(tiny, CAPTIONS, steps=4, cache_dir=None)
    _fp_unchanged(tiny, CAPTIONS, SEEDS, stats)


@pytest.mark.slow  # end to end
def test_every_transform_at_fp_leaves_latents_unchanged_embedded(embedded):
    captions = ["a red circle in the top left on a black background", "three blue squares on a gray background"]
    stats, _ = calibrate(embedded, captions, steps=4, cache_dir=None)
    _fp_unchanged(embedded, captions, SEEDS, stats)


def test_quantize_swaps_in_and_restores_without_reload(tiny):
    reference = tiny.generate(CAPTIONS, SEEDS, steps=20)
    stats, _ = calibrate(tiny, CAPTIONS, steps=4, cache_dir=None)
    with tiny.quantized("hadanorm", "w4a4", stats):
        assert tiny.is_quantized
        member = tiny.transformer.transformer_blocks[0].attn1.to_k
        assert type(member).__name__ == "QuantizedMember"
        with pytest.raises(RuntimeError, match="already quantized"):
            tiny.quantize("none", "w4a4")
        quantized = tiny.generate(CAPTIONS, SEEDS, steps=20)
    assert not torch.equal(quantized.latents, reference.latents)
    assert isinstance(tiny.transformer.transformer_blocks[0].attn1.to_k, nn.Linear)
    assert torch.equal(tiny.generate(CAPTIONS, SEEDS, steps=20).latents, reference.latents)


def test_quantize_only_some_roles(tiny):
    with tiny.quantized("none", "w4a4", only=["ffn_down", "transformer_blocks.0.self_attn_qkv"]) as described:
        assert sorted(described) == ["transformer_blocks.0.ffn_down", "transformer_blocks.0.self_attn_qkv",
                                     "transformer_blocks.1.ffn_down"]
        assert isinstance(tiny.transformer.transformer_blocks[1].attn1.to_q, nn.Linear)
    with pytest.raises(ValueError, match="no target group or role"):
        tiny.quantize("none", "w4a4", only=["ffn_sideways"])
    with pytest.raises(ValueError, match="needs calibration statistics"):
        tiny.quantize("hadanorm", "w4a4")
    assert not tiny.is_quantized  # a failed quantize installs nothing


def test_embedded_generation_deterministic(embedded):
    captions = ["a yellow cross in the center on a brown background"] * 2
    a = embedded.generate(captions, [3, 4], steps=20)
    b = embedded.generate(captions, [3, 4], steps=20)
    assert a.latents.shape == (2, 3, 32, 32) and torch.equal(a.latents, b.latents)
    # another batch size may pick other CPU kernels: equal up to rounding, not bitwise
    c = embedded.generate(captions, [3, 4], steps=20, batch_size=1)
    assert torch.allclose(a.latents, c.latents, atol=1e-4)
    assert a.images.min() >= 0 and a.images.max() <= 1
