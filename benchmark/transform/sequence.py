"""Orthogonal transforms along the SEQUENCE (token) dimension, and a group that quantizes
in their domain with more bits for the first tokens (STaMP, Federici et al. 2025).

A linear acts on each token alone, so an orthogonal map ``T`` over the tokens of one sample
commutes with it: ``W (T X) = T (W X)`` for ``X`` of shape (tokens, channels). Quantizing
``T X`` instead of ``X`` is then exact at full precision once ``T^T`` is applied to the
output. Where neighbouring tokens are alike (image patches, text) ``T`` gathers the energy in
its first, low-frequency tokens, which get 8 bits; the many other tokens hold little energy,
so their low-bit grids are fine.

The transforms (``plan_sequence`` picks one per token count):

- ``"dwt"``: the orthonormal Haar wavelet, multi-level, O(tokens x channels): pairs of
  tokens become (a + b) / sqrt(2), (a - b) / sqrt(2), repeated on the averages until at most
  ``keep`` of them remain (a token left over at an odd length is carried to the next level
  unchanged). On a square token count ``n * n`` the tokens are taken as the image's n x n
  patch grid in raster order (PixArt, SD3 and the embedded model order their patches so) and
  each level is the 2-D Haar step on 2 x 2 patches: LL, LH, HL, HH = the 4-point Hadamard / 2
  of (a, b, c, d), down to an LL band of at most ``keep`` tokens (64 x 64 patches, keep 64: 3
  levels, LL 8 x 8). Otherwise (text tokens, FLUX's text + image sequence) 1-D over tokens.
- ``"dct"``: the orthonormal DCT-II, separable on the n x n grid (two n x n products,
  O(tokens * n * channels)) with frequencies ordered by u + v, then u; 1-D over tokens
  otherwise (a dense tokens x tokens product, O(tokens^2 * channels)).

Output order, lowest frequencies first: the approximation band (raster order), then the
detail bands from the coarsest level to the finest. Every map is per sample: all leading
dimensions of ``x`` (..., tokens, channels) are batch, and no two of them are ever mixed.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmark.errors import UserError
from benchmark.quant.grid import quantize_activation
from benchmark.transform.base import QuantizedGroup, TransformedLinear

__all__ = ["LAYOUTS", "SEQUENCE_TRANSFORMS", "SequenceMixedPrecision", "SequencePlan", "check_sequence_options",
           "plan_sequence", "sequence_forward", "sequence_inverse"]

SEQUENCE_TRANSFORMS = ("dwt", "dct")
LAYOUTS = ("auto", "1d", "2d")
_SQRT_HALF = math.sqrt(0.5)


@dataclass(frozen=True)
class SequencePlan:
    """How one token count is transformed: ``kind``, the 2-D grid side (None: 1-D) and the
    Haar levels (``dwt``; 0 is the identity)."""

    kind: str
    tokens: int
    side: int | None
    levels: int

    def describe(self) -> dict:
        return {"sequence": self.kind, "tokens": self.tokens,
                "grid": None if self.side is None else [self.side, self.side], "levels": self.levels}


def _square_side(tokens: int) -> int | None:
    side = math.isqrt(tokens)
    return side if side * side == tokens and side > 1 else None


@functools.lru_cache(maxsize=256)
def plan_sequence(tokens: int, kind: str = "dwt", layout: str = "auto", keep: int = 64) -> SequencePlan:
    """The plan for ``tokens`` tokens. ``layout``: "2d" takes them as a square grid (an
    error when the count is not a square), "1d" as a sequence, "auto" as a grid when the
    count is a square, else as a sequence."""
    if kind not in SEQUENCE_TRANSFORMS:
        raise UserError(f"sequence transform must be one of {', '.join(SEQUENCE_TRANSFORMS)}, got {kind!r}")
    if layout not in LAYOUTS:
        raise UserError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    side = None if layout == "1d" else _square_side(tokens)
    if layout == "2d" and side is None:
        raise UserError(f"layout '2d' needs a square token count (an n x n patch grid), got {tokens} tokens")
    levels = 0
    if kind == "dwt" and side is not None:
        while (side >> levels) % 2 == 0 and (side >> levels) ** 2 > keep:
            levels += 1
        if layout == "auto" and (side >> levels) ** 2 > keep:  # an odd side stops the 2-D steps early
            side, levels = None, 0
    if kind == "dwt" and side is None:
        length = tokens
        while length > max(keep, 1):
            length, levels = (length + 1) // 2, levels + 1
    return SequencePlan(kind, tokens, side, levels)


@functools.lru_cache(maxsize=32)
def _dct_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II, (frequency, position), float64."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    c = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c


@functools.lru_cache(maxsize=32)
def _zigzag(side: int) -> torch.Tensor:
    """Frequencies (u, v) of a side x side grid flattened in raster order, ordered by u + v, then u."""
    order = sorted(range(side * side), key=lambda f: (f // side + f % side, f // side))
    return torch.tensor(order, dtype=torch.long)


def _dct(x: torch.Tensor, plan: SequencePlan, inverse: bool) -> torch.Tensor:
    if plan.side is None:
        c = _dct_matrix(plan.tokens).to(dtype=x.dtype, device=x.device)
        return torch.matmul(c.T if inverse else c, x)
    side = plan.side
    c = _dct_matrix(side).to(dtype=x.dtype, device=x.device)
    order = _zigzag(side).to(x.device)
    lead, channels = x.shape[:-2], x.shape[-1]
    if not inverse:
        grid = x.reshape(*lead, side, side, channels)
        freq = torch.einsum("ui,...ijc,vj->...uvc", c, grid, c)
        return freq.reshape(*lead, side * side, channels)[..., order, :]
    freq = torch.empty_like(x)
    freq[..., order, :] = x
    grid = torch.einsum("ui,...uvc,vj->...ijc", c, freq.reshape(*lead, side, side, channels), c)
    return grid.reshape(*lead, side * side, channels)


def _haar_1d(x: torch.Tensor, levels: int) -> torch.Tensor:
    approx, details = x, []
    for _ in range(levels):
        pairs = approx.shape[-2] // 2
        even, odd = approx[..., 0:2 * pairs:2, :], approx[..., 1:2 * pairs:2, :]
        details.append((even - odd) * _SQRT_HALF)
        low = (even + odd) * _SQRT_HALF
        approx = torch.cat([low, approx[..., 2 * pairs:, :]], dim=-2) if approx.shape[-2] % 2 else low
    return torch.cat([approx, *reversed(details)], dim=-2)


def _haar_1d_inverse(y: torch.Tensor, levels: int) -> torch.Tensor:
    lengths = [y.shape[-2]]
    for _ in range(levels):
        lengths.append((lengths[-1] + 1) // 2)
    approx, offset = y[..., :lengths[-1], :], lengths[-1]
    for length in reversed(lengths[:-1]):
        pairs = length // 2
        detail = y[..., offset:offset + pairs, :]
        offset += pairs
        low = approx[..., :pairs, :]
        inter = torch.stack([(low + detail) * _SQRT_HALF, (low - detail) * _SQRT_HALF], dim=-2)
        inter = inter.reshape(*low.shape[:-2], 2 * pairs, low.shape[-1])
        approx = torch.cat([inter, approx[..., pairs:, :]], dim=-2) if length % 2 else inter
    return approx


def _haar_2d(x: torch.Tensor, side: int, levels: int) -> torch.Tensor:
    lead, channels = x.shape[:-2], x.shape[-1]
    band, details = x.reshape(*lead, side, side, channels), []
    for _ in range(levels):
        a, b = band[..., 0::2, 0::2, :], band[..., 0::2, 1::2, :]
        c, d = band[..., 1::2, 0::2, :], band[..., 1::2, 1::2, :]
        s, t, u, v = a + b, a - b, c + d, c - d
        flat = [((s - u) * 0.5), ((t + v) * 0.5), ((t - v) * 0.5)]  # HL, LH, HH
        details.append(torch.cat([f.reshape(*lead, -1, channels) for f in flat], dim=-2))
        band = (s + u) * 0.5  # LL
    return torch.cat([band.reshape(*lead, -1, channels), *reversed(details)], dim=-2)


def _haar_2d_inverse(y: torch.Tensor, side: int, levels: int) -> torch.Tensor:
    lead, channels = y.shape[:-2], y.shape[-1]
    small = side >> levels
    band, offset = y[..., :small * small, :].reshape(*lead, small, small, channels), small * small
    for level in reversed(range(levels)):
        half = side >> (level + 1)
        n = half * half
        hl, lh, hh = (y[..., offset + i * n:offset + (i + 1) * n, :].reshape(*lead, half, half, channels)
                      for i in range(3))
        offset += 3 * n
        out = band.new_empty(*lead, 2 * half, 2 * half, channels)
        s, u = band + hl, band - hl   # a + b, c + d
        t, v = lh + hh, lh - hh       # a - b, c - d
        out[..., 0::2, 0::2, :] = (s + t) * 0.5
        out[..., 0::2, 1::2, :] = (s - t) * 0.5
        out[..., 1::2, 0::2, :] = (u + v) * 0.5
        out[..., 1::2, 1::2, :] = (u - v) * 0.5
        band = out
    return band.reshape(*lead, side * side, channels)


def sequence_forward(x: torch.Tensor, plan: SequencePlan) -> torch.Tensor:
    """``T x`` along dim -2 of ``x`` (..., tokens, channels), per leading index."""
    if x.shape[-2] != plan.tokens:
        raise UserError(f"a plan for {plan.tokens} tokens applied to {x.shape[-2]}")
    if plan.kind == "dct":
        return _dct(x, plan, inverse=False)
    if plan.side is not None:
        return _haar_2d(x, plan.side, plan.levels)
    return _haar_1d(x, plan.levels)


def sequence_inverse(y: torch.Tensor, plan: SequencePlan) -> torch.Tensor:
    """``T^T y``: the inverse of ``sequence_forward`` (T is orthogonal)."""
    if y.shape[-2] != plan.tokens:
        raise UserError(f"a plan for {plan.tokens} tokens applied to {y.shape[-2]}")
    if plan.kind == "dct":
        return _dct(y, plan, inverse=True)
    if plan.side is not None:
        return _haar_2d_inverse(y, plan.side, plan.levels)
    return _haar_1d_inverse(y, plan.levels)


def check_sequence_options(keep, kind: str, layout: str) -> None:
    """Refuse (UserError) a ``keep`` that is neither a token count (an integer >= 1) nor a
    fraction (a float in (0, 1)), an unknown sequence transform or layout."""
    if isinstance(keep, bool) or not (isinstance(keep, int) and keep >= 1
                                      or isinstance(keep, float) and 0 < keep < 1):
        raise UserError(f"keep must be a token count (an integer >= 1) or a fraction of the tokens "
                         f"(a float in (0, 1)), got {keep!r}")
    if kind not in SEQUENCE_TRANSFORMS:
        raise UserError(f"sequence must be one of {', '.join(SEQUENCE_TRANSFORMS)}, got {kind!r}")
    if layout not in LAYOUTS:
        raise UserError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")


class SequenceMixedPrecision(QuantizedGroup):
    """A group quantized in a sequence-transformed domain, its first tokens at more bits.

        X~ = T X                          per sample, T orthogonal over tokens (``plan_sequence``)
        Z  = Q_w(W~) Q_a(X~ R^T)          ``inner``'s channel transform R and quantized weights;
                                          the first ``keep`` tokens of X~ (a count, or a
                                          fraction of the tokens) at ``keep_bits``
                                          (INT grid), the rest at the precision's activations
        Y  = T^T Z + b                    exact at "fp": T^T (T X) W^T = X W^T

    ``inner``: a ``TransformedLinear`` without centering, for the channel part (its rotation,
    scales and quantized folded weights; its bias is added after ``T^T``, since ``T`` does
    not preserve a constant token).
    """

    def __init__(self, inner: TransformedLinear, keep: int | float = 64, kind: str = "dwt", layout: str = "auto",
                 keep_bits: int = 8, info: dict | None = None):
        super().__init__()
        if inner.center:
            raise UserError("a sequence transform cannot be combined with centering: the first "
                            "transformed token already carries each sample's mean")
        check_sequence_options(keep, kind, layout)
        self.inner, self.keep, self.kind, self.layout, self.keep_bits = inner, keep, kind, layout, keep_bits
        self.info = dict(info or {})

    def kept(self, tokens: int) -> int:
        """How many of a sample's ``tokens`` transformed tokens get ``keep_bits``: ``keep``
        itself (an int), or that fraction of them (a float in (0, 1), rounded up)."""
        if isinstance(self.keep, float):
            return min(tokens, max(1, math.ceil(self.keep * tokens)))
        return min(self.keep, tokens)

    def forward(self, x: torch.Tensor):
        inner = self.inner
        single = x.dim() == 1
        if single:  # one token
            x = x[None]
        dtype, tokens = x.dtype, x.shape[-2]
        k = self.kept(tokens)
        plan = plan_sequence(tokens, self.kind, self.layout, k)
        compute = torch.promote_types(dtype, torch.float32)  # as the online part: fp32 at least
        xs = sequence_forward(x.to(compute), plan)
        bits = inner.precision.activation_bits
        if bits is None:
            q = inner.online(xs, None, None)
        else:
            # the first tokens on the INT grid at keep_bits, whatever the precision's format
            head = inner.online(xs[..., :k, :].contiguous(), None, None)
            head = quantize_activation(head, self.keep_bits, inner.precision.grid)
            tail = inner.online(xs[..., k:, :].contiguous(), None, bits) if k < tokens else None
            q = head if tail is None else torch.cat([head, tail], dim=-2)
        z = F.linear(q.to(inner.weight.dtype), inner.weight)
        y = sequence_inverse(z.to(compute), plan).to(dtype)
        if inner.bias is not None:
            y = y + inner.bias
        if single:
            y = y[0]
        return tuple(y.split(inner.out_features, dim=-1))

    def describe(self) -> dict:
        return {**self.inner.describe(), "sequence": self.kind, "layout": self.layout, "keep": self.keep,
                "keep_bits": self.keep_bits, "keep_format": "int", **self.info}
