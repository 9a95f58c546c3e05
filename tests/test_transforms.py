import math

import pytest
import torch
from torch import nn

from benchmark import CORRECTIONS, CalibrationStats, Precision, create_transform, quantize_linear
from benchmark.transform.registry import BASELINES


def outlier_input(channels, samples=3, tokens=64, seed=0):
    """Activations whose channel means are far from zero and with two outlier channels."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(channels, generator=gen) * 4
    spread = torch.rand(channels, generator=gen) * 2 + 0.1
    x = means + spread * torch.randn(samples, tokens, channels, generator=gen)
    x[..., 1] *= 60
    x[..., channels // 2] += 80
    return x


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("channels, out", [(64, 48), (1152, 96), (4608, 64)])
def test_exact_at_fp(name, channels, out):
    torch.manual_seed(channels)
    lin = nn.Linear(channels, out)
    x = outlier_input(channels)
    q = quantize_linear(lin, name, "fp", calibration=x[:2])
    with torch.no_grad():
        assert rel_err(q(x), lin(x)) < 1e-5


@pytest.mark.parametrize("name", BASELINES)
def test_exact_at_fp_for_a_group(name):
    torch.manual_seed(0)
    group = [nn.Linear(128, 128), nn.Linear(128, 64, bias=False), nn.Linear(128, 32)]
    x = outlier_input(128)
    q = quantize_linear(group, name, "fp", calibration=x)
    with torch.no_grad():
        outs = q(x)
        assert isinstance(outs, tuple) and len(outs) == 3
        for lin, y in zip(group, outs, strict=False):
            assert y.shape == lin(x).shape and rel_err(y, lin(x)) < 1e-5


@pytest.mark.parametrize("correction", sorted(CORRECTIONS))
def test_every_correction_mode_is_exact_at_fp(correction):
    lin = nn.Linear(256, 64)
    x = outlier_input(256)
    q = quantize_linear(lin, "hadanorm", "fp", calibration=x, correction=correction)
    assert q.describe()["correction"] == correction
    with torch.no_grad():
        assert rel_err(q(x), lin(x)) < 1e-5


def test_size_without_hadamard_matrix():
    lin = nn.Linear(90, 16)  # 90 = 2 * 45: no Hadamard matrix of that order exists
    x = outlier_input(90)
    with pytest.raises(ValueError, match="no Hadamard matrix of order 90"):
        quantize_linear(lin, "hadanorm", "w4a4", calibration=x)
    q = quantize_linear(lin, "hadanorm", "fp", calibration=x, hadamard="block", block_size=2)
    with torch.no_grad():
        assert rel_err(q(x), lin(x)) < 1e-5


def test_input_shapes():
    lin = nn.Linear(64, 32)
    x = outlier_input(64)
    q = quantize_linear(lin, "hadanorm", "w4a4", calibration=x)
    with torch.no_grad():
        assert q(x).shape == (3, 64, 32)
        assert q(x[0]).shape == (64, 32)  # (tokens, channels): one sample
        assert q(x[:, :1]).shape == (3, 1, 32)  # a single token


def test_quantized_outputs_are_close_but_not_exact():
    torch.manual_seed(0)
    lin = nn.Linear(256, 128)
    x = outlier_input(256)
    with torch.no_grad():
        ref = lin(x)
        errors = {p: rel_err(quantize_linear(lin, "hadanorm", p, calibration=x)(x), ref)
                  for p in ("w4a4", "w6a6", "w8a8")}
    assert 0 < errors["w8a8"] < errors["w6a6"] < errors["w4a4"] < 0.5


def test_transforms_need_calibration_when_they_scale():
    lin = nn.Linear(64, 8)
    with pytest.raises(ValueError, match="calibration"):
        quantize_linear(lin, "smoothquant", "w4a4")
    quantize_linear(lin, "quarot", "w4a4")  # no scales: no calibration needed


def test_unknown_names_and_parameters():
    lin = nn.Linear(64, 8)
    with pytest.raises(ValueError, match="unknown transform 'nope'"):
        quantize_linear(lin, "nope", "w4a4")
    with pytest.raises(ValueError, match="has no parameter 'beta'"):
        quantize_linear(lin, "hadanorm", "w4a4", beta=1)
    with pytest.raises(ValueError, match="alpha must be in"):
        create_transform("smoothquant", alpha=2.0)
    with pytest.raises(ValueError, match="correction must be one of"):
        create_transform("hadanorm", correction="magic")
    with pytest.raises(ValueError, match="unknown precision"):
        quantize_linear(lin, "none", "a0")


def test_smoothquant_scale_rule():
    torch.manual_seed(0)
    lin = nn.Linear(16, 8, bias=False)
    x = outlier_input(16)
    q = quantize_linear(lin, "smoothquant", "fp", calibration=x, alpha=0.5)
    expected = (x.abs().amax(dim=(0, 1)) ** 0.5 / lin.weight.abs().amax(0) ** 0.5)
    assert torch.allclose(1 / q.group.inv_scale, expected, rtol=1e-5)
    # HadaNorm's rule reads the absmax of centred activations
    h = quantize_linear(lin, "hadanorm", "fp", calibration=x, alpha=0.5)
    centred = (x - x.mean(1, keepdim=True)).abs().amax(dim=(0, 1))
    assert torch.allclose(1 / h.group.inv_scale, centred ** 0.5 / lin.weight.abs().amax(0) ** 0.5,
                          rtol=1e-5)


def test_alpha_auto_picks_a_grid_value_and_records_it():
    torch.manual_seed(0)
    lin = nn.Linear(128, 64)
    x = outlier_input(128)
    q = quantize_linear(lin, "sdcb", "w4a4", calibration=x, alpha="auto")
    info = q.describe()
    assert info["alpha_search"] == "auto" and 0.0 <= info["alpha"] <= 1.0
    fixed = {a: rel_err(quantize_linear(lin, "sdcb", "w4a4", calibration=x, alpha=a)(x), lin(x))
             for a in (0.0, 0.5, 1.0)}
    with torch.no_grad():
        assert rel_err(q(x), lin(x)) <= min(fixed.values()) * 1.05


def test_quarot_seed_changes_signs_not_exactness():
    lin = nn.Linear(64, 8)
    x = outlier_input(64)
    a = quantize_linear(lin, "quarot", "w4a4", seed=0)
    b = quantize_linear(lin, "quarot", "w4a4", seed=1)
    with torch.no_grad():
        assert not torch.equal(a(x), b(x))
        assert torch.equal(a(x), quantize_linear(lin, "quarot", "w4a4", seed=0)(x))


def activation_sqnr(name, x, bits=4, **params):
    """Quantize the transformed activations per token, undo the transform exactly, and
    compare with the input: an identity layer with full-precision weights does just that."""
    identity = nn.Linear(x.shape[-1], x.shape[-1], bias=False)
    nn.init.eye_(identity.weight)
    if name in ("dyncenter", "hadanorm"):
        params["correction"] = "exact"
    transform = create_transform(name, **params)
    module = transform.quantize([identity], Precision(None, bits), CalibrationStats.from_activations(x))
    with torch.no_grad():
        (y,) = module(x)
    return 10 * math.log10(x.pow(2).sum() / (y - x).pow(2).sum())


def test_figure1_centering_helps_the_hadamard_transform():
    """The paper's Figure 1: channels with very different means and one outlier channel."""
    gen = torch.Generator().manual_seed(0)
    channels = 64
    means = torch.linspace(-20, 20, channels)[torch.randperm(channels, generator=gen)]
    x = means + torch.randn(4, 256, channels, generator=gen)
    x[..., 5] = 30 * torch.randn(4, 256, generator=gen)  # the outlier channel
    sqnr = {name: activation_sqnr(name, x) for name in BASELINES}
    for other in ("sdcb", "quarot", "none"):
        assert sqnr["hadanorm"] > sqnr[other] + 1.0, sqnr


