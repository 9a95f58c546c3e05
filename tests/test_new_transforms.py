"""svdquant and stamp (baselines/svdquant.py, baselines/stamp.py), their library helpers
(benchmark/transform/lowrank.py, benchmark/transform/sequence.py), and the random-sign
variants of hadanorm and sdcb."""

from pathlib import Path

import pytest
import torch
from torch import nn

from benchmark import UserError, create_transform, load_plugin_file, quantize_linear
from benchmark.transform.registry import transforms
from benchmark.transform.sequence import plan_sequence, sequence_forward, sequence_inverse
from benchmark.transform.validate import validate_transform

PLUGINS = Path(__file__).parent / "plugins"

# (name, params): the points tested for exactness and validated
VARIANTS = [
    ("svdquant", {}),
    ("svdquant", {"rank": 4, "rotation": "full"}),
    ("svdquant", {"alpha": None}),
    ("stamp", {}),
    ("stamp", {"keep": 8, "rotation": "full"}),
    ("stamp", {"keep": 8, "sequence": "dct"}),
    ("stamp", {"keep": 8, "layout": "1d"}),
]


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def outlier_input(channels, samples=3, tokens=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(channels, generator=gen) * 2 + torch.randn(samples, tokens, channels, generator=gen)
    x[..., 1] *= 40
    x[..., channels // 3] += 30
    return x


def random_walk(samples=2, tokens=256, channels=64, seed=0):
    """Tokens whose neighbours are alike: a random walk along the sequence, per channel."""
    gen = torch.Generator().manual_seed(seed)
    start = torch.randn(1, 1, channels, generator=gen)
    return start + (0.1 * torch.randn(samples, tokens, channels, generator=gen)).cumsum(dim=1)


def test_registered_as_entry_points():
    entries = transforms()
    for name in ("svdquant", "stamp"):
        # the package's own entry points read as "built-in" (tests/test_plugins.py)
        assert entries[name].source == "built-in" and entries[name].value.__module__ == f"baselines.{name}"


@pytest.mark.parametrize("name, params", VARIANTS)
@pytest.mark.parametrize("channels, out", [(64, 48), (1152, 96)])
def test_exact_at_fp(name, params, channels, out):
    torch.manual_seed(channels)
    lin = nn.Linear(channels, out)
    x = outlier_input(channels, tokens=100)  # 10 x 10: the 2-D Haar takes one level
    q = quantize_linear(lin, name, "fp", calibration=x[:2], **params)
    with torch.no_grad():
        assert rel_err(q(x), lin(x)) < 1e-5
        assert rel_err(q(x[0]), lin(x[0])) < 1e-5  # (tokens, channels): one sample


@pytest.mark.parametrize("name, params", VARIANTS)
def test_exact_at_fp_for_a_group(name, params):
    torch.manual_seed(0)
    group = [nn.Linear(128, 128), nn.Linear(128, 64, bias=False), nn.Linear(128, 32)]
    x = outlier_input(128, tokens=300)
    q = quantize_linear(group, name, "fp", calibration=x, **params)
    with torch.no_grad():
        outs = q(x)
        assert isinstance(outs, tuple) and len(outs) == 3
        for lin, y in zip(group, outs, strict=True):
            assert y.shape == lin(x).shape and rel_err(y, lin(x)) < 1e-5


@pytest.mark.parametrize("name, params", VARIANTS[:1] + VARIANTS[3:4] + [("svdquant", {"alpha": "auto"})])
def test_validate_transform(name, params):
    failed = [(c.name, c.detail) for c in validate_transform(name, **params) if not c.passed]
    assert not failed


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["svdquant", "stamp"])
def test_half_precision_inputs(name, dtype):
    torch.manual_seed(0)
    lin = nn.Linear(64, 32).to(dtype)
    x = random_walk()
    q = quantize_linear(lin, name, "w4a4", calibration=x)
    with torch.no_grad():
        y = q(x.to(dtype))
        assert y.dtype == dtype and torch.isfinite(y).all()
        assert rel_err(y.float(), lin(x.to(dtype)).float()) < 0.2


def test_svdquant_beats_smoothquant_on_a_low_rank_weight():
    gen = torch.Generator().manual_seed(0)
    lin = nn.Linear(256, 128)
    with torch.no_grad():  # a strong rank-8 part plus small noise
        lin.weight.copy_(torch.randn(128, 8, generator=gen) @ torch.randn(8, 256, generator=gen) / 8
                         + 0.01 * torch.randn(128, 256, generator=gen))
    x = torch.randn(4, 64, 256, generator=gen)
    x[..., 3] *= 40  # outlier channels
    x[..., 100] *= 25
    calib, test = x[:2], x[2:]
    with torch.no_grad():
        ref = lin(test)
        errors = {name: rel_err(quantize_linear(lin, name, "w4a4", calibration=calib)(test), ref)
                  for name in ("none", "smoothquant", "svdquant")}
    assert errors["svdquant"] < 0.2 * errors["smoothquant"] < errors["none"], errors


def test_svdquant_without_smoothing_is_the_lowrank_plugin():
    """alpha=None: no scales, so the structure is tests/plugins/lowrank.py's."""
    load_plugin_file(PLUGINS / "lowrank.py")
    torch.manual_seed(0)
    lin = nn.Linear(128, 96)
    x = outlier_input(128)
    with torch.no_grad():
        ours = quantize_linear(lin, "svdquant", "w4a4", alpha=None, rank=8)(x)
        plugin = quantize_linear(lin, "lowrank", "w4a4", rank=8)(x)
    assert torch.allclose(ours, plugin, atol=1e-5, rtol=1e-5)


def test_svdquant_describe_and_config():
    lin = nn.Linear(256, 64)
    x = outlier_input(256)
    q = quantize_linear(lin, "svdquant", "w4a4", calibration=x)
    info = q.describe()
    assert info["rank"] == 32 and info["alpha"] == 0.5 and info["scale"] is True
    assert info["lowrank_flops_per_token"] == 2 * 32 * (256 + 64)
    assert info["lowrank_params"] == 32 * (256 + 64)
    assert info["lowrank_bytes"] == 4 * 32 * (256 + 64)  # float32 model
    assert "rank_requested" not in info
    small = quantize_linear(nn.Linear(12, 5), "svdquant", "w4a4", calibration=outlier_input(12)).describe()
    assert small["rank"] == 5 and small["rank_requested"] == 32  # cut to the layer's smaller side
    auto = quantize_linear(lin, "svdquant", "w4a4", calibration=x, alpha="auto").describe()
    assert auto["alpha_search"] == "auto" and 0 <= auto["alpha"] <= 1
    config = create_transform("svdquant", rank=16).config()
    assert config["rank"] == 16 and config["alpha"] == 0.5 and config["rotation"] is None


def test_stamp_beats_none_on_smooth_sequences():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    x = random_walk()
    with torch.no_grad():
        ref = lin(x)
        none = rel_err(quantize_linear(lin, "none", "a4")(x), ref)
        for params in ({}, {"layout": "1d"}, {"sequence": "dct"}, {"rotation": "full"}):
            stamp = rel_err(quantize_linear(lin, "stamp", "a4", **params)(x), ref)
            assert stamp < 0.3 * none, (params, stamp, none)


@pytest.mark.parametrize("params", [{}, {"sequence": "dct"}, {"rotation": "full", "keep": 16}])
def test_stamp_never_mixes_samples(params):
    """A batch element is a sample (a classifier-free guidance batch holds both halves):
    each one's output is what it gets alone."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    x = random_walk(samples=4)
    x[2:] = 50 * x[2:] + 7  # a very different "other half" must not change the first
    q = quantize_linear(lin, "stamp", "w4a4", **params)
    with torch.no_grad():
        batch = q(x)
        for i in range(4):
            assert torch.equal(batch[i], q(x[i:i + 1])[0])
            assert torch.equal(batch[i], q(x[i]))  # (tokens, channels): one sample


def test_stamp_keeps_the_first_tokens_at_8_bits():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    x = random_walk(tokens=64)  # no more tokens than keep: all at 8 bits, a4 is then a8
    with torch.no_grad():
        a4 = quantize_linear(lin, "stamp", "a4", keep=64)(x)
        a8 = quantize_linear(lin, "stamp", "a8", keep=64)(x)
    assert torch.equal(a4, a8)
    info = quantize_linear(lin, "stamp", "a4").describe()
    assert info["keep"] == 64 and info["keep_bits"] == 8 and info["sequence"] == "dwt" and info["layout"] == "auto"
    assert create_transform("stamp", rotation="full").config()["rotation"] == "full"


def test_stamp_keep_as_a_fraction_of_the_tokens():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    x = random_walk(tokens=256)
    with torch.no_grad():  # 1/16 of 256 tokens is 16 of them
        by_fraction = quantize_linear(lin, "stamp", "a4", keep=1 / 16)
        assert by_fraction.group.kept(256) == 16 and by_fraction.group.kept(7) == 1
        assert torch.equal(by_fraction(x), quantize_linear(lin, "stamp", "a4", keep=16)(x))
        assert rel_err(quantize_linear(lin, "stamp", "fp", keep=0.5)(x), lin(x)) < 1e-5


@pytest.mark.parametrize("kind", ["dwt", "dct"])
@pytest.mark.parametrize("layout", ["auto", "1d"])
@pytest.mark.parametrize("tokens", [1, 7, 64, 100, 256, 300, 4096])
def test_sequence_transforms_are_orthogonal(kind, layout, tokens):
    plan = plan_sequence(tokens, kind, layout, 64)
    x = torch.randn(2, tokens, 3, dtype=torch.float64)
    y = sequence_forward(x, plan)
    assert torch.allclose(y.norm(), x.norm()) and torch.allclose(sequence_inverse(y, plan), x, atol=1e-10)
    assert torch.allclose(sequence_forward(x[1:], plan), y[1:])  # per sample


def test_sequence_plans():
    assert plan_sequence(4096, "dwt", "auto", 64).describe() == {"sequence": "dwt", "tokens": 4096,
                                                                 "grid": [64, 64], "levels": 3}  # LL 8 x 8
    assert plan_sequence(300, "dwt", "auto", 64).side is None  # text tokens: 1-D
    assert plan_sequence(256, "dwt", "1d", 64).levels == 2  # 256 -> 128 -> 64
    with pytest.raises(UserError, match="square"):
        plan_sequence(300, "dwt", "2d", 64)


def test_smooth_sequence_energy_gathers_in_the_first_tokens():
    x = random_walk(tokens=256).double()
    for kind in ("dwt", "dct"):
        y = sequence_forward(x, plan_sequence(256, kind, "1d", 64))
        assert y[:, :64].pow(2).sum() > 0.99 * y.pow(2).sum()


@pytest.mark.parametrize("name, params, match", [
    ("svdquant", {"rank": 0}, "rank"),
    ("svdquant", {"rotation": "diagonal"}, "rotation"),
    ("stamp", {"keep": 0}, "keep"),
    ("stamp", {"keep": 1.5}, "keep"),
    ("stamp", {"sequence": "fft"}, "sequence"),
    ("stamp", {"layout": "3d"}, "layout"),
    ("hadanorm", {"seed": 3}, "seed"),  # a seed without random signs changes nothing
    ("sdcb", {"seed": 3}, "seed"),
])
def test_bad_parameters(name, params, match):
    with pytest.raises(UserError, match=match):
        create_transform(name, **params)


def test_svdquant_smoothing_needs_statistics():
    with pytest.raises(UserError, match="calibration"):
        quantize_linear(nn.Linear(64, 32), "svdquant", "w4a4")
    quantize_linear(nn.Linear(64, 32), "svdquant", "w4a4", alpha=None)  # no smoothing: none needed


@pytest.mark.parametrize("name", ["hadanorm", "sdcb"])
def test_random_signs_variants(name):
    torch.manual_seed(0)
    lin = nn.Linear(128, 64)
    x = outlier_input(128)
    with torch.no_grad():
        ref = lin(x)
        signed = quantize_linear(lin, name, "fp", calibration=x, random_signs=True)
        assert rel_err(signed(x), ref) < 1e-5
        assert signed.describe()["rotation"]["random_signs"] is True
        plain = quantize_linear(lin, name, "w4a4", calibration=x)(x)
        signs = quantize_linear(lin, name, "w4a4", calibration=x, random_signs=True)(x)
        other = quantize_linear(lin, name, "w4a4", calibration=x, random_signs=True, seed=1)(x)
    assert not torch.equal(plain, signs) and not torch.equal(signs, other)
    assert max(rel_err(plain, ref), rel_err(signs, ref)) < 0.5
    assert create_transform(name).config()["random_signs"] is False  # the published default
