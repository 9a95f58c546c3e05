"""FP4 block formats (benchmark/quant/formats.py) against an independent reference, and GPTQ
(benchmark/quant/gptq.py) against round-to-nearest.

The reference is written differently on purpose: per element and per block in Python over
small tensors, E2M1 and E4M3 by enumerating their code points and picking the nearest with
ties to the even code, the MX exponent from math.frexp, NVFP4's scales in numpy float32
scalars, partial blocks by slicing instead of padding."""

import itertools
import math

import numpy as np
import pytest
import torch

from benchmark.quant import formats
from benchmark.quant.formats import FORMATS, quantize_fp4, round_e2m1, round_e4m3
from benchmark.quant.gptq import HessianAccumulator, gptq_quantize_weight
from benchmark.quant.grid import GRIDS, quantize_weight

# ---------------------------------------------------------------- reference implementation

E2M1_CODES = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]  # code c (3 bits, no sign) -> value


def _e4m3_codes() -> list[float]:
    """Value of each non-negative E4M3FN code 0..126 (127, S.1111.111, is NaN): bias 7,
    exponent field 0 is subnormal (m/8 * 2^-6)."""
    values = []
    for code in range(127):
        exponent, mantissa = code >> 3, code & 7
        values.append(mantissa / 8 * 2.0**-6 if exponent == 0 else (1 + mantissa / 8) * 2.0 ** (exponent - 7))
    return values


E4M3_CODES = _e4m3_codes()


def ref_nearest(v: float, codes: list[float]) -> float:
    """Nearest code value to ``v``, ties to the even code, saturating at the largest."""
    if math.isnan(v):
        return math.nan
    a = abs(v)
    if a >= codes[-1]:
        return math.copysign(codes[-1], v)
    best_code, best_distance = None, math.inf
    for code, value in enumerate(codes):
        distance = abs(a - value)
        if distance < best_distance or (distance == best_distance and code % 2 == 0):
            best_code, best_distance = code, distance
    return math.copysign(codes[best_code], v)


def ref_e2m1(v: float) -> float:
    return ref_nearest(v, E2M1_CODES)


def ref_e4m3(v: float) -> float:
    return ref_nearest(v, E4M3_CODES)


def ref_mxfp4_block(block: list[float]) -> list[float]:
    if not all(math.isfinite(v) for v in block):
        return [math.nan] * len(block)
    amax = max(abs(v) for v in block)
    if amax == 0:
        return [0.0] * len(block)
    _, e = math.frexp(amax)  # amax = m * 2^e, m in [0.5, 1): floor(log2(amax)) = e - 1
    k = min(max(e - 1 - 2, -127), 127)
    scale = 2.0**k
    return [ref_e2m1(v / scale) * scale for v in block]


def ref_nvfp4_row(row: list[float], block: int = 16) -> list[float]:
    f32 = np.float32
    if not all(math.isfinite(v) for v in row):
        return [math.nan] * len(row)
    row_max = f32(max(abs(v) for v in row))
    if row_max == 0:
        return [0.0] * len(row)
    g = row_max / f32(2688.0)
    out = []
    for start in range(0, len(row), block):
        values = row[start:start + block]
        s = f32(max(abs(v) for v in values)) / f32(6.0)
        scale = f32(ref_e4m3(float(s / g))) * g
        if scale == 0:
            out += [0.0] * len(values)
        else:
            out += [float(f32(ref_e2m1(float(f32(v) / scale))) * scale) for v in values]
    return out


def reference(x: torch.Tensor, fmt: str) -> torch.Tensor:
    rows = x.to(torch.float32).reshape(-1, x.shape[-1]).tolist()
    out = []
    for row in rows:
        if fmt == "mxfp4":
            out.append([q for start in range(0, len(row), 32) for q in ref_mxfp4_block(row[start:start + 32])])
        else:
            out.append(ref_nvfp4_row(row))
    return torch.tensor(out, dtype=torch.float32).to(x.dtype).reshape(x.shape)


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def below(v: float) -> float:
    """The float32 just below ``v``."""
    return torch.nextafter(torch.tensor(v), torch.tensor(-math.inf)).item()


def above(v: float) -> float:
    return torch.nextafter(torch.tensor(v), torch.tensor(math.inf)).item()


TIES = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]  # E2M1 midpoints
BLOCK = {"mxfp4": 32, "nvfp4": 16}

