"""How a token's row is laid out as one 2-D tile for the fused kernel (torch only, no triton).

A Hadamard block of order B = K * 2^m is H_K (x) H_2^m (``benchmark.quant.hadamard``). Sylvester
factors combine into one Sylvester matrix, so it can be re-split as

    R_block = L (x) H_M,    L = H_K (x) H_{2^m / M},    M = min(2^m, 128)

and a row of C = NB * B channels becomes a tile X[r, j] = x[r * M + j] with NB * B / M rows:
the rotation is Y = Lbig X H_M^T with Lbig = I_NB (x) L (block-diagonal for the block form).
Both products are small matmuls (``tl.dot``). The matrices hold the unnormalised +-1 entries
(exact in any dot precision); 1 / sqrt(B) is applied once afterwards.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field

import torch

from benchmark.errors import UserError
from benchmark.quant.hadamard import HadamardRotation, hadamard_order_factor

__all__ = ["TileLayout", "plan_layout"]

MAX_RIGHT = 128      # largest H_M applied on the fast axis
MAX_TILE = 16384     # fp32 elements of one token's tile (4608 -> 64 x 128 = 8192)
MIN_DOT = 16         # tl.dot needs every dimension >= 16


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


@dataclass
class TileLayout:
    """One token = tile [rows_p, cols_p]; element (r, j) is channel r * cols + j when r < rows
    and j < cols (and the channel < channels); the padding is zero and never stored."""

    channels: int
    rows: int
    cols: int
    rows_p: int
    cols_p: int
    left: torch.Tensor | None = None    # [rows_p, rows_p] float64 +-1/0, applied as L @ X
    right: torch.Tensor | None = None   # [cols_p, cols_p] float64 +-1/0, applied as X @ right
    signs: torch.Tensor | None = None   # [channels] float64 +-1, or None
    norm: float = 1.0                   # 1 / sqrt(block)
    _device_cache: dict = field(default_factory=dict, repr=False)

    def on(self, device: torch.device) -> tuple[torch.Tensor | None, ...]:
        """(left, right, signs) as contiguous float32 on ``device``, cached."""
        key = str(device)
        if key not in self._device_cache:
            cast = lambda m: None if m is None else m.to(device=device, dtype=torch.float32).contiguous()
            self._device_cache[key] = (cast(self.left), cast(self.right), cast(self.signs))
        return self._device_cache[key]

    def apply_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The rotation as the kernel computes it, in float64 (to verify the layout)."""
        x = x.double()
        if self.signs is not None:
            x = x * self.signs
        t = torch.zeros(x.shape[0], self.rows_p, self.cols_p, dtype=torch.float64)
        t[:, :self.rows, :self.cols] = x.reshape(-1, self.rows, self.cols)
        if self.left is not None:
            t = self.left @ t
        if self.right is not None:
            t = t @ self.right
        return (t[:, :self.rows, :self.cols] * self.norm).reshape(x.shape)


def _pad(m: torch.Tensor, size: int) -> torch.Tensor:
    out = torch.zeros(size, size, dtype=torch.float64)
    out[:m.shape[0], :m.shape[1]] = m
    return out


def _build(channels: int, rotation: HadamardRotation | None) -> TileLayout:
    if rotation is None:  # one row of the tile, no matmul: no dot-size constraint
        return TileLayout(channels, 1, channels, 1, _next_pow2(channels))
    block = rotation.block
    k, power = hadamard_order_factor(block)
    cols = min(power, MAX_RIGHT)
    # H_K as +-1: the rotation's own normalised Paley factor, rescaled (exact: entries +-1/sqrt(K)).
    hk = torch.sign(rotation.factor0.cpu()) if k > 1 else torch.ones(1, 1, dtype=torch.float64)
    left_block = torch.kron(hk, _sylvester(power // cols))
    nb = channels // block
    rows = nb * left_block.shape[0]
    rows_p, cols_p = max(MIN_DOT, _next_pow2(rows)), max(MIN_DOT, _next_pow2(cols))
    if rows_p * cols_p > MAX_TILE:
        raise UserError(f"the fused kernel does not support a Hadamard block of {block} in "
                         f"{channels} channels (tile {rows_p}x{cols_p}); use the torch backend")
    left = None
    if left_block.shape[0] > 1:
        left = _pad(torch.kron(torch.eye(nb, dtype=torch.float64), left_block), rows_p)
    right = _pad(_sylvester(cols).T, cols_p) if cols > 1 else None
    signs = None if rotation.signs is None else rotation.signs.detach().cpu().double()
    layout = TileLayout(channels, rows, cols, rows_p, cols_p, left, right, signs,
                        1.0 / math.sqrt(block))
    # A wrong split must never pass silently: check against the rotation itself.
    probe = torch.randn(3, channels, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    want = rotation(probe.to(rotation.factor0.device)).cpu()
    got = layout.apply_reference(probe)
    if not torch.allclose(got, want, rtol=0, atol=1e-10):
        raise AssertionError(f"fused tile layout disagrees with {rotation.extra_repr()}")
    return layout


_layouts: weakref.WeakKeyDictionary[HadamardRotation, TileLayout] = weakref.WeakKeyDictionary()
_plain: dict[int, TileLayout] = {}


def plan_layout(channels: int, rotation: HadamardRotation | None) -> TileLayout:
    """The tile layout for ``channels`` channels under ``rotation`` (None: no rotation), cached."""
    if rotation is None:
        if channels not in _plain:
            _plain[channels] = _build(channels, None)
        return _plain[channels]
    rotation.check_width(channels)
    layout = _layouts.get(rotation)
    if layout is None:
        layout = _layouts[rotation] = _build(channels, rotation)
    return layout
