"""Fake quantizers (quantize, then dequantize, in the input's dtype) and precisions.

Activations: one asymmetric grid per token, from that token's own min and max, computed
at run time. Weights: one grid per block of ``block_size`` consecutive input channels of
each output row, min-max asymmetric by default, symmetric as an option.

The asymmetric grid is anchored at the minimum: ``min + k * step`` for k = 0 .. 2^b - 1
with ``step = (max - min) / (2^b - 1)``. Both ends are on the grid, so the error is at most
half a step everywhere (no clipping), and a constant token (step 0) is reproduced exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

__all__ = ["Precision", "quantize_activation", "quantize_weight"]

MIN_BITS, MAX_BITS = 2, 8
# "w4a4"; "a4": activations only (weights in full precision); "w4": weights only.
_PRECISION = re.compile(r"(?:w(\d+))?(?:a(\d+))?")


@dataclass(frozen=True)
class Precision:
    """Bit widths of weights and activations (``None``: full precision), and the weight
    grid: blocks of ``weight_block`` input channels, asymmetric unless ``weight_symmetric``."""

    weight_bits: int | None
    activation_bits: int | None
    weight_block: int = 128
    weight_symmetric: bool = False

    @classmethod
    def parse(cls, name: "str | Precision") -> "Precision":
        """``"fp"``, ``"w<b>a<b>"``, ``"a<b>"`` (activations only) or ``"w<b>"`` (weights only),
        with 2 to 8 bits each, e.g. ``"w4a4"``, ``"a4"``, ``"w4"``."""
        if isinstance(name, Precision):
            return name
        text = str(name).strip().lower()
        if text == "fp":
            return cls(None, None)
        match = _PRECISION.fullmatch(text)
        if match and (match[1] or match[2]):
            w, a = (None if bits is None else int(bits) for bits in match.groups())
            if all(b is None or MIN_BITS <= b <= MAX_BITS for b in (w, a)):
                return cls(w, a)
        raise ValueError(
            f"unknown precision {name!r}: use 'fp', 'w<bits>a<bits>', 'a<bits>' (activations "
            f"only) or 'w<bits>' (weights only), {MIN_BITS} to {MAX_BITS} bits each (e.g. "
            "'w4a4', 'a4', 'w4')"
        )

    @property
    def name(self) -> str:
        if self.weight_bits is None and self.activation_bits is None:
            return "fp"
        name = "".join(f"{side}{bits}" for side, bits in (("w", self.weight_bits), ("a", self.activation_bits))
                       if bits is not None)
        if self.weight_bits is not None and (self.weight_block != 128 or self.weight_symmetric):
            name += f"-g{self.weight_block}" + ("-sym" if self.weight_symmetric else "")
        return name

    def __str__(self) -> str:
        return self.name


def _check_bits(bits: int) -> None:
    if not (isinstance(bits, int) and MIN_BITS <= bits <= MAX_BITS):
        raise ValueError(f"bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}")


def _minmax_fake_quant(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Asymmetric min-max fake quantization along the last dimension."""
    # amin and amax, not aminmax: the same values, and several times faster on the CPU
    lo, hi = x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)
    if torch.isnan(lo).any() or torch.isnan(hi).any():
        raise ValueError("cannot quantize a tensor that contains NaN")
    levels = 2**bits - 1
    step = (hi - lo) / levels
    step = torch.where(step > 0, step, torch.ones_like(step))  # constant row: exact at lo
    q = (x - lo).div_(step).round_().clamp_(0, levels)  # in place: one buffer, fewer passes
    return q.mul_(step).add_(lo)


def quantize_activation(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-token (last dimension) dynamic asymmetric fake quantization to ``bits`` bits."""
    _check_bits(bits)
    return _minmax_fake_quant(x, bits)


def quantize_weight(
    weight: torch.Tensor, bits: int, block_size: int = 128, symmetric: bool = False
) -> torch.Tensor:
    """Fake-quantize a ``(out, in)`` weight in blocks of ``block_size`` input channels.

    When ``in`` is not a multiple of the block size the last block is shorter; it is padded
    with copies of its own last column, which changes neither its min nor its max.
    """
    _check_bits(bits)
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    rows, cols = weight.shape
    pad = (-cols) % block_size
    padded = torch.cat([weight, weight[:, -1:].expand(rows, pad)], dim=1) if pad else weight
    blocks = padded.reshape(rows, -1, block_size)
    if symmetric:
        if torch.isnan(blocks).any():
            raise ValueError("cannot quantize a tensor that contains NaN")
        qmax = 2 ** (bits - 1) - 1
        step = blocks.abs().amax(dim=-1, keepdim=True) / qmax
        step = torch.where(step > 0, step, torch.ones_like(step))
        out = torch.clamp(torch.round(blocks / step), -qmax, qmax) * step
    else:
        out = _minmax_fake_quant(blocks, bits)
    return out.reshape(rows, -1)[:, :cols]
