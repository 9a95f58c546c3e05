"""GPTQ weight rounding (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization
for Generative Pre-trained Transformers") onto hadabench's integer weight grid.

Round-to-nearest (``grid.quantize_weight``) rounds every weight on its own. GPTQ rounds the
input channels (columns) of a ``(out, in)`` weight one at a time, in order, and moves each
column's rounding error onto the columns not yet rounded, weighted by the inverse Hessian
``H = 2 X^T X / n`` of the layer's inputs: the output error ``||X W^T - X W^T_q||`` that a
column's error causes is then partly cancelled by the later columns, where inputs correlate.

The grid is the one ``quantize_weight`` uses, fixed BEFORE any error is propagated: each block
of ``block_size`` columns of each row gets its step (and zero point) from the ORIGINAL
weights' min and max, exactly as in ``grid.py``, so a GPTQ weight is always a point of the
grid round-to-nearest would have used (GPTQ's "static groups"); only which point differs.
"""

from __future__ import annotations

import torch

from benchmark.errors import UserError

from .grid import DEFAULT_GRID, GRIDS, _check_bits, grid_step

__all__ = ["HessianAccumulator", "gptq_quantize_weight"]

_CHUNK = 8192  # tokens per float64 matmul in HessianAccumulator.add: bounded extra memory


class HessianAccumulator:
    """Accumulates ``X^T X`` of a layer's inputs over calibration batches.

    Memory is one ``C x C`` matrix (float64 by default, so that many batches add up without
    losing the small ones) however many tokens are seen; a batch is converted in chunks of
    8192 tokens, so its float64 copy is bounded too. ``channels`` may be left out and is
    then taken from the first batch.
    """

    def __init__(self, channels: int | None = None, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None):
        if channels is not None and channels < 1:
            raise UserError(f"channels must be positive, got {channels}")
        self.channels, self.dtype, self.device = channels, dtype, device
        self.tokens = 0
        self._xtx: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        """Add inputs of shape ``(..., C)``: every leading index is a token."""
        if x.dim() == 0:
            raise UserError("inputs must have a channel dimension, got a scalar")
        if self.channels is None:
            self.channels = x.shape[-1]
        if x.shape[-1] != self.channels:
            raise UserError(f"inputs have {x.shape[-1]} channels, the accumulator {self.channels}")
        rows = x.reshape(-1, self.channels)
        if not torch.isfinite(rows).all():
            raise UserError("cannot accumulate a Hessian from inputs with NaN or Inf")
        if self._xtx is None:
            device = self.device if self.device is not None else x.device
            self._xtx = torch.zeros(self.channels, self.channels, dtype=self.dtype, device=device)
        for start in range(0, rows.shape[0], _CHUNK):
            chunk = rows[start:start + _CHUNK].to(device=self._xtx.device, dtype=self.dtype)
            self._xtx.addmm_(chunk.T, chunk)
        self.tokens += rows.shape[0]

    def hessian(self) -> torch.Tensor:
        """``2 X^T X / n``, GPTQ's Hessian of the layer's squared output error.

        Refused with fewer tokens than channels: ``X^T X`` then has rank below ``C``, and the
        directions no token visited would be set by the dampening alone."""
        if self.channels is None:
            raise UserError("no inputs seen: a Hessian needs at least as many tokens as input channels, 0 seen")
        if self._xtx is None or self.tokens < self.channels:
            raise UserError(f"a Hessian over {self.channels} input channels needs at least {self.channels} "
                            f"tokens, only {self.tokens} seen")
        return self._xtx * (2.0 / self.tokens)


def _block_grid(weight: torch.Tensor, bits: int, block_size: int, symmetric: bool, grid: str):
    """Per (row, block) grid parameters from ``weight``'s own blocks, as ``quantize_weight``
    computes them: ``(lo, hi, step, zero)`` each ``(rows, blocks)``. The last, shorter block
    is padded with copies of its last column, as there (min and max unchanged)."""
    rows, cols = weight.shape
    pad = (-cols) % block_size
    padded = torch.cat([weight, weight[:, -1:].expand(rows, pad)], dim=1) if pad else weight
    blocks = padded.reshape(rows, -1, block_size)
    if symmetric:
        amax = blocks.abs().amax(dim=-1)
        step = amax / (2 ** (bits - 1) - 1)
        step = torch.where(step > 0, step, torch.ones_like(step))
        return -amax, amax, step, None
    lo, hi = blocks.amin(dim=-1), blocks.amax(dim=-1)
    step = grid_step(lo, hi, bits, grid)
    zero = lo.clamp(max=0).neg().div(step).round() if grid == "zero_point" else None
    return lo, hi, step, zero


