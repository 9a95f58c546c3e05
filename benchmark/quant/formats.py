"""Fake quantizers (quantize, then dequantize) for 4-bit floating-point block formats.

Both formats put a shared scale on each block of consecutive values along the LAST
dimension, the matmul's reduction dimension: an activation ``(..., in)`` is blocked along
each token's channels, a weight ``(out, in)`` along each output row's input channels, so one
function serves both. Elements are E2M1 (FP4): ``{0, 0.5, 1, 1.5, 2, 3, 4, 6}`` and their
negatives, rounded to nearest with ties to even, saturated at 6.

- ``"mxfp4"`` (OCP Microscaling Formats v1.0): blocks of 32 share a power-of-two E8M0 scale
  ``X = 2^(floor(log2(amax)) - 2)``, 2 being E2M1's largest exponent (emax), so the block's
  largest value lands in [4, 8) before rounding (values above 6 saturate, as the spec's
  conversion does). The exponent is read from the float32 exponent field, not from a
  floating-point log2, which rounds up just below a power of two (in float32, log2(8 - ulp)
  is 3.0) and would double the scale. The scale exponent is clamped to E8M0's [-127, 127].
- ``"nvfp4"`` (NVIDIA's FP4): blocks of 16, each with an FP8 E4M3 scale, times a second-level
  FP32 scale ``g = amax / (448 * 6)`` that puts the largest block scale at E4M3's top. ``g``
  is taken per ROW (a token's channels, a weight's output row), not per tensor as in
  NVIDIA's recipe: a per-tensor activation scale would make one caption's numbers depend on
  the other captions of its batch, which this benchmark forbids.

Everything is computed in float32 (a float64 input is rounded to float32 first) and comes
back in the input's dtype and shape. A width that is not a multiple of the block size ends
with a shorter block (zero padding, which cannot raise a block's absolute maximum).

Non-finite inputs come out NaN together with what shares their scale: the block for mxfp4
(the spec's NaN scale, E8M0 code 0xFF, makes its whole block NaN), the row for nvfp4 (its
second-level scale is not finite). Nothing raises.

The rounding uses the "magic number" trick: adding ``c = 1.5 * 2^23 * step`` to a float32
much smaller than ``c`` leaves ``step`` as the sum's last place, so the hardware's own
round-to-nearest-even rounds to a multiple of ``step`` with ties to even, and subtracting
``c`` is exact. ``step`` is a power of two read from the exponent field, so the whole
rounding is six in-place elementwise passes, with no log2, no table and no branch.
"""

from __future__ import annotations

import torch

from benchmark.errors import UserError

__all__ = ["BLOCK_SIZES", "E2M1_MAX", "E4M3_MAX", "FORMATS", "quantize_fp4", "round_e2m1", "round_e4m3"]

FORMATS = ("mxfp4", "nvfp4")
BLOCK_SIZES = {"mxfp4": 32, "nvfp4": 16}
E2M1_MAX = 6.0
E4M3_MAX = 448.0
_E2M1_EMAX = 2  # E2M1's largest exponent: 6 = 1.5 * 2^2
_E8M0_MIN, _E8M0_MAX = -127, 127  # E8M0's scale exponents (code 0xFF is NaN)
_BIAS = 127  # float32's exponent bias
_MANTISSA = 23  # float32's mantissa bits
_EXPONENT_BITS = 0x7F800000  # float32's exponent field, in place
_CHUNK_ELEMENTS = 2**18  # elements per chunk of rows in quantize_fp4: about 1 MB of float32


def _exponent_field(a: torch.Tensor) -> torch.Tensor:
    """The biased exponent field of a non-negative float32 (0 for zero and subnormals, 255
    for Inf and NaN): ``floor(log2(a)) + 127`` exactly, for every normal ``a``."""
    return a.view(torch.int32) >> _MANTISSA


def _pow2(exponent: torch.Tensor) -> torch.Tensor:
    """``2.0 ** exponent`` in float32, exactly, for integer exponents in [-149, 127], built
    from the bits (exp2 need not be exact): normal ones from the exponent field, the
    subnormal ones (below -126, which E8M0's -127 reaches) from the mantissa."""
    exponent = exponent.to(torch.int32)
    normal = (exponent.clamp(min=1 - _BIAS) + _BIAS) << _MANTISSA
    subnormal = torch.ones_like(exponent) << (exponent.clamp(-149, -_BIAS) + 149)
    return torch.where(exponent > -_BIAS, normal, subnormal).view(torch.float32)


