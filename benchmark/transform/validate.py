"""Checks a transform must pass before anyone benchmarks it (``hadabench validate``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from benchmark.quant.grid import Precision
from benchmark.transform.base import CalibrationStats
from benchmark.transform.exactness import EXACT_TOLERANCE, check_outputs, exactness_error, relative_error
from benchmark.transform.registry import create_transform

__all__ = ["Check", "synthetic_activations", "validate_transform"]

# (input channels, output widths of the group): a single linear, a q/k/v-like group, a
# PixArt-width layer and a width with no power-of-two factor beyond 4.
LAYER_SHAPES = [(64, [48]), (128, [128, 128, 64]), (1152, [96]), (12, [5])]


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


def synthetic_activations(channels: int, samples: int = 2, tokens: int = 32, seed: int = 0):
    """Activations that make transforms work: channel means far from zero, outlier channels."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(channels, generator=gen) * 4
    spread = torch.rand(channels, generator=gen) * 2 + 0.1
    x = means + spread * torch.randn(samples, tokens, channels, generator=gen)
    x[..., 0] *= 50
    return x


def _layers(channels, widths, seed):
    torch.manual_seed(seed)
    return [nn.Linear(channels, w) for w in widths]


def _finite(outs) -> bool:
    return all(torch.isfinite(o).all() for o in outs)


def _same(a, b) -> bool:
    """Equal element by element, NaN equal to NaN (a transform that always makes NaN is
    deterministic; the other checks report it as non-finite)."""
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


@torch.no_grad()
def validate_transform(name: str, **params) -> list[Check]:
    """Run every check; a check that raises fails with the error as its detail."""
    checks: list[Check] = []

    def check(title, fn):
        try:
            passed, detail = fn()
        except Exception as error:  # the plugin is under test: report, don't crash
            passed, detail = False, f"{type(error).__name__}: {error}"
        checks.append(Check(title, passed, detail))
        return passed

    if not check("loads", lambda: (True, type(create_transform(name, **params)).__name__)):
        return checks

    def stats_for(channels, seed=0):
        return CalibrationStats.from_activations(synthetic_activations(channels, seed=seed + 1))

    def build(channels, widths, precision, seed=0):
        layers = _layers(channels, widths, seed)
        x = synthetic_activations(channels, seed=seed)
        transform = create_transform(name, **params)
        return layers, x, transform.quantize(layers, Precision.parse(precision), stats_for(channels, seed))

    def exact():  # the same check as the run's (benchmark/transform/exactness.py), on synthetic layers
        worst = []
        for channels, widths in LAYER_SHAPES:
            layers, x = _layers(channels, widths, 0), synthetic_activations(channels)
            where = f"{channels} -> {widths}"
            err = exactness_error(create_transform(name, **params), layers, stats_for(channels), x, where)
            worst.append(err)
            if not math.isfinite(err):
                return False, f"non-finite output (NaN or Inf) at {where}"
            if not err < EXACT_TOLERANCE:
                return False, f"relative error {err:.2e} at {where} (limit {EXACT_TOLERANCE:g})"
        return True, f"worst relative error {max(worst):.1e} over {len(LAYER_SHAPES)} layer groups"

    def deterministic():
        _, x, first = build(128, [128, 64], "w4a4")
        _, _, second = build(128, [128, 64], "w4a4")
        a, b, c = first(x), first(x), second(x)
        same = all(_same(p, q) and _same(p, r) for p, q, r in zip(a, b, c, strict=False))
        if not same:
            return False, "outputs differ between runs"
        finite = _finite(a)
        return True, "two builds and two calls agree bitwise" + ("" if finite else " (NaN and Inf in the same places)")

    def shapes():
        layers, x, module = build(64, [48, 16], "w4a4")
        cases = {"(samples, tokens, channels)": x, "(tokens, channels)": x[0],
                 "one token": x[:, :1], "odd token count": x[:, :7]}
        for label, inp in cases.items():
            outs = module(inp)
            check_outputs(outs, layers, inp, label)
            for out in outs:
                if out.dtype != inp.dtype:
                    return False, f"{label}: output dtype {out.dtype}, expected {inp.dtype}"
        return True, ", ".join(cases)

    def quantized():
        for precision in ("w4a4", "w6a6"):
            layers, x, module = build(1152, [96], precision)
            outs = module(x)
            if not _finite(outs):
                return False, f"{precision}: non-finite output (NaN or Inf)"
            err = relative_error(outs, [lin(x) for lin in layers])
            if not 0 < err < 1:
                return False, f"{precision}: relative error {err:.2e} is not in (0, 1)"
        return True, "w4a4 and w6a6 outputs finite, quantized, and closer to the layer than zero is"

    check("exact at fp", exact)
    check("deterministic", deterministic)
    check("handles shapes", shapes)
    check("quantizes", quantized)
    return checks