def _round_onto(w: torch.Tensor, lo, hi, step, zero, bits: int, symmetric: bool, grid: str) -> torch.Tensor:
    """Round the column ``w`` onto the given grids (one per row) with ``quantize_weight``'s
    arithmetic, clamped at both ends: after error propagation a weight may leave the original
    block's range, where round-to-nearest's one-sided clamp would not hold.

    A block whose range is empty (a constant block; an all-zero block when symmetric) has one
    point, its constant, which round-to-nearest reproduces exactly."""
    levels = 2**bits - 1
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        q = torch.clamp(torch.round(w / step), -qmax, qmax) * step
        empty = hi == 0
    elif grid == "min_anchored":
        q = torch.sub(w, lo).div_(step).round_().clamp_(0, levels).mul_(step).add_(lo)
        empty = hi == lo
    else:
        q = torch.div(w, step).round_()
        q = torch.minimum(torch.maximum(q, -zero), levels - zero).mul_(step)
        empty = hi == lo
    return torch.where(empty, hi, q)


def gptq_quantize_weight(
    w: torch.Tensor, hessian: torch.Tensor, bits: int, block_size: int = 128, damp: float = 0.01,
    symmetric: bool = False, grid: str = DEFAULT_GRID,
) -> torch.Tensor:
    """GPTQ-round a ``(out, in)`` weight onto ``quantize_weight``'s grid; returns the
    dequantized weight in ``w``'s dtype.

    ``hessian``: ``(in, in)``, e.g. ``HessianAccumulator.hessian()``. Standard GPTQ: input
    channels no token used (``H_ii = 0``, "dead") get ``H_ii = 1`` and weight 0 (they
    contribute nothing to the output); ``damp * mean(diag H)`` is added to the diagonal; the
    columns are rounded in order (no act-order, which would break the blocks' order) using the
    upper Cholesky factor of ``H^-1``, with lazy batch updates of ``block_size`` columns, the
    weight blocks themselves. The factorization is in float64, the updates in float32.

    With a diagonal Hessian no error propagates and the result is ``quantize_weight``'s."""
    _check_bits(bits)
    if grid not in GRIDS:
        raise UserError(f"unknown grid {grid!r}: use {' or '.join(GRIDS)}")
    if block_size < 1:
        raise UserError(f"block_size must be positive, got {block_size}")
    if w.dim() != 2:
        raise UserError(f"weight must be (out, in), got shape {tuple(w.shape)}")
    cols = w.shape[1]
    if hessian.shape != (cols, cols):
        raise UserError(f"hessian must be ({cols}, {cols}) for a weight with {cols} input channels, "
                        f"got {tuple(hessian.shape)}")
    if not (damp >= 0):
        raise UserError(f"damp must be non-negative, got {damp}")
    if not (torch.isfinite(w).all() and torch.isfinite(hessian).all()):
        raise UserError("cannot GPTQ-quantize with NaN or Inf in the weight or the Hessian")

    weight = w.detach().to(torch.float32)
    lo, hi, step, zero = _block_grid(weight, bits, block_size, symmetric, grid)
    h = hessian.detach().to(device=w.device, dtype=torch.float64, copy=True)
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    weight = weight.clone()
    weight[:, dead] = 0.0
    h.diagonal().add_(damp * torch.diagonal(h).mean())
    try:
        inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
        factor = torch.linalg.cholesky(inverse, upper=True).to(torch.float32)
    except torch.linalg.LinAlgError as error:
        raise UserError(f"the Hessian is not positive definite even with damp={damp}: raise damp") from error

    out = torch.empty_like(weight)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        b = start // block_size
        grid_args = (lo[:, b], hi[:, b], step[:, b], None if zero is None else zero[:, b])
        batch = weight[:, start:end].clone()
        errors = torch.empty_like(batch)
        f = factor[start:end, start:end]
        for i in range(end - start):
            column = batch[:, i]
            q = _round_onto(column, *grid_args, bits, symmetric, grid)
            out[:, start + i] = q
            error = (column - q) / f[i, i]
            batch[:, i:].sub_(torch.outer(error, f[i, i:]))
            errors[:, i] = error
        weight[:, end:].sub_(errors @ factor[start:end, end:])
    return out.to(w.dtype)
