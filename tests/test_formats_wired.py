"""The FP4 formats and GPTQ wired through the precisions, ``TransformedLinear`` and the API
(``quantize_linear``, ``quantize_``, ``calibrate``).

The FP4 reference here is independent of ``benchmark/quant/formats.py`` (not imported): E2M1
and E4M3 by enumerating their code points and taking the nearest with ties to the even code,
vectorized over a table; the MX exponent from ``torch.frexp``; NVFP4's scales in float32
torch arithmetic; a short last block by slicing."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark import CalibrationStats, Precision, QuantizedGroup, Transform, calibrate, quantize_, quantize_linear
from benchmark.errors import UserError
from benchmark.quant.kernels import resolve_kernel
from benchmark.quant.kernels.compiled import compile_available
from benchmark.transform.base import AffineTransform, TransformedLinear
from benchmark.transform.registry import BASELINES

FP4 = ("mxfp4", "nvfp4")

# ---------------------------------------------------------------- independent reference

E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=torch.float64)
E4M3 = torch.tensor([m / 8 * 2.0**-6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)
                     for e in range(16) for m in range(8) if (e, m) != (15, 7)], dtype=torch.float64)


def nearest(v: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Each element's nearest code value (by |v|, sign kept), ties to the even code index,
    saturating at the largest code; in float64."""
    a = v.double().abs().reshape(-1, 1)
    distance = (a - codes).abs()
    best = distance.min(dim=1, keepdim=True).values
    even = (torch.arange(codes.numel()) % 2 == 0).double()
    pick = ((distance == best).double() * (1 + even)).argmax(dim=1)  # a tie: the even code
    return (codes[pick].reshape(v.shape) * torch.sign(v.double())).where(v != 0, 0.0)


def ref_mxfp4(x: torch.Tensor) -> torch.Tensor:
    rows = x.float().reshape(-1, x.shape[-1])
    out = torch.empty_like(rows, dtype=torch.float64)
    for start in range(0, rows.shape[1], 32):
        block = rows[:, start:start + 32].double()
        amax = block.abs().amax(dim=1, keepdim=True)
        _, e = torch.frexp(amax)  # amax = m 2^e, m in [0.5, 1): floor(log2 amax) = e - 1
        scale = torch.pow(2.0, (e - 1 - 2).clamp(-127, 127).double())
        out[:, start:start + 32] = torch.where(amax > 0, nearest(block / scale, E2M1) * scale, 0.0)
    return out.float().reshape(x.shape).to(x.dtype)


def ref_nvfp4(x: torch.Tensor) -> torch.Tensor:
    rows = x.float().reshape(-1, x.shape[-1])
    out = torch.zeros_like(rows)
    g = rows.abs().amax(dim=1, keepdim=True) / 2688.0  # float32, per row
    for start in range(0, rows.shape[1], 16):
        block = rows[:, start:start + 16]
        ratio = (block.abs().amax(dim=1, keepdim=True) / 6.0) / torch.where(g > 0, g, 1.0)
        scale = nearest(ratio, E4M3).float() * g
        q = nearest(block / torch.where(scale > 0, scale, 1.0), E2M1).float() * scale
        out[:, start:start + 16] = q
    return out.reshape(x.shape).to(x.dtype)


REF = {"mxfp4": ref_mxfp4, "nvfp4": ref_nvfp4}


def test_reference_by_hand():
    """The reference itself on values worked out by hand (one block each)."""
    x = torch.tensor([[4.0, 1.25, 0.75, -2.5, 7.0, 0.2]])  # amax 7: floor(log2) 2, scale 1
    assert ref_mxfp4(x).tolist() == [[4.0, 1.0, 1.0, -2.0, 6.0, 0.0]]
    y = torch.tensor([[2688.0, 6.0, 3.0]])  # g = 1, block scale 448: 6/448, 3/448 round to 0
    assert ref_nvfp4(y).tolist() == [[2688.0, 0.0, 0.0]]


# ---------------------------------------------------------------- inputs


