"""Fake quantizers (quantize, then dequantize) and precisions.

Activations: one asymmetric grid per token, from that token's own min and max, computed
at run time. Weights: one grid per block of ``block_size`` consecutive input channels of
each output row, asymmetric by default, symmetric as an option.

Two asymmetric grids (``GRIDS``), with levels = 2^b - 1:

- ``"zero_point"`` (default; QuaRot's and ViDiT-Q's, after GPTQ and BRECQ): the range is the
  row's [min, max] widened to contain 0, ``step = (max - min) / levels``, an integer zero
  point ``zero = round(-min / step)`` in [0, levels], ``q = clamp(round(x / step) + zero, 0,
  levels)`` and ``x^ = (q - zero) * step``. 0 is on the grid (exactly reproduced). Error
  bound: ``|x - x^| <= step / 2`` (plus one fp32 rounding): round(min/step) + zero = 0, so
  nothing clips below; at the top round(max/step) + zero exceeds ``levels`` by at most one,
  and the clamped value then errs by |zero + min/step| <= 1/2 step. A row that does not
  straddle 0 pays for it with a larger step than the min-anchored grid's.
- ``"min_anchored"`` (this project's earlier grid): ``min + k * step`` for k = 0 .. levels
  with ``step = (max - min) / levels``, both ends on the grid (a float zero point), error at
  most half a step everywhere.

Degenerate rows: a constant row (max == min, step 0 on the min-anchored grid) is
reproduced exactly on either grid.

A ``Precision`` may also put either side in a 4-bit floating-point block format instead
(``formats.FORMATS``: ``"mxfp4"``, ``"nvfp4"``; ``formats.quantize_fp4``): activations per
token, dynamically, weights offline, both blocked along the input channels. Its
``quantize_weight`` and ``quantize_activation`` methods pick the right quantizer per side.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from benchmark.errors import UserError

from .formats import FORMATS, quantize_fp4

__all__ = ["GRIDS", "NUMBER_FORMATS", "Precision", "WEIGHT_ROUNDINGS", "fake_quantize", "grid_step",
           "quantize_activation", "quantize_weight", "straight_through"]

MIN_BITS, MAX_BITS = 2, 8
GRIDS = ("zero_point", "min_anchored")
DEFAULT_GRID = "zero_point"
# The number format of a quantized side: the integer grids of this module, or an FP4 block format.
NUMBER_FORMATS = ("int", *FORMATS)
# How weights are rounded onto their grid: to nearest, or by GPTQ (``gptq.py``; INT grids only).
WEIGHT_ROUNDINGS = ("rtn", "gptq")
# "w4a4"; "a4": activations only (weights in full precision); "w4": weights only; a side may
# name an FP4 format instead of bits ("wmxfp4a8"), and "mxfp4" alone is both sides.
_SIDE = r"(\d+|" + "|".join(FORMATS) + ")"
_PRECISION = re.compile(rf"(?:w{_SIDE})?(?:a{_SIDE})?")


@dataclass(frozen=True)
class Precision:
    """Bit widths of weights and activations (``None``: full precision), and the weight
    grid: blocks of ``weight_block`` input channels, asymmetric unless ``weight_symmetric``.
    ``grid``: the asymmetric grid of both, one of ``GRIDS``.

    ``weight_format`` / ``activation_format``: ``"int"`` (the grids above) or an FP4 block
    format (``"mxfp4"``, ``"nvfp4"``: 4 bits, blocks and scales fixed by the format, so
    ``weight_block``, ``weight_symmetric`` and ``grid`` do not apply to that side).
    ``weight_rounding``: ``"rtn"`` (round to nearest) or ``"gptq"`` (INT weights only; the
    transform then needs the Hessian of its input, ``CalibrationStats.hessian``)."""

    weight_bits: int | None
    activation_bits: int | None
    weight_block: int = 128
    weight_symmetric: bool = False
    grid: str = DEFAULT_GRID
    weight_format: str = "int"
    activation_format: str = "int"
    weight_rounding: str = "rtn"

    def __post_init__(self):
        if self.grid not in GRIDS:
            raise UserError(f"unknown grid {self.grid!r}: use {' or '.join(GRIDS)}")
        for side in ("weight", "activation"):
            fmt, bits = getattr(self, f"{side}_format"), getattr(self, f"{side}_bits")
            if fmt not in NUMBER_FORMATS:
                raise UserError(f"unknown {side}_format {fmt!r}: use {', '.join(map(repr, NUMBER_FORMATS))}")
            if fmt != "int" and bits != 4:
                raise UserError(f"{side}_format {fmt!r} is a 4-bit format: {side}_bits must be 4, got {bits!r}")
        if self.weight_rounding not in WEIGHT_ROUNDINGS:
            raise UserError(f"unknown weight_rounding {self.weight_rounding!r}: use "
                            f"{' or '.join(map(repr, WEIGHT_ROUNDINGS))}")
        if self.weight_rounding == "gptq":
            if self.weight_bits is None:
                raise UserError("weight_rounding='gptq' rounds quantized weights, and this precision keeps the "
                                "weights in full precision")
            if self.weight_format != "int":
                raise UserError(f"weight_rounding='gptq' rounds onto the INT weight grids only, not onto "
                                f"{self.weight_format} (use weight_rounding='rtn')")

    @classmethod
    def parse(cls, name: str | Precision) -> Precision:
        """``"fp"``, ``"w<b>a<b>"``, ``"a<b>"`` (activations only) or ``"w<b>"`` (weights only),
        with 2 to 8 bits each, e.g. ``"w4a4"``, ``"a4"``, ``"w4"``; ``"mxfp4"`` or ``"nvfp4"``
        (both sides in that FP4 block format), and a side may name a format instead of bits:
        ``"wmxfp4"`` (weights only), ``"wmxfp4a8"`` (FP4 weights, INT8 activations)."""
        if isinstance(name, Precision):
            return name
        text = str(name).strip().lower()
        if text == "fp":
            return cls(None, None)
        if text in FORMATS:
            return cls(4, 4, weight_format=text, activation_format=text)
        match = _PRECISION.fullmatch(text)
        if match and (match[1] or match[2]):
            bits, formats = [], []
            for side in match.groups():
                fmt = "int" if side is None or side.isdigit() else side
                bits.append(None if side is None else int(side) if fmt == "int" else 4)
                formats.append(fmt)
            if all(f != "int" or b is None or MIN_BITS <= b <= MAX_BITS for b, f in zip(bits, formats, strict=True)):
                return cls(*bits, weight_format=formats[0], activation_format=formats[1])
        raise UserError(
            f"unknown precision {name!r}: use 'fp', 'w<bits>a<bits>', 'a<bits>' (activations "
            f"only) or 'w<bits>' (weights only), {MIN_BITS} to {MAX_BITS} bits each (e.g. "
            f"'w4a4', 'a4', 'w4'), or an FP4 format, {' or '.join(map(repr, FORMATS))}, for both sides "
            "or in place of one side's bits (e.g. 'wmxfp4a8')"
        )

    def _side(self, bits: int | None, fmt: str) -> str:
        return fmt if fmt != "int" else str(bits)

    @property
    def format(self) -> str:
        """The number format of the quantized sides: ``"int"`` (also at full precision),
        ``"mxfp4"`` or ``"nvfp4"``, or ``"mixed"`` when the two sides differ."""
        used = {fmt for bits, fmt in ((self.weight_bits, self.weight_format),
                                      (self.activation_bits, self.activation_format)) if bits is not None}
        return "int" if not used else used.pop() if len(used) == 1 else "mixed"

    @property
    def name(self) -> str:
        if self.weight_bits is None and self.activation_bits is None:
            return "fp"
        sides = (("w", self.weight_bits, self.weight_format), ("a", self.activation_bits, self.activation_format))
        if self.format in FORMATS and None not in (self.weight_bits, self.activation_bits):
            name = self.format
        else:
            name = "".join(f"{side}{self._side(bits, fmt)}" for side, bits, fmt in sides if bits is not None)
        int_weights = self.weight_bits is not None and self.weight_format == "int"
        if int_weights and (self.weight_block != 128 or self.weight_symmetric):
            name += f"-g{self.weight_block}" + ("-sym" if self.weight_symmetric else "")
        if self.grid != DEFAULT_GRID and any(bits is not None and fmt == "int" for _, bits, fmt in sides):
            name += "-" + self.grid.replace("_", "")
        if self.weight_rounding != "rtn":
            name += "-" + self.weight_rounding
        return name

    def quantize_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """Round-to-nearest fake quantization of a ``(out, in)`` weight as this precision's
        weight side says (unchanged at full precision)."""
        if self.weight_bits is None:
            return weight
        if self.weight_format != "int":
            return quantize_fp4(weight, self.weight_format)
        return quantize_weight(weight, self.weight_bits, self.weight_block, self.weight_symmetric, self.grid)

    def quantize_activation(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token fake quantization of ``x`` (last dimension: channels) as this precision's
        activation side says (unchanged at full precision)."""
        if self.activation_bits is None:
            return x
        if self.activation_format != "int":
            return quantize_fp4(x, self.activation_format)
        return quantize_activation(x, self.activation_bits, self.grid)

    def __str__(self) -> str:
        return self.name