def _round_minifloat_(y: torch.Tensor, mantissa_bits: int, min_exponent: int, max_exponent: int,
                      top: float, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Round the float32 ``y`` IN PLACE to the nearest value, ties to even, of a minifloat
    with ``mantissa_bits`` mantissa bits, normal exponents from ``min_exponent`` to
    ``max_exponent`` and subnormals below (the lowest binade's step continues down to 0),
    then saturate at +-``top`` (no Inf: past the top, Inf included, is ``top``). NaN stays;
    a zero result is +0 (signed zeros are the same value and need no care here).

    In float32 binade ``e`` the format's step is ``2^(clamp(e) - mantissa_bits)``, a value
    ``k * step`` has ``k``'s parity as its mantissa parity (across binade edges and in the
    subnormals too), so float32's own ties-to-even in ``y + c`` with ``c = 1.5 * 2^23 * step``
    is the format's: ``c +- |y|`` stays in ``c``'s binade, whose last place is ``step``, for
    either sign (hence 1.5), and ``- c`` is exact. ``c`` comes from ``y``'s exponent bits (the
    sign masked off): an AND, a clamp and an add on the integers. ``scratch``: an int32
    buffer of ``y``'s shape for ``c`` (else one is allocated).
    """
    field = torch.bitwise_and(y.view(torch.int32), _EXPONENT_BITS, out=scratch)
    field = field.clamp_((min_exponent + _BIAS) << _MANTISSA, (max_exponent + _BIAS) << _MANTISSA)
    # * 2^(23 - m) on the exponent, and a mantissa of .1 (binary): * 1.5
    magic = field.add_(((_MANTISSA - mantissa_bits) << _MANTISSA) + (1 << (_MANTISSA - 1))).view(torch.float32)
    return y.add_(magic).sub_(magic).clamp_(-top, top)


def _round_e2m1_(y: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """E2M1 rounding of the float32 ``y`` in place."""
    return _round_minifloat_(y, 1, 0, _E2M1_EMAX, E2M1_MAX, scratch)


def round_e2m1(x: torch.Tensor) -> torch.Tensor:
    """Round to FP4 E2M1 (``0, 0.5, 1, 1.5, 2, 3, 4, 6`` and negatives): nearest, ties to the
    even mantissa (0.25 -> 0, 0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4),
    saturating at +-6 (Inf included; E2M1 has no Inf), NaN kept. Returns float32: the
    rounding of ``x`` as a float32, whatever its dtype."""
    return _round_e2m1_(x.detach().to(torch.float32, copy=True))


def round_e4m3(x: torch.Tensor) -> torch.Tensor:
    """Round to FP8 E4M3 (OCP's E4M3FN: bias 7, max 448, subnormals down to 2^-9, no Inf):
    nearest, ties to even, saturating at +-448 (Inf included), NaN kept, as a float32.

    Saturating, not overflowing to NaN as a plain float8 cast does: a scale just past 448
    (rounding in ``s_b / g``) must stay the largest scale."""
    return _round_minifloat_(x.detach().to(torch.float32, copy=True), 3, -6, 8, E4M3_MAX)


def _blocks(x: torch.Tensor, block: int) -> tuple[torch.Tensor, int]:
    """``x`` as float32 ``(rows, blocks, block)``, zero padded; and the original width."""
    cols = x.shape[-1]
    xf = x.reshape(-1, cols).to(torch.float32)
    pad = (-cols) % block
    if pad:
        xf = torch.nn.functional.pad(xf, (0, pad))
    return xf.view(xf.shape[0], -1, block), cols


def _abs_max(blocks: torch.Tensor) -> torch.Tensor:
    """Each block's max |x| (NaN if it holds one), ``(rows, blocks, 1)``.

    A max pool over the row: the same values as ``amax(dim=-1)``, about five times faster on
    the CPU for blocks of 16 (torch's reduction over a short innermost dimension is slow)."""
    rows, count, size = blocks.shape
    return torch.nn.functional.max_pool1d(blocks.reshape(rows, 1, count * size).abs(), size).view(rows, count, 1)


def _apply(blocks: torch.Tensor, scale: torch.Tensor, inverse: torch.Tensor | None = None,
           divisor: torch.Tensor | None = None) -> torch.Tensor:
    """``e2m1(blocks * inverse) * scale`` (or ``blocks / divisor``), scales ``(rows, blocks, 1)``.

    In chunks of rows of about 1 MB, into one output: the elementwise passes then run
    in cache instead of streaming the tensor from memory eight times, and the int32 scratch
    for the steps is allocated once, small (fresh full-size buffers cost page faults). On a GPU,
    one chunk: there the chunks would only multiply the kernel launches."""
    out = torch.empty_like(blocks)
    rows = max(1, _CHUNK_ELEMENTS // (blocks.shape[1] * blocks.shape[2]))
    if blocks.device.type != "cpu":  # no CPU cache to fit: one chunk, fewer kernel launches
        rows = blocks.shape[0]
    scratch = torch.empty((min(rows, blocks.shape[0]), *blocks.shape[1:]), dtype=torch.int32, device=blocks.device)
    for start in range(0, blocks.shape[0], rows):
        part, stop = blocks[start:start + rows], start + rows
        o = out[start:stop]
        if inverse is not None:
            torch.mul(part, inverse[start:stop], out=o)
        else:
            torch.div(part, divisor[start:stop], out=o)
        _round_e2m1_(o, scratch[:o.shape[0]]).mul_(scale[start:stop])
    return out


def _mxfp4(blocks: torch.Tensor) -> torch.Tensor:
    field = _exponent_field(_abs_max(blocks))
    # floor(log2(amax)) - emax; a zero or subnormal amax (field 0) is below -127 either way
    exponent = (field - (_BIAS + _E2M1_EMAX)).clamp_(_E8M0_MIN, _E8M0_MAX)
    scale, inverse = _pow2(exponent), _pow2(-exponent)
    nan = field == 255  # Inf or NaN in the block: E8M0's NaN scale
    if nan.any():
        scale, inverse = scale.masked_fill(nan, float("nan")), inverse.masked_fill(nan, float("nan"))
    # x * 2^-k is x / 2^k exactly (a power of two; a result below 2^-126 rounds to 0 anyway)
    return _apply(blocks, scale, inverse=inverse)


def _nvfp4(blocks: torch.Tensor) -> torch.Tensor:
    block_max = _abs_max(blocks)
    row_max = block_max.amax(dim=1, keepdim=True)
    g = row_max / (E4M3_MAX * E2M1_MAX)  # the row's largest block scale lands on 448
    finite = torch.isfinite(row_max)
    ratio = (block_max / E2M1_MAX) / torch.where(g > 0, g, torch.ones_like(g))  # 0 for a zero row
    scale = round_e4m3(ratio).mul_(g).masked_fill_(~finite, float("nan"))
    # A block whose E4M3 scale underflows to 0 (or a zero block) comes out 0: divide by 1,
    # then multiply by its 0 scale (the E2M1 values are finite).
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale))
    return _apply(blocks, scale, divisor=divisor)


_QUANTIZERS = {"mxfp4": _mxfp4, "nvfp4": _nvfp4}


def quantize_fp4(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """Fake-quantize ``x`` to the block format ``fmt`` (one of ``FORMATS``) along its last
    dimension: same shape and dtype as ``x``, computed in float32. Not differentiable: the
    result is detached (the roundings work in place on bit views)."""
    if fmt not in _QUANTIZERS:
        raise UserError(f"unknown format {fmt!r}: use {' or '.join(FORMATS)}")
    if x.dim() == 0 or not x.is_floating_point():
        raise UserError(f"quantize_fp4 needs a floating-point tensor with at least one dimension, got "
                        f"{x.dtype} of shape {tuple(x.shape)}")
    if x.numel() == 0:
        return x.clone()
    blocks, cols = _blocks(x.detach(), BLOCK_SIZES[fmt])
    out = _QUANTIZERS[fmt](blocks).view(blocks.shape[0], -1)
    if out.shape[1] != cols:
        out = out[:, :cols]
    return out.to(x.dtype).reshape(x.shape)