# ---------------------------------------------------------------- element roundings


def test_round_e2m1_ties_to_even():
    x = torch.tensor(TIES + [-t for t in TIES])
    expected = torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0] * 2) * torch.tensor([1.0] * 7 + [-1.0] * 7)
    assert_same(round_e2m1(x), expected)


def test_round_e2m1_matches_table():
    gen = torch.Generator().manual_seed(0)
    specials = TIES + [below(t) for t in TIES] + [above(t) for t in TIES] + E2M1_CODES
    specials += [6.5, 7.0, 1e30, 1e-40, 0.0, math.inf, -math.inf, math.nan]
    x = torch.cat([torch.tensor(specials), -torch.tensor(specials), torch.randn(2000, generator=gen) * 3])
    expected = torch.tensor([ref_e2m1(v) for v in x.tolist()])
    assert_same(round_e2m1(x), expected)


def test_round_e4m3_matches_code_points():
    gen = torch.Generator().manual_seed(1)
    values = E4M3_CODES
    mids = [(a + b) / 2 for a, b in itertools.pairwise(values)]
    specials = values + mids + [below(m) for m in mids] + [above(m) for m in mids]
    specials += [464.0, above(464.0), 480.0, 1e6, 2.0**-10, above(2.0**-10), 1e-45, math.inf, math.nan]
    random = torch.randn(3000, generator=gen) * torch.logspace(-4, 3, 3000)
    x = torch.cat([torch.tensor(specials), -torch.tensor(specials), random])
    expected = torch.tensor([ref_e4m3(v) for v in x.tolist()])
    assert_same(round_e4m3(x), expected)
    assert round_e4m3(torch.tensor(464.0)).item() == 448.0  # the tie with 480 (NaN code) stays 448
    if hasattr(torch, "float8_e4m3fn"):  # torch's cast (overflowing, so clamped first) agrees
        finite = x[x.isfinite()]
        assert_same(round_e4m3(finite), finite.clamp(-448, 448).to(torch.float8_e4m3fn).to(torch.float32))


def test_round_helpers_return_float32_of_any_input():
    x = torch.tensor([0.3, 2.6, 300.0], dtype=torch.bfloat16)
    assert round_e2m1(x).dtype == torch.float32 and round_e4m3(x).dtype == torch.float32
    assert_same(round_e2m1(x), torch.tensor([ref_e2m1(v) for v in x.float().tolist()]))


# ---------------------------------------------------------------- block formats vs reference


