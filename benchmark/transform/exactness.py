"""Exactness at full precision: the one check every transform must pass before it may rank.

Every transform is meant to be an invertible map folded into the weights, so quantized at
``"fp"`` (transforms on, quantizers off) it must reproduce the original linears' outputs.
``hadabench validate`` runs this check on synthetic layers; ``hadabench run`` runs it on
the model's own layers and calibration activations before each transform is quantized,
and a transform over the limit fails its cells (unless ``--allow-inexact``).

The check runs in float32 on copies of the linears, whatever the run's dtype: it tests the
transform's algebra, not the rounding of half-precision matmuls.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn

from benchmark.errors import UserError
from benchmark.quant import numerics
from benchmark.quant.grid import Precision
from benchmark.transform.base import CalibrationStats, Transform, on_kernel

__all__ = ["EXACT_TOLERANCE", "CHECK_TOKENS", "NotExact", "calibration_tokens", "check_outputs",
           "describe_failure", "exactness_error", "model_exactness", "relative_error", "summarize"]

# Relative error allowed at "fp" in float32: rounding of the folded weights and the rotation
# stays near 1e-6; a transform that drops or mixes information is off by 1e-3 or more.
EXACT_TOLERANCE = 1e-5
# Calibration tokens per group used by the run's check: enough to see every channel, cheap.
CHECK_TOKENS = 512


class NotExact(ValueError):
    """A transform that does not reproduce the original layers at full precision."""


def _sum_of_squares(tensors) -> float:
    """In float64, per row and then exactly (``math.fsum``): the same bits for any thread
    count, which a whole-tensor sum is not (its parallel partial sums follow the threads)."""
    return math.fsum(v for t in tensors for v in t.double().pow(2).reshape(-1, t.shape[-1]).sum(-1).tolist())


def relative_error(outs: Sequence[torch.Tensor], refs: Sequence[torch.Tensor]) -> float:
    """||outs - refs|| / ||refs|| over all outputs of a group (NaN or Inf when outs are)."""
    num = _sum_of_squares(o.double() - r.double() for o, r in zip(outs, refs, strict=False))
    den = _sum_of_squares(refs)
    return float((torch.tensor(num, dtype=torch.float64) / den).sqrt())  # x / 0: inf or NaN, as torch


def check_outputs(outs, linears: Sequence[nn.Linear], x: torch.Tensor, where: str) -> None:
    """A group module must return a tuple with one output per linear, of that linear's shape."""
    if not isinstance(outs, tuple) or len(outs) != len(linears):
        got = f"a tuple of {len(outs)}" if isinstance(outs, tuple) else type(outs).__name__
        raise UserError(f"{where}: the transform's module returned {got}, expected a tuple of "
                         f"{len(linears)} outputs (one per linear)")
    for index, (out, linear) in enumerate(zip(outs, linears, strict=False)):
        expected = (*x.shape[:-1], linear.out_features)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise UserError(f"{where}: output {index} has shape {got}, expected {expected} "
                             f"(linear {linear.in_features} -> {linear.out_features}, input "
                             f"{tuple(x.shape)})")


@torch.no_grad()
def exactness_error(transform: Transform, linears: Sequence[nn.Linear], stats: CalibrationStats | None,
                    x: torch.Tensor, where: str = "group", kernel: str = "auto") -> float:
    """Relative error of ``transform`` quantized at "fp" against ``linears`` on ``x``, its
    online part on ``kernel`` (the run's: the path under test is the one checked)."""
    module = on_kernel(transform.quantize(list(linears), Precision.parse("fp"), stats), kernel)
    outs = module(x)
    check_outputs(outs, linears, x, where)
    return relative_error(outs, [linear(x) for linear in linears])


def calibration_tokens(stats: CalibrationStats, max_tokens: int = CHECK_TOKENS) -> torch.Tensor:
    """Whole samples of the calibration sample, at most ``max_tokens`` tokens in all (at
    least one sample, cut to ``max_tokens`` tokens): the centering transforms need samples."""
    if stats is None or stats.sample is None:
        raise UserError("the exactness check needs calibration activations (CalibrationStats.sample)")
    sample = stats.sample
    rows = max(1, max_tokens // sample.shape[1])
    return sample[:rows, :max_tokens]


@torch.no_grad()
def model_exactness(model, transform: Transform, stats: dict[str, CalibrationStats],
                    max_tokens: int = CHECK_TOKENS, kernel: str = "auto") -> dict[str, float]:
    """Relative error at "fp" of every target group of ``model`` (a ``ModelAdapter``), on
    that group's calibration tokens. The model itself is not touched."""
    errors = {}
    with numerics.ieee_float32():  # TF32 matmuls (1e-3) would fail every transform
        for group in model.targets():
            linears = [copy.deepcopy(linear).float() for _, linear in group.linears]
            x = calibration_tokens(stats[group.name], max_tokens).to(linears[0].weight.device, torch.float32)
            errors[group.name] = exactness_error(transform, linears, stats[group.name], x, group.name, kernel)
    return errors


def summarize(errors: dict[str, float]) -> dict:
    """The worst group (a non-finite error is the worst) and whether it is within the limit."""
    worst = max(errors, key=lambda g: math.inf if not math.isfinite(errors[g]) else errors[g])
    error = errors[worst]
    return {"worst_relative_error": error, "group": worst, "limit": EXACT_TOLERANCE,
            "exact": math.isfinite(error) and error < EXACT_TOLERANCE}


def describe_failure(summary: dict) -> str:
    error = summary["worst_relative_error"]
    what = "non-finite output (NaN or Inf)" if not math.isfinite(error) else f"relative error {error:.2e}"
    return (f"not exact at full precision: {summary['group']} has {what} (limit "
            f"{summary['limit']:g}); --allow-inexact runs it anyway, marked")
