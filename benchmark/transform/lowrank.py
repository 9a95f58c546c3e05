"""A group with a full-precision low-rank branch beside a quantized residual (SVDQuant's
structure, Li et al. 2024), after any non-centering point of the affine design space.

    x~ = R diag(s)^-1 x                     the channel transform (smoothing, rotation)
    W~ = W diag(s) R^T = L1 L2 + E          L1 L2: the top-``rank`` SVD of W~
    y  = L1 (L2 x~) + Q_w(E) Q_a(x~) + b    exact at "fp", since (L1 L2 + E) x~ = W x

The branch reads the UNQUANTIZED transformed input and keeps the model's dtype; only the
residual ``E`` and the input of its matmul are quantized. The residual path is the harness's
own ``TransformedLinear`` (its online kernels, its weight grid), built on the residual
expressed in the original coordinates, ``E R diag(s)^-1 = W - L1 L2 R diag(s)^-1``.

Since R is orthogonal, the SVD of W~ is that of W diag(s) with its right singular vectors
rotated: L1 L2 = U_r S_r V_r^T R^T, so L1 = U_r S_r and L2 = (R V_r)^T, the rotation applied
to the rows of V_r^T.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import UserError
from benchmark.quant.grid import Precision
from benchmark.quant.hadamard import HadamardRotation
from benchmark.transform.base import CalibrationStats, QuantizedGroup, TransformedLinear

__all__ = ["LowRankResidual", "lowrank_split"]


def lowrank_split(weight: torch.Tensor, rank: int, scale: torch.Tensor | None = None):
    """(up, down, residual) in float64 with ``up @ down + residual * s == W diag(s)``:
    ``up @ down`` the best rank-``rank`` approximation of ``W diag(s)`` (``rank`` is cut to
    the matrix's smaller side), ``residual`` in the original coordinates of ``W``."""
    w = weight.double()
    ws = w if scale is None else w * scale.double().to(w.device)
    u, sv, vh = torch.linalg.svd(ws, full_matrices=False)
    rank = min(rank, sv.numel())
    up, down = u[:, :rank] * sv[:rank], vh[:rank]
    low = up @ down
    residual = w - (low if scale is None else low / scale.double().to(w.device))
    return up, down, residual


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An ``nn.Linear`` holding ``weight`` and ``bias`` (no initialisation)."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias, requires_grad=False)
    return linear


class LowRankResidual(QuantizedGroup):
    """``linears`` as a rank-``rank`` branch in the model's dtype plus a quantized residual
    behind the channel transform ``scale`` (s, or None) and ``rotation`` (R, or None).
    ``stats``: the group's calibration statistics, passed on to the residual's
    ``TransformedLinear`` (GPTQ rounding reads its Hessian there: the residual multiplies x~,
    the same input as any folded weight)."""

    def __init__(self, linears: Sequence[nn.Linear], precision: Precision | str, rank: int, *,
                 scale: torch.Tensor | None = None, rotation: HadamardRotation | None = None,
                 info: dict | None = None, stats: CalibrationStats | None = None):
        super().__init__()
        linears = list(linears)
        precision = Precision.parse(precision)
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise UserError(f"rank must be a positive integer, got {rank!r}")
        weight = torch.cat([lin.weight.detach() for lin in linears])
        dtype, device = weight.dtype, weight.device
        up, down, residual = lowrank_split(weight, rank, scale)
        if rotation is not None:
            rotation = rotation.to(device)
            down = rotation(down)  # rows: L2 = (R V_r)^T, the branch reads x~ = R diag(s)^-1 x
        self.requested_rank, self.rank = rank, down.shape[0]
        rows = residual.to(dtype).split([lin.out_features for lin in linears])
        self.residual = TransformedLinear(
            [_linear(r.contiguous(), None if lin.bias is None else lin.bias.detach())
             for r, lin in zip(rows, linears, strict=True)],
            precision, center=False, scale=scale, rotation=rotation, info=info,
            **({} if stats is None else {"stats": stats}))  # stats: what its weight rounding may use
        self.register_buffer("down", down.to(dtype).contiguous())
        self.register_buffer("up", up.to(dtype).contiguous())
        self.in_features, self.out_total = weight.shape[1], weight.shape[0]

    def use_kernel(self, kernel: str) -> LowRankResidual:
        """The residual's online part on ``kernel`` (``TransformedLinear.use_kernel``)."""
        self.residual.use_kernel(kernel)
        return self

    def forward(self, x: torch.Tensor):
        res = self.residual
        bits = res.precision.activation_bits
        xt = res.online(x, None, None)  # x~, unquantized: the branch's input
        low = F.linear(F.linear(xt, self.down), self.up)
        xq = xt if bits is None else res.online(x, None, bits, transient=True)
        y = F.linear(xq, res.weight, res.bias)
        y += low  # y is ours
        return tuple(y.split(res.out_features, dim=-1))

    def describe(self) -> dict:
        """The residual's description, the rank, and what the branch costs beside the
        quantized matmul (per token: 2 r (in + out) flops; its r (in + out) parameters)."""
        params = self.rank * (self.in_features + self.out_total)
        out = {**self.residual.describe(), "rank": self.rank,
               "lowrank_flops_per_token": 2 * params,
               "lowrank_params": params,
               "lowrank_bytes": params * self.up.element_size(),
               "lowrank_dtype": str(self.up.dtype).removeprefix("torch."),
               "lowrank_flops_ratio": params / (self.in_features * self.out_total)}
        if self.rank != self.requested_rank:
            out["rank_requested"] = self.requested_rank
        return out