def correlated(channels: int, samples: int = 4, tokens: int = 256, seed: int = 0, means: float = 0.0,
               draw: int = 0):
    """Activations with strongly correlated channels (and optional channel means): the
    distribution is ``seed``'s, ``draw`` picks the sample drawn from it."""
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(channels, channels, generator=gen) / channels**0.5
    offset = means * torch.randn(channels, generator=gen)
    noise = torch.randn(samples, tokens, channels, generator=torch.Generator().manual_seed(1000 * seed + draw))
    return noise @ mixing + offset


def linear(channels: int, out: int, seed: int = 0, bias: bool = True) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(channels, out, bias=bias)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


# ---------------------------------------------------------------- precisions


@pytest.mark.parametrize("name, w, a, wf, af, fmt", [
    ("mxfp4", 4, 4, "mxfp4", "mxfp4", "mxfp4"), ("NVFP4", 4, 4, "nvfp4", "nvfp4", "nvfp4"),
    ("wmxfp4", 4, None, "mxfp4", "int", "mxfp4"), ("anvfp4", None, 4, "int", "nvfp4", "nvfp4"),
    ("wmxfp4a8", 4, 8, "mxfp4", "int", "mixed"), ("w4anvfp4", 4, 4, "int", "nvfp4", "mixed"),
    ("w4a4", 4, 4, "int", "int", "int"), ("fp", None, None, "int", "int", "int")])
def test_precision_formats(name, w, a, wf, af, fmt):
    p = Precision.parse(name)
    assert (p.weight_bits, p.activation_bits, p.weight_format, p.activation_format, p.format) == (w, a, wf, af, fmt)
    assert Precision.parse(p.name) == p


def test_existing_names_are_unchanged():
    for name in ("w4a4", "w6a6", "w4a8", "a4", "w4", "fp"):
        assert Precision.parse(name).name == name and Precision.parse(name).format == "int"
    int_grid = Precision(4, 4, weight_block=64, weight_symmetric=True, grid="min_anchored")
    assert int_grid.name == "w4a4-g64-sym-minanchored" and int_grid.format == "int"
    assert Precision.parse("wmxfp4amxfp4").name == "mxfp4"


def test_fp4_names_ignore_the_int_grid_settings():
    """The run sets its INT grid on every precision: an FP4 side has no such grid."""
    assert Precision(4, 4, grid="min_anchored", weight_format="mxfp4", activation_format="mxfp4").name == "mxfp4"
    assert Precision(4, 8, grid="min_anchored", weight_format="nvfp4").name == "wnvfp4a8-minanchored"
    assert Precision(4, 8, weight_block=64, weight_format="nvfp4").name == "wnvfp4a8"


def test_precision_refusals():
    with pytest.raises(UserError, match="unknown weight_format 'fp8'"):
        Precision(4, 4, weight_format="fp8")
    with pytest.raises(UserError, match="activation_format 'mxfp4' is a 4-bit format: activation_bits must be 4"):
        Precision(4, 8, activation_format="mxfp4")
    for bad in ("mxfp4a4", "amxfp4w4", "wmxfp8", "mxfp", "wnvfp4a1"):
        with pytest.raises(UserError, match="unknown precision"):
            Precision.parse(bad)


# ---------------------------------------------------------------- FP4 through quantize_linear


@pytest.mark.parametrize("channels", [128, 80])  # 80: a short last block for mxfp4
@pytest.mark.parametrize("fmt", FP4)
def test_fp4_linear_is_q_x_times_q_w(fmt, channels):
    """transform "none": y = Q(x) Q(W)^T + b, with the independent reference, bit for bit."""
    lin = linear(channels, 48, seed=channels)
    x = correlated(channels, samples=2, tokens=9, seed=1) * 3
    x[0, 0, 5] = 40.0  # an outlier
    q = quantize_linear(lin, "none", fmt)
    ref = REF[fmt]
    with torch.no_grad():
        want = F.linear(ref(x), ref(lin.weight), lin.bias)
        torch.testing.assert_close(q(x), want, rtol=0, atol=0)
        assert rel_err(q(x), lin(x)) > 0  # quantized indeed
    described = q.describe()
    assert described["precision"] == fmt and described["format"] == fmt and described["kernel"] == "torch"
    assert described["weight_rounding"] == "rtn"


