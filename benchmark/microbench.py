"""Layer-level micro-benchmarks (``hadabench microbench``).

Two tables on PixArt-shaped linears (4096 image tokens, 1152 -> 1152 and 1152 -> 4608):
the forward time of each transform at W4A4 next to the plain layer, and the output SQNR
of each transform and bias-correction mode on inputs whose channel means dominate, where
quantizing the appended mean token on a 4-bit grid costs about as much as centering saves.
"""

from __future__ import annotations

import statistics
import time

import torch
from tabulate import tabulate
from torch import nn

from .metrics import sqnr_db
from .quant import Precision
from .registry import BASELINES, create_transform
from .transform import CORRECTIONS, CalibrationStats
from .validate import synthetic_activations

SHAPES = [(1152, 1152), (1152, 4608)]
CENTERING = ("dyncenter", "hadanorm")


def _time(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations and casts
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _layer(channels, out, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(channels, out)


@torch.no_grad()
def timing_table(precision: str = "w4a4", tokens: int = 4096, repeats: int = 5,
                 transforms=BASELINES) -> str:
    rows = []
    for channels, out in SHAPES:
        layer = _layer(channels, out)
        x = synthetic_activations(channels, samples=1, tokens=tokens)
        stats = CalibrationStats.from_activations(x)
        plain = _time(lambda: layer(x), repeats)
        rows.append([f"{channels}->{out}", "plain nn.Linear (fp32)", f"{plain * 1e3:.1f}", "1.00"])
        for name in transforms:
            module = create_transform(name).quantize([layer], Precision.parse(precision), stats)
            t = _time(lambda: module(x), repeats)
            rows.append([f"{channels}->{out}", f"{name} {precision}", f"{t * 1e3:.1f}", f"{t / plain:.2f}"])
    return tabulate(rows, headers=["layer", "forward", "ms", "x plain"], tablefmt="github")


@torch.no_grad()
def correction_table(precision: str = "w4a4", tokens: int = 1024, mean_scale: float = 10.0) -> str:
    """Output SQNR (dB) per transform and correction mode, as channel means grow."""
    channels, out = SHAPES[0]
    layer = _layer(channels, out)
    rows = []
    for scale in (0.0, 1.0, mean_scale):
        x = synthetic_activations(channels, samples=2, tokens=tokens, seed=1)
        x = x + scale * torch.randn(channels, generator=torch.Generator().manual_seed(2)) * x.std()
        stats = CalibrationStats.from_activations(synthetic_activations(channels, seed=3) + (x.mean((0, 1)) if scale else 0))
        reference = layer(x)
        for name in BASELINES:
            modes = sorted(CORRECTIONS) if name in CENTERING else [None]
            for mode in modes:
                params = {"correction": mode} if mode else {}
                (y,) = create_transform(name, **params).quantize([layer], Precision.parse(precision), stats)(x)
                rows.append([f"{scale:g}", name, mode or "-", f"{sqnr_db(reference[None], y[None]).item():.2f}"])
    return tabulate(rows, headers=["channel-mean offset (x token std)", "transform", "correction",
                                   f"{precision} output SQNR dB"], tablefmt="github")


def main(precision: str = "w4a4", repeats: int = 5, transforms=BASELINES) -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, batch 1")
    print("\nForward time of one PixArt-shaped layer, 4096 tokens:\n")
    print(timing_table(precision, repeats=repeats, transforms=transforms))
    print("\nBias-correction modes on inputs with growing channel means (1024 tokens x 2 samples):\n")
    print(correction_table(precision))