def _random(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Gaussian rows, each block of 16 at its own scale from 1e-3 to 1e3, with outliers."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=gen)
    scales = 10.0 ** (torch.rand(rows, (cols + 15) // 16, generator=gen) * 6 - 3)
    x = x * scales.repeat_interleave(16, dim=1)[:, :cols]
    x[torch.rand(rows, cols, generator=gen) < 0.02] *= 50
    return x


def _ties(fmt: str) -> torch.Tensor:
    """Blocks whose effective scale is a power of two 2^k and whose values are E2M1 ties
    (and code points, and values past 6) times 2^k, so x / scale hits the midpoints exactly.
    nvfp4: the row's first block holds 2688 = 448 * 6, so g = 1 and a block of max 6 * 2^k
    gets the E4M3 scale 2^k exactly."""
    block = 32 if fmt == "mxfp4" else 16
    pattern = [6.0] + TIES + [-t for t in TIES] + [0.0, 0.5, 3.0, -4.0]  # 19 values, max 6
    pattern = (pattern * 2)[:block]
    rows = []
    for k in (-6, -2, 0, 3):
        row = [v * 2.0**k for j in range(4) for v in pattern[:block]]  # 4 blocks
        rows.append(row)
    if fmt == "nvfp4":
        for row in rows:
            row[0] = 2688.0
    else:  # a block of max 7.5 * 2^k keeps the scale 2^k: 7 and 7.5 saturate to 6
        rows[0][32:32 + 5] = [v * 2.0**-6 for v in (7.0, 5.5, 5.0, 4.5, -7.5)]
    return torch.tensor(rows)


def _extremes(fmt: str) -> torch.Tensor:
    """Zero blocks, an all-zero row, float32 subnormals, huge values, saturation, and for
    nvfp4 blocks whose E4M3 scale is subnormal or underflows to 0."""
    x = torch.zeros(6, 64)
    x[1, :16] = torch.linspace(-1e-40, 1e-40, 16)  # float32 subnormals (mxfp4: scale 2^-127)
    x[1, 32:48] = 2.0**-130
    x[2, :16] = torch.linspace(-3e38, 3e38, 16)  # near float32's max (mxfp4: scale 2^125)
    x[3, :8] = torch.tensor([7.0, 6.5, 6.0, 5.9, -100.0, 1.0, 0.1, 1e-3])  # saturation past 6 * scale
    x[4, 0] = 2688.0  # nvfp4: g = 1
    x[4, 16:32] = torch.linspace(-0.03, 0.03, 16)  # block scale 0.005: a subnormal E4M3
    x[4, 32:48] = torch.linspace(-0.006, 0.006, 16)  # scale 0.001, past 2^-10: the smallest E4M3, 2^-9
    x[4, 48:64] = torch.linspace(-0.003, 0.003, 16)  # scale 0.0005 < 2^-10: underflows to 0
    x[5, :] = torch.randn(64, generator=torch.Generator().manual_seed(5)) * 1e-3
    x[5, 7] = 1e4  # one outlier: the other blocks' scales relative to it are tiny
    return x


CASES = {
    "random": lambda fmt: _random(8, 128, seed=2),
    "random-many-scales": lambda fmt: _random(16, 96, seed=3) * 1e-20,
    "ties": _ties,
    "extremes": _extremes,
    "width40-partial-block": lambda fmt: _random(8, 40, seed=4),
    "width7-one-short-block": lambda fmt: _random(5, 7, seed=6),
    "bf16": lambda fmt: _random(8, 80, seed=7).to(torch.bfloat16),
    "3d": lambda fmt: _random(12, 48, seed=8).reshape(2, 6, 48),
    "float64": lambda fmt: _random(4, 64, seed=9).double(),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_matches_reference(fmt, case):
    x = CASES[case](fmt)
    assert_same(quantize_fp4(x, fmt), reference(x, fmt))


def test_nvfp4_fp8_scale_cases_are_exercised():
    """The extremes case does reach a subnormal E4M3 block scale and one that underflows."""
    x = _extremes("nvfp4")[4]
    q = quantize_fp4(x, "nvfp4")
    assert (q[16:32] != 0).any() and q[48:64].eq(0).all()
    ratio = (x[16:32].abs().max() / 6) / (2688.0 / 2688)
    assert 2.0**-9 <= round_e4m3(ratio).item() < 2.0**-6  # subnormal E4M3


@pytest.mark.parametrize("k", [-124, -20, -1, 0, 1, 2, 3, 5, 60, 125, 127])
def test_mxfp4_scale_exponent_from_exponent_field(k):
    """amax = 2^k exactly: scale 2^(k-2), amax itself is 4 * scale, exact. amax one ulp below
    2^k: floor(log2) = k - 1, scale 2^(k-3), amax / scale just below 8 saturates to 6, i.e.
    3 * 2^(k-2). A float32 log2 rounds log2(2^k - ulp) up to k (for k >= 3) and would give
    2^k back."""
    power = 2.0**k
    x = torch.tensor([[power, power / 4], [below(power), power / 4]])
    q = quantize_fp4(x, "mxfp4")
    assert q[0, 0].item() == power and q[0, 1].item() == power / 4
    assert q[1, 0].item() == 3 * 2.0 ** (k - 2)
    assert q[1, 1].item() == power / 4  # 2 * 2^(k-3), on the grid either way


def test_mxfp4_scale_exponent_clamped_to_e8m0():
    tiny = torch.tensor([[2.0**-140, 2.0**-149, -(2.0**-135)]])  # floor(log2) - 2 < -127: scale 2^-127
    assert_same(quantize_fp4(tiny, "mxfp4"), torch.zeros(1, 3))
    # one ulp below 2^-126 (a float32 subnormal): scale 2^-127, not 2^-129, so it rounds to 2 * 2^-127
    assert quantize_fp4(torch.tensor([[below(2.0**-126)]]), "mxfp4").item() == 2.0**-126
    assert quantize_fp4(torch.tensor([[2.0**-125]]), "mxfp4").item() == 2.0**-125  # 2^-127 * 4, kept


@pytest.mark.parametrize("fmt", FORMATS)
def test_zero_blocks_and_rows_stay_zero(fmt):
    x = torch.zeros(3, 70)
    x[1, 40:] = torch.randn(30)
    q = quantize_fp4(x, fmt)
    assert q[0].eq(0).all() and q[1, :32].eq(0).all() and q[2].eq(0).all()
    assert torch.isfinite(q).all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_rows_are_independent(fmt):
    """A token's (or output row's) result does not depend on the other rows: nvfp4's second
    scale is per row, so a caption's numbers do not depend on its batch."""
    x = _random(6, 96, seed=10)
    x[0] *= 1e4
    q = quantize_fp4(x, fmt)
    for i in range(x.shape[0]):
        assert_same(quantize_fp4(x[i:i + 1], fmt), q[i:i + 1])


@pytest.mark.parametrize("fmt", FORMATS)
def test_row_chunks_do_not_change_results(fmt, monkeypatch):
    """quantize_fp4 works through rows in cache-sized chunks: any chunking gives the same bits,
    the last chunk partial included (against the reference with chunks of 1, 3 and 7 rows)."""
    x = _random(23, 48, seed=14)
    expected = reference(x, fmt)
    for rows in (1, 3, 7):
        monkeypatch.setattr(formats, "_CHUNK_ELEMENTS", rows * 48)
        assert_same(quantize_fp4(x, fmt), expected)


@pytest.mark.parametrize("fmt", FORMATS)
def test_nonfinite_inputs_give_nan_without_raising(fmt):
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(11))
    x[1, 3], x[2, 40] = math.nan, math.inf
    q = quantize_fp4(x, fmt)
    assert q[1, 3].isnan() and q[2, 40].isnan()
    assert torch.isfinite(q[0]).all() and torch.isfinite(q[3]).all()
    if fmt == "mxfp4":  # only the blocks holding them
        assert torch.isfinite(q[1, 32:]).all() and torch.isfinite(q[2, :32]).all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_error_bound_and_idempotence(fmt):
    """The error is at most a quarter of the block's max |x|. mxfp4 (amax in [4X, 8X)): half
    the top step, X, or the saturation amax - 6X < 2X. nvfp4 (normal E4M3 scales, within 1/16
    of amax / 6): half the top step, one scale. mxfp4's output is its own quantization."""
    x = torch.randn(32, 256, generator=torch.Generator().manual_seed(12))
    q = quantize_fp4(x, fmt)
    blocks = x.view(32, -1, BLOCK[fmt])
    amax = blocks.abs().amax(-1, keepdim=True)
    err = (q.view_as(blocks) - blocks).abs()
    assert (err <= amax / 4).all()
    assert (err > 0).any()
    if fmt == "mxfp4":
        assert_same(quantize_fp4(q, fmt), q)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown format"):
        quantize_fp4(torch.ones(2, 4), "fp4")
    with pytest.raises(ValueError, match="floating-point"):
        quantize_fp4(torch.ones(2, 4, dtype=torch.int32), "mxfp4")
    assert quantize_fp4(torch.ones(0, 4), "nvfp4").shape == (0, 4)


# ---------------------------------------------------------------- GPTQ


def _correlated(seed: int, tokens: int = 4096, channels: int = 256, outputs: int = 64):
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(channels, channels, generator=gen) / channels**0.5
    x = torch.randn(tokens, channels, generator=gen) @ mixing  # correlated channels
    w = torch.randn(outputs, channels, generator=gen)
    return x, w


def _hessian(x: torch.Tensor) -> torch.Tensor:
    acc = HessianAccumulator()
    for part in x.split(1000):
        acc.add(part)
    return acc.hessian()


def _grid_values(w: torch.Tensor, bits: int, block: int, symmetric: bool, grid: str) -> list[list[torch.Tensor]]:
    """Every point of each (row, block) grid of quantize_weight, enumerated from the block's
    own min and max (a constant block: its constant)."""
    levels = 2**bits - 1
    out = []
    for row in w:
        row_grids = []
        for start in range(0, w.shape[1], block):
            values = row[start:start + block]
            lo, hi = values.min(), values.max()
            if symmetric:
                qmax = 2 ** (bits - 1) - 1
                amax = values.abs().max()
                step = amax / qmax
                points = torch.arange(-qmax, qmax + 1, dtype=torch.float32) * step if amax > 0 else amax[None]
            elif hi == lo:
                points = hi[None]
            elif grid == "min_anchored":
                step = (hi - lo) / levels
                points = torch.arange(levels + 1, dtype=torch.float32).mul(step).add(lo)
            else:
                lo0, hi0 = lo.clamp(max=0), hi.clamp(min=0)
                step = (hi0 - lo0) / levels
                zero = torch.round(-lo0 / step)
                points = (torch.arange(levels + 1, dtype=torch.float32) - zero) * step
            row_grids.append(points)
        out.append(row_grids)
    return out


def _on_grid(q: torch.Tensor, grids, block: int) -> bool:
    return all(torch.isin(q[r, b * block:(b + 1) * block], points).all()
               for r, row in enumerate(grids) for b, points in enumerate(row))


@pytest.mark.parametrize("seed", [0, 1])
def test_gptq_beats_round_to_nearest_on_correlated_inputs(seed):
    x, w = _correlated(seed)
    q_gptq = gptq_quantize_weight(w, _hessian(x), bits=3)
    q_rtn = quantize_weight(w, 3)
    reference_out = x @ w.T
    err_gptq = (reference_out - x @ q_gptq.T).norm()
    err_rtn = (reference_out - x @ q_rtn.T).norm()
    assert err_gptq < 0.9 * err_rtn, (err_gptq, err_rtn)
    grids = _grid_values(w, 3, 128, False, "zero_point")
    assert _on_grid(q_rtn, grids, 128)  # the enumeration is the RTN grid
    assert _on_grid(q_gptq, grids, 128)
    assert (q_gptq != q_rtn).float().mean() > 0.1  # GPTQ did move weights between grid points


@pytest.mark.parametrize("symmetric, grid", [(False, "zero_point"), (False, "min_anchored"), (True, "zero_point")])
def test_gptq_stays_on_the_rtn_grid(symmetric, grid):
    x, w = _correlated(3, tokens=600, channels=200, outputs=12)  # 200: a short last block of 72
    w[0, :128] = 0.7  # a constant block: one point
    w[1, 128:] = 0.0
    q = gptq_quantize_weight(w, _hessian(x), bits=4, symmetric=symmetric, grid=grid)
    assert q.shape == w.shape and q.dtype == w.dtype
    assert _on_grid(q, _grid_values(w, 4, 128, symmetric, grid), 128)
    assert q[1, 128:].eq(0).all()  # an all-zero block: one point, 0
    if not symmetric:  # a constant block: one point, the constant
        assert q[0, :128].eq(0.7).all()


@pytest.mark.parametrize("symmetric, grid", [(False, g) for g in GRIDS] + [(True, "zero_point")])
def test_gptq_with_diagonal_hessian_is_round_to_nearest(symmetric, grid):
    """No correlation, no error to propagate: exactly quantize_weight, partial block included."""
    w = torch.randn(10, 300, generator=torch.Generator().manual_seed(13))
    diagonal = torch.diag(torch.rand(300, generator=torch.Generator().manual_seed(14)) + 0.5)
    q = gptq_quantize_weight(w, diagonal, bits=4, block_size=64, symmetric=symmetric, grid=grid)
    assert_same(q, quantize_weight(w, 4, block_size=64, symmetric=symmetric, grid=grid))


def test_gptq_dead_channels():
    x, w = _correlated(4, tokens=1000, channels=128, outputs=8)
    x[:, 5] = 0  # an input channel no token uses
    q = gptq_quantize_weight(w, _hessian(x), bits=4)
    assert torch.isfinite(q).all() and q[:, 5].eq(0).all()


def test_hessian_accumulator():
    x, _ = _correlated(5, tokens=700, channels=64)
    acc = HessianAccumulator(64)
    acc.add(x[:300].reshape(3, 100, 64))  # (..., C): every leading index is a token
    acc.add(x[300:])
    assert acc.tokens == 700
    expected = 2 * x.double().T @ x.double() / 700
    torch.testing.assert_close(acc.hessian(), expected, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="channels"):
        acc.add(torch.ones(4, 65))


def test_hessian_accumulator_refuses_too_few_tokens():
    acc = HessianAccumulator()
    acc.add(torch.randn(100, 256))
    with pytest.raises(ValueError, match=r"256 input channels needs at least 256 tokens, only 100 seen"):
        acc.hessian()
    with pytest.raises(ValueError, match="only 0 seen"):
        HessianAccumulator(8).hessian()
    acc.add(torch.randn(156, 256))
    assert acc.hessian().shape == (256, 256)