@pytest.mark.parametrize("fmt", FP4)
def test_fp4_one_side_only_and_mixed(fmt):
    lin = linear(64, 32)
    x = correlated(64, samples=1, tokens=5)
    ref = REF[fmt]
    with torch.no_grad():
        torch.testing.assert_close(quantize_linear(lin, "none", f"w{fmt}")(x), F.linear(x, ref(lin.weight), lin.bias),
                                   rtol=0, atol=0)
        torch.testing.assert_close(quantize_linear(lin, "none", f"a{fmt}")(x), F.linear(ref(x), lin.weight, lin.bias),
                                   rtol=0, atol=0)
        mixed = quantize_linear(lin, "none", f"w{fmt}a8")
        int8 = quantize_linear(lin, "none", "a8")  # the INT8 activations of a8
        torch.testing.assert_close(mixed(x), F.linear(int8.group.online(x, None, 8), ref(lin.weight), lin.bias),
                                   rtol=0, atol=0)
    assert mixed.describe()["format"] == "mixed" and mixed.describe()["weight_format"] == fmt


@pytest.mark.parametrize("fmt", FP4)
def test_fp4_mean_token_uses_the_format(fmt):
    """dyncenter (mu dynamic, s = 1, R = I), correction quantized_token: the appended mean
    token is quantized in the same FP4 format as every other token."""
    lin = linear(96, 40, seed=3)
    x = correlated(96, samples=2, tokens=11, seed=2, means=4.0)
    ref = REF[fmt]
    q = quantize_linear(lin, "dyncenter", fmt)
    with torch.no_grad():
        mu = x.mean(dim=-2, keepdim=True)
        w = ref(lin.weight)
        want = F.linear(ref(x - mu), w, lin.bias)
        want += F.linear(ref(mu), w)
        torch.testing.assert_close(q(x), want, rtol=0, atol=0)
        fp_token = quantize_linear(lin, "dyncenter", fmt, correction="fp_token")(x)
        assert not torch.equal(fp_token, want)  # the mean token's format does matter here


@pytest.mark.parametrize("fmt", FP4)
def test_fp4_half_precision_is_quantized_in_float32_and_rounded_once(fmt):
    lin = linear(64, 32).to(torch.bfloat16)
    x = correlated(64, samples=1, tokens=6).to(torch.bfloat16)
    ref = REF[fmt]
    with torch.no_grad():
        want = F.linear(ref(x.float()).to(torch.bfloat16), ref(lin.weight.float()).to(torch.bfloat16), lin.bias)
        torch.testing.assert_close(quantize_linear(lin, "none", fmt)(x), want, rtol=0, atol=0)


@pytest.mark.parametrize("name", BASELINES)
def test_every_baseline_exact_at_fp_and_finite_at_fp4(name):
    lin = linear(128, 64, seed=5)
    x = correlated(128, samples=3, tokens=32, seed=5, means=3.0)
    x[..., 7] *= 30  # an outlier channel
    with torch.no_grad():
        assert rel_err(quantize_linear(lin, name, "fp", calibration=x[:2])(x), lin(x)) < 1e-5
        for fmt in FP4:
            q = quantize_linear(lin, name, fmt, calibration=x[:2])
            y = q(x)
            assert torch.isfinite(y).all() and 0 < rel_err(y, lin(x)) < 0.5, (name, fmt, rel_err(y, lin(x)))
            assert q.describe()["format"] == fmt


@pytest.mark.slow
@pytest.mark.skipif(not compile_available("cpu")[0], reason="no C++ compiler for inductor")
def test_fp4_on_the_compiled_path_is_the_torch_path():
    lin = linear(256, 64, seed=7)
    x = correlated(256, samples=2, tokens=8, seed=7, means=2.0)
    for fmt in FP4:
        q = quantize_linear(lin, "hadanorm", fmt, calibration=x)
        with torch.no_grad():
            want = q(x)
            assert q.group.use_kernel("compile").describe()["kernel"] == "compile"
            torch.testing.assert_close(q(x), want, rtol=0, atol=0)