@pytest.mark.parametrize("transform", ["smoothquant", "hadanorm"])
def test_half_precision_model_with_a_near_dead_channel_stays_finite(transform):
    """alpha = 1 makes s a channel's absmax (floored at 1e-5): 1/s is up to 1e5, past
    float16's largest value. The scales live in float32 like the online part's arithmetic, so
    a float16 model quantizes to finite outputs (alpha="auto" tries alpha = 1 too)."""
    from benchmark import quantize_linear

    gen = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(64, 16).half()
    x = torch.randn(2, 8, 64, generator=gen)
    x[..., 5] = 1e-7  # a channel that hardly ever fires
    stats = CalibrationStats.from_activations(x)
    for alpha in (1.0, "auto"):
        module = quantize_linear(linear, transform, "w4a4", calibration=stats, alpha=alpha)
        assert module.group.inv_scale.dtype == torch.float32
        y = module(x.half())
        assert y.dtype == torch.float16 and torch.isfinite(y).all()


def test_half_precision_weights_are_quantized_in_float32_then_rounded_once():
    """A bfloat16 model's weight grid is the float32 one, rounded to bfloat16 once: within
    half a step plus that one rounding (a grid computed in bfloat16 was off by up to 0.59 step)."""
    from benchmark import quantize_linear
    from benchmark.quant.grid import quantize_weight

    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 32).bfloat16()
    module = quantize_linear(linear, "none", "w4")
    expected = quantize_weight(linear.weight.detach().float(), 4).to(torch.bfloat16)
    assert torch.equal(module.group.weight, expected)
