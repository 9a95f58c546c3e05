"""Uncertainty of a benchmark number: bootstrap intervals over captions, and paired tests.

Every cell of a run scores the same captions from the same seeds, so two cells compare
caption by caption. Two tools, both resampling captions with replacement:

- ``mean_interval(values)``: the percentile bootstrap interval of a mean (one cell).
- ``paired_test(a, b)``: the paired bootstrap of the mean difference ``a - b`` over the same
  captions (Koehn 2004, as sacrebleu's paired bootstrap resampling does): the difference,
  its interval and a two-sided p-value. Much tighter than comparing two cells' intervals,
  since most of a caption's difficulty is shared by both cells.

The resampling is pure Python (``random.Random`` and ``math.fsum``): the same seed gives the
same interval on every machine, so results files reproduce bit for bit wherever the
per-sample numbers do.
"""

from __future__ import annotations

from benchmark.errors import UserError

import math
import random
from dataclasses import asdict, dataclass
from typing import Sequence

__all__ = ["BOOTSTRAP", "Interval", "PairedTest", "captions_needed", "interval_json", "mean_interval",
           "paired_test", "recorded_half_width"]

# The settings of every interval and test the project reports (recorded with the numbers).
BOOTSTRAP = {"method": "percentile bootstrap over captions", "level": 0.95, "resamples": 2000, "seed": 0}


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    samples: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def to_json(self) -> dict:
        return {**asdict(self), **{k: v for k, v in BOOTSTRAP.items()}}


@dataclass(frozen=True)
class PairedTest:
    """``a - b`` over the same captions: the mean difference, its interval, the p-value of
    "no difference" (two-sided), and whether it is significant at ``1 - level``."""

    difference: Interval
    p_value: float
    significant: bool

    def verdict(self, higher_is_better: bool = True) -> str:
        if not self.significant:
            return "not significant"
        better = (self.difference.mean > 0) == higher_is_better
        return "better" if better else "worse"


def _finite(values: Sequence[float], what: str) -> list[float]:
    values = [float(v) for v in values]
    if not values:
        raise UserError(f"{what}: no samples")
    if not all(math.isfinite(v) for v in values):
        raise UserError(f"{what}: non-finite samples (an exact match has infinite SQNR); no interval")
    return values


def _resampled_means(values: list[float], resamples: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    n = len(values)
    return sorted(math.fsum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))


def _quantile(ordered: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default method)."""
    position = q * (len(ordered) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def _interval(values: list[float], level: float, resamples: int, seed: int) -> tuple[Interval, list[float]]:
    means = _resampled_means(values, resamples, seed)
    tail = (1 - level) / 2
    mean = math.fsum(values) / len(values)
    return Interval(mean, _quantile(means, tail), _quantile(means, 1 - tail), len(values)), means


def mean_interval(values: Sequence[float], level: float = BOOTSTRAP["level"],
                  resamples: int = BOOTSTRAP["resamples"], seed: int = BOOTSTRAP["seed"]) -> Interval:
    """The mean of ``values`` with its percentile bootstrap interval."""
    return _interval(_finite(values, "interval"), level, resamples, seed)[0]


def interval_json(values: Sequence[float]) -> dict:
    """What results.json records of a mean's interval: the bounds and the bootstrap settings,
    or the reason there is none."""
    try:
        return mean_interval(values).to_json()
    except ValueError as error:
        return {"low": None, "high": None, "reason": str(error)}


def recorded_half_width(metric: dict | None) -> float | None:
    """The half-width of the interval a results file records with a metric, or None."""
    interval = (metric or {}).get("interval") or {}
    if interval.get("low") is None or interval.get("high") is None:
        return None
    return (interval["high"] - interval["low"]) / 2


def paired_test(a: Sequence[float], b: Sequence[float], level: float = BOOTSTRAP["level"],
                resamples: int = BOOTSTRAP["resamples"], seed: int = BOOTSTRAP["seed"]) -> PairedTest:
    """Paired bootstrap of ``mean(a - b)``; ``a[i]`` and ``b[i]`` score the same caption."""
    a, b = _finite(a, "paired test"), _finite(b, "paired test")
    if len(a) != len(b):
        raise UserError(f"paired test: {len(a)} and {len(b)} samples; pairs need the same captions")
    differences = [x - y for x, y in zip(a, b)]
    interval, means = _interval(differences, level, resamples, seed)
    # Two-sided p-value of "mean difference 0": twice the smaller tail of the resampled
    # means beyond 0, with the +1 correction so that it is never exactly 0.
    below = sum(m <= 0 for m in means)
    above = sum(m >= 0 for m in means)
    p_value = min(1.0, 2 * (min(below, above) + 1) / (resamples + 1))
    return PairedTest(interval, p_value, p_value < 1 - level)


def captions_needed(interval: Interval, target_half_width: float) -> int | None:
    """Captions for an interval of +-``target_half_width``, from one measured at n samples:
    the half-width shrinks as 1/sqrt(n). None when the interval is already degenerate."""
    if interval.half_width <= 0:
        return None
    return max(1, math.ceil(interval.samples * (interval.half_width / target_half_width) ** 2))