def test_fp4_kernel_choice():
    """The fused Triton kernel has no FP4 quantizer: refused, and "auto" means torch."""
    for fmt in FP4:
        assert resolve_kernel("auto", "cuda", fmt) == "torch"
        with pytest.raises(UserError, match=f"kernel 'triton' cannot quantize {fmt} activations"):
            resolve_kernel("triton", "cuda", fmt)
    q = quantize_linear(linear(64, 16), "none", "nvfp4")
    with pytest.raises(UserError, match="the fused kernel implements the INT grids only"):
        q.group.use_kernel("triton")
    # FP4 weights with INT activations: the online part is the INT path, any kernel
    weights_only = quantize_linear(linear(64, 16), "none", "wnvfp4a8")
    assert weights_only.group.activation_format == "int"


# ---------------------------------------------------------------- GPTQ


def test_transformed_hessian_is_the_hessian_of_the_transformed_tokens():
    """What GPTQ gets: A H A^T with A the transform's linear part, i.e. the Hessian of the
    tokens the online part produces (raw tokens for the mean-token corrections, centred ones
    for correction="exact")."""
    x = correlated(128, samples=3, tokens=64, seed=8, means=2.0)
    stats = CalibrationStats.from_activations(x, hessian=True)
    lin = linear(128, 32, seed=8)
    for correction, mu in (("quantized_token", None), ("exact", x.mean(dim=1, keepdim=True))):
        q = quantize_linear(lin, "hadanorm", "fp", calibration=stats, correction=correction).group
        with torch.no_grad():
            t = q.online(x, mu, None).double().reshape(-1, 128)
        want = 2 * t.T @ t / t.shape[0]
        got = q._gptq_hessian(stats, 128, "cpu")
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * want.abs().max().item())


def test_hessian_statistics_cover_every_token_and_merge():
    x = correlated(64, samples=6, tokens=900, seed=9, means=1.0)  # 5400 tokens, past the 4096 sample
    stats = CalibrationStats.from_activations(x, hessian=True)
    flat = x.double().reshape(-1, 64)
    torch.testing.assert_close(stats.hessian, 2 * flat.T @ flat / flat.shape[0])
    centred = (x - x.mean(dim=1, keepdim=True)).double().reshape(-1, 64)
    torch.testing.assert_close(stats.centered_hessian, 2 * centred.T @ centred / flat.shape[0])
    merged = CalibrationStats.from_activations(x[:2], hessian=True).merge(
        CalibrationStats.from_activations(x[2:], hessian=True))
    torch.testing.assert_close(merged.hessian, stats.hessian)
    torch.testing.assert_close(merged.centered_hessian, stats.centered_hessian)
    assert CalibrationStats.from_activations(x).hessian is None  # only when asked
    assert merged.merge(CalibrationStats.from_activations(x)).hessian is None


@pytest.mark.parametrize("precision", ["w3", "w3a8"])
@pytest.mark.parametrize("transform", ["none", "smoothquant", "quarot", "hadanorm"])
def test_gptq_beats_round_to_nearest_through_quantize_linear(transform, precision):
    lin = linear(256, 96, seed=10)
    x = correlated(256, samples=4, tokens=512, seed=10, means=1.0)
    held_out = correlated(256, samples=2, tokens=512, seed=10, means=1.0, draw=1)  # same distribution
    rtn = quantize_linear(lin, transform, precision, calibration=x)
    gptq = quantize_linear(lin, transform, precision, calibration=x, weight_rounding="gptq")
    with torch.no_grad():
        reference = lin(held_out)
        err_rtn, err_gptq = rel_err(rtn(held_out), reference), rel_err(gptq(held_out), reference)
    assert err_gptq < 0.9 * err_rtn, (err_gptq, err_rtn)
    described = gptq.describe()
    assert described["weight_rounding"] == "gptq" and described["precision"] == precision + "-gptq"
    assert rtn.describe()["precision"] == precision


