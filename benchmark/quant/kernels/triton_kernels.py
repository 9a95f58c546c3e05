"""The fused kernel: centre, scale, Hadamard-rotate and fake-quantize one token per step.

Imported only when triton is installed (``benchmark.quant.kernels`` imports it lazily), and only
after ``TRITON_INTERPRET`` has been set by whoever wants the interpreter: triton reads it
when ``@triton.jit`` runs.

Numerics: everything in float32 from the input's values, one rounding to the output dtype
at the end. The rotation's matmuls use +-1 matrices, so their only error is the dot's own
precision: "split3" (default; three tf32 dots of an exact 3-way split of the data:
fp32-exact products), "tf32x3" or "ieee" (no tensor cores); plain "tf32" would lose bits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from benchmark.quant.kernels.plan import TileLayout


@triton.jit
def _round_half_even(v):
    # torch.round is round-half-to-even; floor and compares are exact in fp32.
    f = tl.floor(v)
    d = v - f
    odd = (f - 2.0 * tl.floor(f * 0.5)) == 1.0
    return f + tl.where((d > 0.5) | ((d == 0.5) & odd), 1.0, 0.0)


# Reductions go through tl.reduce with triton's own combine functions rather than tl.min /
# tl.max / tl.sum: those wrappers are @jit functions decorated when triton was imported, and
# ``import benchmark`` imports triton (via torchvision), so when TRITON_INTERPRET is set only
# afterwards (tests/test_kernels.py) the interpreter cannot call them. The interpreter knows
# these combine functions by identity and reduces with numpy (a custom one would run
# element by element in Python).
_MIN, _MAX, _SUM = tl.standard._elementwise_min, tl.standard._elementwise_max, tl.standard._sum_combine


@triton.jit
def _to_bf16_rne(v):
    # fp32 -> bf16 rounding to nearest even, by hand: what the GPU's cvt.rn does, while
    # triton 3.9's interpreter truncates on this cast.
    bits = v.to(tl.uint32, bitcast=True)
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _tf32_parts(a):
    # a = hi + mid + lo exactly, each part exact in tf32 (11 significant bits; lo has <= 2):
    # a single-pass tf32 dot of each part with a +-1 matrix then multiplies exactly.
    hi = (a.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)
    rest = a - hi
    mid = (rest.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)
    return hi, mid, rest - mid


@triton.jit
def _pm1_dot(a, b, SPLIT_A: tl.constexpr, PRECISION: tl.constexpr):
    """a @ b where the other operand is a +-1/0 matrix. "split3": three tf32 dots of the
    exact tf32 parts of the data operand: fp32-exact products, one copy of the matrix in
    shared memory (tf32x3 keeps three)."""
    if PRECISION == "split3":
        if SPLIT_A:
            hi, mid, lo = _tf32_parts(a)
            acc = tl.dot(lo, b, input_precision="tf32")
            acc = tl.dot(mid, b, acc, input_precision="tf32")
            acc = tl.dot(hi, b, acc, input_precision="tf32")
        else:
            hi, mid, lo = _tf32_parts(b)
            acc = tl.dot(a, lo, input_precision="tf32")
            acc = tl.dot(a, mid, acc, input_precision="tf32")
            acc = tl.dot(a, hi, acc, input_precision="tf32")
        return acc
    else:
        return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def transform_quantize_kernel(
    x_ptr, out_ptr, mu_ptr, scale_ptr, signs_ptr, left_ptr, right_ptr,
    n_rows, rows_per_sample, channels, norm, levels,
    R: tl.constexpr, M: tl.constexpr, RP: tl.constexpr, MP: tl.constexpr,
    ROWS_PER_PROG: tl.constexpr, HAS_MU: tl.constexpr, HAS_SCALE: tl.constexpr,
    HAS_SIGNS: tl.constexpr,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, QUANT: tl.constexpr,
    OUT_BF16: tl.constexpr, PRECISION: tl.constexpr, ZERO_POINT: tl.constexpr,
):
    pid = tl.program_id(0)
    r = tl.arange(0, RP)[:, None]
    j = tl.arange(0, MP)[None, :]
    ch = r * M + j
    valid = (r < R) & (j < M) & (ch < channels)
    # The rotation matrices: loaded once, reused for every row (the dots stage them in
    # shared memory). The per-channel vectors are re-read per row from cache instead: held
    # across the loop they cost two tiles of registers, and 4608 channels already spill.
    if HAS_LEFT:
        left = tl.load(left_ptr + tl.arange(0, RP)[:, None] * RP + tl.arange(0, RP)[None, :])
    if HAS_RIGHT:
        right = tl.load(right_ptr + tl.arange(0, MP)[:, None] * MP + tl.arange(0, MP)[None, :])
    for i in range(ROWS_PER_PROG):
        row = (pid * ROWS_PER_PROG + i).to(tl.int64)
        ok = valid & ((r * 0 + row) < n_rows)  # tensor compare: the interpreter rejects a scalar mask term
        h = tl.load(x_ptr + row * channels + ch, mask=ok, other=0.0).to(tl.float32)
        if HAS_MU:  # padding stays exactly 0: the dots must not mix garbage in
            sample = row // rows_per_sample
            h = h - tl.load(mu_ptr + sample * channels + ch, mask=ok, other=0.0).to(tl.float32)
        if HAS_SCALE:
            h = h * tl.load(scale_ptr + ch, mask=ok, other=0.0).to(tl.float32)
        if HAS_SIGNS:
            h = h * tl.load(signs_ptr + ch, mask=ok, other=0.0)
        if HAS_LEFT:
            h = _pm1_dot(left, h, False, PRECISION)
        if HAS_RIGHT:
            h = _pm1_dot(h, right, True, PRECISION)
        if HAS_LEFT or HAS_RIGHT:
            h = h * norm
        if QUANT:
            lo = tl.reduce(tl.reduce(tl.where(ok, h, float("inf")), 1, _MIN), 0, _MIN)
            hi = tl.reduce(tl.reduce(tl.where(ok, h, float("-inf")), 1, _MAX), 0, _MAX)
            # min/max may skip NaN: poison the whole row so a NaN input never looks valid.
            n_nan = tl.reduce(tl.reduce(tl.where(ok & (h != h), 1, 0), 1, _SUM), 0, _SUM)
            lo = tl.where(lo <= hi, lo, 0.0)  # a row past the end: no inf - inf below
            lo = tl.where(n_nan > 0, float("nan"), lo)
            if ZERO_POINT:  # quant.py's zero_point grid: the range holds 0, integer zero point
                low = tl.minimum(lo, 0.0)
                step = tl.math.div_rn(tl.maximum(hi, 0.0) - low, levels)
                step = tl.where(step > 0.0, step, 1.0)  # all-zero row: q = zero = 0
                zero = _round_half_even(tl.math.div_rn(-low, step))
                q = _round_half_even(tl.math.div_rn(h, step)) + zero
                q = tl.minimum(tl.maximum(q, 0.0), levels)
                h = tl.where(hi == lo, hi, (q - zero) * step)  # a constant row is exact
                h = tl.where(n_nan > 0, float("nan"), h)  # min/max need not propagate NaN
            else:  # the min-anchored grid
                step = tl.math.div_rn(hi - lo, levels)
                step = tl.where(step > 0.0, step, 1.0)  # constant row: exact at lo
                q = _round_half_even(tl.math.div_rn(h - lo, step))
                q = tl.minimum(tl.maximum(q, 0.0), levels)
                h = q * step + lo
        if OUT_BF16:
            tl.store(out_ptr + row * channels + ch, _to_bf16_rne(h), mask=ok)
        else:
            tl.store(out_ptr + row * channels + ch, h.to(out_ptr.dtype.element_ty), mask=ok)


def launch(x2: torch.Tensor, out2: torch.Tensor, mu2: torch.Tensor | None,
           scale: torch.Tensor | None, layout: TileLayout, rows_per_sample: int,
           bits: int | None, precision: str, rows_per_prog: int | None = None,
           quant_grid: str = "zero_point") -> None:
    """x2, out2: (rows, C) contiguous; mu2: (samples, C) and scale: (C,) contiguous, any
    float dtype (converted to float32 in the kernel)."""
    n_rows, channels = x2.shape
    left, right, signs = layout.on(x2.device)
    if rows_per_prog is None:  # enough programs to fill the GPU, rows enough to reuse L and H
        rows_per_prog = 1 if n_rows < 1024 else 8
    grid = (triton.cdiv(n_rows, rows_per_prog),)
    dummy = x2  # never read: its flag is off
    transform_quantize_kernel[grid](
        x2, out2, mu2 if mu2 is not None else dummy, scale if scale is not None else dummy,
        signs if signs is not None else dummy, left if left is not None else dummy,
        right if right is not None else dummy,
        n_rows, rows_per_sample, channels, layout.norm,
        float(2**bits - 1) if bits is not None else 1.0,
        R=layout.rows, M=layout.cols, RP=layout.rows_p, MP=layout.cols_p,
        ROWS_PER_PROG=rows_per_prog, HAS_MU=mu2 is not None, HAS_SCALE=scale is not None,
        HAS_SIGNS=signs is not None, HAS_LEFT=left is not None, HAS_RIGHT=right is not None,
        QUANT=bits is not None, OUT_BF16=out2.dtype == torch.bfloat16,
        PRECISION=precision, ZERO_POINT=quant_grid == "zero_point", **launch_options(layout),
    )


def launch_options(layout: TileLayout) -> dict:
    """Compile options, shared with compile_check. num_stages=1: pipelining the row loop
    multi-buffers the loads in shared memory, past H100's 227 KB at 4608 channels (sm_90
    build: 176 KB with 1 stage, 208 KB with 2, 240 KB with 3)."""
    tile = layout.rows_p * layout.cols_p
    small = tile <= 2048 and layout.cols_p <= 64  # H_128's dot wants 8 warps (sm_90: spills at 4)
    return dict(num_warps=4 if small else 8, num_stages=1,
                enable_fp_fusion=False)  # q * step + lo rounded twice, as torch does