def _check_bits(bits: int) -> None:
    if not (isinstance(bits, int) and MIN_BITS <= bits <= MAX_BITS):
        raise UserError(f"bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}")


def grid_step(lo: torch.Tensor, hi: torch.Tensor, bits: int, grid: str = DEFAULT_GRID) -> torch.Tensor:
    """The step of the grid ``fake_quantize`` puts on rows of min ``lo`` and max ``hi``.

    zero_point: the range widened to hold 0 (then the zero point is an integer in [0, levels]);
    min_anchored: the range itself. An empty range gets step 1 (its values are exact)."""
    if grid == "zero_point":
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    step = (hi - lo) / (2**bits - 1)
    return torch.where(step > 0, step, torch.ones_like(step))


def straight_through(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``q``'s values with ``x``'s gradient: the straight-through estimator (Bengio et al. 2013)
    that quantization-aware fine-tuning trains through (rounding's own gradient is zero).
    Written so that the values are ``q``'s bit for bit (``x - x`` is exactly 0)."""
    return q.detach() + (x - x.detach())


def fake_quantize(x: torch.Tensor, bits: int, grid: str = DEFAULT_GRID, *,
                  inplace: bool = False, traceable: bool = False) -> torch.Tensor:
    """Asymmetric min-max fake quantization along the last dimension, on ``grid``.

    ``inplace``: overwrite ``x`` (the caller's own buffer) instead of allocating the result.
    ``traceable``: no data-dependent branch, for torch.compile (a NaN row comes out NaN, as
    from the fused kernel, instead of raising); the values are the same.
    While autograd records, the gradient is the straight-through one (``straight_through``)."""
    if grid not in GRIDS:
        raise UserError(f"unknown grid {grid!r}: use {' or '.join(GRIDS)}")
    # amin and amax, not aminmax: the same values, and several times faster on the CPU
    lo, hi = x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)
    if not traceable and (torch.isnan(lo).any() or torch.isnan(hi).any()):
        raise UserError("cannot quantize a tensor that contains NaN")
    levels = 2**bits - 1
    # One buffer, fewer passes; while autograd records (it refuses out=), new tensors.
    recording = torch.is_grad_enabled() and x.requires_grad
    inplace = inplace and not recording
    q = None if recording else x if inplace else torch.empty_like(x)
    step = grid_step(lo, hi, bits, grid)
    if grid == "min_anchored":
        q = torch.sub(x, lo, out=q).div_(step).round_().clamp_(0, levels).mul_(step).add_(lo)
        return straight_through(x, q) if recording else q
    zero = lo.clamp(max=0).neg_().div_(step).round_()
    # clamp(round(x / step) + zero, 0, levels) - zero: integers, exact in fp32. Only the top
    # bound can bind: x >= min and round is odd-symmetric, so round(x / step) >= -zero.
    # torch.minimum, not clamp_ with tensor bounds: the same values, several times faster.
    q = torch.div(x, step, out=q).round_()
    q = torch.minimum(q, levels - zero, out=None if recording else q).mul_(step)
    constant = hi == lo
    if traceable or constant.any():  # a constant row is exact (it is its own max)
        q = torch.where(constant, hi, q) if not inplace else q.copy_(torch.where(constant, hi, q))
    return straight_through(x, q) if recording else q


def quantize_activation(x: torch.Tensor, bits: int, grid: str = DEFAULT_GRID) -> torch.Tensor:
    """Per-token (last dimension) dynamic asymmetric fake quantization to ``bits`` bits."""
    _check_bits(bits)
    return fake_quantize(x, bits, grid)


def quantize_weight(
    weight: torch.Tensor, bits: int, block_size: int = 128, symmetric: bool = False,
    grid: str = DEFAULT_GRID,
) -> torch.Tensor:
    """Fake-quantize a ``(out, in)`` weight in blocks of ``block_size`` input channels.

    When ``in`` is not a multiple of the block size the last block is shorter; it is padded
    with copies of its own last column, which changes neither its min nor its max.
    """
    _check_bits(bits)
    if block_size < 1:
        raise UserError(f"block_size must be positive, got {block_size}")
    rows, cols = weight.shape
    pad = (-cols) % block_size
    padded = torch.cat([weight, weight[:, -1:].expand(rows, pad)], dim=1) if pad else weight
    blocks = padded.reshape(rows, -1, block_size)
    if symmetric:
        if torch.isnan(blocks).any():
            raise UserError("cannot quantize a tensor that contains NaN")
        qmax = 2 ** (bits - 1) - 1
        step = blocks.abs().amax(dim=-1, keepdim=True) / qmax
        step = torch.where(step > 0, step, torch.ones_like(step))
        out = torch.clamp(torch.round(blocks / step), -qmax, qmax) * step
    else:
        out = fake_quantize(blocks, bits, grid)
    return out.reshape(rows, -1)[:, :cols]