def test_gptq_through_quantize_and_calibrate():
    torch.manual_seed(11)
    model = nn.Sequential(nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 64))
    mixing = torch.randn(128, 128, generator=torch.Generator().manual_seed(11)) / 128**0.5
    batches = [torch.randn(2, 256, 128, generator=torch.Generator().manual_seed(i)) @ mixing for i in range(3)]
    run = lambda: [model(b) for b in batches]  # noqa: E731
    plain = calibrate(model, run)
    assert all(s.hessian is None for s in plain.values())
    with pytest.raises(UserError, match="needs each group's input Hessian.*calibrate.*hessian=True"):
        quantize_(model, "quarot", "w3", calibration=plain, weight_rounding="gptq")
    stats = calibrate(model, run, hessian=True)
    assert all(s.hessian.shape == (128, 128) for s in stats.values())
    test = torch.randn(2, 256, 128, generator=torch.Generator().manual_seed(7)) @ mixing
    with torch.no_grad():
        reference = model(test)
        with quantize_(model, "quarot", "w3", calibration=stats) as rtn:
            err_rtn = rel_err(model(test), reference)
        with quantize_(model, "quarot", "w3", calibration=stats, weight_rounding="gptq") as gptq:
            err_gptq = rel_err(model(test), reference)
    assert err_gptq < 0.9 * err_rtn, (err_gptq, err_rtn)
    assert {d["precision"] for d in gptq.described.values()} == {"w3-gptq"}
    assert {d["weight_rounding"] for d in rtn.described.values()} == {"rtn"}


def test_default_rounding_keeps_every_number():
    lin = linear(128, 32, seed=12)
    x = correlated(128, samples=2, tokens=64, seed=12, means=2.0)
    for name in ("w4a4", "w4", "a4", "mxfp4"):
        a = quantize_linear(lin, "hadanorm", name, calibration=x)
        b = quantize_linear(lin, "hadanorm", name, calibration=x, weight_rounding="rtn")
        with torch.no_grad():
            torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


# ---------------------------------------------------------------- refusals


def test_gptq_refusals():
    lin = linear(64, 16)
    x = correlated(64, samples=2, tokens=64)
    with pytest.raises(UserError, match="rounds onto the INT weight grids only, not onto mxfp4"):
        quantize_linear(lin, "none", "mxfp4", calibration=x, weight_rounding="gptq")
    with pytest.raises(UserError, match="keeps the weights in full precision"):
        quantize_linear(lin, "none", "a4", calibration=x, weight_rounding="gptq")
    with pytest.raises(UserError, match="unknown weight_rounding 'awq'"):
        quantize_linear(lin, "none", "w4a4", calibration=x, weight_rounding="awq")
    with pytest.raises(UserError, match="needs the Hessian of the input"):
        quantize_linear(lin, "none", "w4a4", weight_rounding="gptq")
    with pytest.raises(UserError, match="needs the Hessian of the input"):
        quantize_linear(lin, "none", "w4a4", calibration=CalibrationStats.from_activations(x),
                        weight_rounding="gptq")
    with pytest.raises(UserError, match="over 64 input channels needs at least 64 calibration tokens, only 40 seen"):
        quantize_linear(lin, "none", "w4a4", calibration=x[:1, :40], weight_rounding="gptq")


def test_gptq_refused_for_modules_that_do_not_do_it():
    lin = linear(64, 16)
    x = correlated(64, samples=2, tokens=64)

    class OldStyle(AffineTransform):  # a plugin's _build written before GPTQ (no stats=)
        def _build(self, linears, precision, scale, rotation, info):
            return TransformedLinear(linears, precision, center=False, scale=None, rotation=None)

    with pytest.raises(UserError, match="its _build takes no stats=.*cannot do weight_rounding='gptq'"):
        quantize_linear(lin, OldStyle(name="old"), "w4a4", calibration=x, weight_rounding="gptq")
    assert quantize_linear(lin, OldStyle(name="old"), "w4a4", calibration=x) is not None  # RTN: fine

    class Own(Transform):  # a plugin's own module, rounding to nearest whatever it is asked
        name = "own"

        def quantize(self, linears, precision, stats=None):
            class Group(QuantizedGroup):
                def forward(self, x):
                    return (x,)
            return Group()

    with pytest.raises(UserError, match="'own' builds its own module, which does not do weight_rounding='gptq'"):
        quantize_linear(lin, Own(), "w4a4", calibration=x, weight_rounding="gptq")
