"""Uncertainty of a benchmark number: the project's names over ``benchmark.results.inference``.

The methods live in one place, benchmark/results/inference.py (chosen by simulation on this
project's per-caption values, scripts/coverage.py); this module adds what results files and
reports need on top of them:

- ``mean_interval(values)``: the mean over captions with its symmetric bootstrap-t interval, or
  Wilson's score interval when every value is 0 or 1 (caption accuracy).
- ``paired_test(a, b)``: ``a - b`` over the same captions: the mean difference with its
  bootstrap-t interval (Newcombe's for two 0/1 metrics) and the sign-flip test of "no difference"
  (exact up to 32 captions, else Monte Carlo with enough draws for the smallest threshold of the
  caller's Holm family; on 0/1 values the exact McNemar test).
- ``INTERVAL``, ``PAIRED_TEST`` (``STATISTICS`` both, ``BOOTSTRAP`` its older name): the settings
  recorded with the numbers; ``describe_interval`` and ``describe_test``: the same, as reports print them.
- ``interval_json`` / ``recorded_half_width`` / ``recorded_spread``: a cell's recorded interval.

Both methods are seeded (numpy's generator, seed 0), so the same per-caption numbers give the
same intervals and p-values on every machine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from benchmark.errors import UserError
from benchmark.results import inference
from benchmark.results.inference import (
    ALPHA,
    LEVEL,
    SMALL_SAMPLE,
    Interval,
    SignFlipResult,
    captions_for_half_width,
    captions_for_power,
    draws_for,
    holm,
    holm_adjusted,
    sign_flip_test,
    small_sample_note,
)

__all__ = ["ALPHA", "BINARY_INTERVAL", "BOOTSTRAP", "INTERVAL", "LEVEL", "PAIRED_TEST", "SMALL_SAMPLE", "STATISTICS",
           "Interval", "PairedTest", "SignFlipResult", "captions_for_half_width", "captions_for_power",
           "describe_binary_interval", "describe_interval", "describe_intervals", "describe_test", "draws_for", "holm",
           "holm_adjusted", "interval_json", "mean_interval", "min_p", "paired_interval", "paired_test",
           "recorded_half_width", "recorded_spread", "sign_flip_test", "small_sample_note"]

# The settings of every interval and test the project reports (recorded with the numbers).
INTERVAL = {"method": "bootstrap-t (symmetric)", "level": LEVEL, "resamples": inference.RESAMPLES,
            "seed": inference.SEED}
# ... and of a metric whose per-caption values are all 0 or 1 (inference.wilson_interval).
BINARY_INTERVAL = {"method": inference.BINARY_METHOD, "level": LEVEL}
PAIRED_TEST = {"method": "sign-flip", "exact_up_to": inference.EXACT_MAX_N,
               "monte_carlo": "draws_for(alpha / tests) random sign patterns", "seed": inference.SEED,
               "correction": "Holm", "alpha": ALPHA}
STATISTICS = {"interval": INTERVAL, "paired_test": PAIRED_TEST}
BOOTSTRAP = STATISTICS  # the older name of the record


def describe_interval() -> str:
    """How reports name the interval: '95% bootstrap-t interval (symmetric, 2000 resamples over
    captions, seed 0)'."""
    return (f"{INTERVAL['level']:.0%} bootstrap-t interval (symmetric, {INTERVAL['resamples']} resamples "
            f"over captions, seed {INTERVAL['seed']})")


def describe_intervals(intervals) -> str:
    """How reports name the intervals they print: ``describe_interval()``, or what replaces it for
    0/1 metrics (Wilson's interval of a mean, Newcombe's of a paired difference, the sign-flip test
    there being the exact McNemar test)."""
    methods = {interval.method for interval in intervals}
    if inference.PAIRED_BINARY_METHOD in methods or inference.BINARY_METHOD in methods:
        return (f"{LEVEL:.0%} Wilson score interval of a 0/1 metric's mean, Newcombe's hybrid score interval "
                "(1998, method 10) of a paired difference of two; their sign-flip test is the exact McNemar test")
    return describe_interval()


def describe_binary_interval() -> str:
    """How reports name the interval of a 0/1 metric: '95% Wilson score interval [low, high]'."""
    return f"{BINARY_INTERVAL['level']:.0%} Wilson score interval, shown as [low, high] (it is asymmetric)"


def describe_test(tests: int | None = None, one_sided: bool = False, alpha: float = ALPHA) -> str:
    """How reports name the paired test and its correction, e.g. 'two-sided sign-flip test over the
    same captions (exact up to 32 captions, else Monte Carlo), Holm's correction over 55 tests at
    family-wise 0.05'."""
    side = "one-sided" if one_sided else "two-sided"
    text = (f"{side} sign-flip test over the same captions (exact up to {PAIRED_TEST['exact_up_to']} captions, "
            "else Monte Carlo)")
    if tests is not None:
        text += f", Holm's correction over {tests} test{'s' if tests != 1 else ''} at family-wise {alpha:g}"
    return text


def min_p(captions: int, one_sided: bool = False, tests: int = 1, alpha: float = ALPHA) -> float:
    """The smallest p-value a sign-flip test of ``captions`` captions can return: 1 / 2**n one-sided,
    2 / 2**n two-sided when exact, the Monte Carlo resolution (draws sized for alpha / tests) above."""
    if captions > inference.EXACT_MAX_N:
        return 1 / (1 + draws_for(alpha / max(1, tests)))
    return min(1.0, (1 if one_sided else 2) / 2 ** captions)


def mean_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """The mean of ``values`` with its symmetric bootstrap-t interval, Wilson's when the values are
    all 0/1 (inference.mean_interval)."""
    return inference.mean_interval(values, level)


def paired_interval(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Interval:
    """The interval of mean(a - b) over the same captions: the bootstrap-t of the differences,
    Newcombe's when both are 0/1 (inference.paired_interval)."""
    return inference.paired_interval(a, b, level)


@dataclass(frozen=True)
class PairedTest:
    """``a - b`` over the same captions: the mean difference with its interval, the sign-flip
    p-value of "no difference" (unadjusted: a family's callers adjust it with ``holm_adjusted``),
    the test itself, and whether the p-value alone is significant at ``alpha``."""

    difference: Interval
    p_value: float
    test: SignFlipResult
    significant: bool

    def verdict(self, higher_is_better: bool = True) -> str:
        if not self.significant:
            return "not significant"
        better = (self.difference.mean > 0) == higher_is_better
        return "better" if better else "worse"


def paired_test(a: Sequence[float], b: Sequence[float], alternative: str = "two-sided", tests: int = 1,
                alpha: float = ALPHA) -> PairedTest:
    """``mean(a - b)`` with its interval and the sign-flip test; ``a[i]`` and ``b[i]`` score the same
    caption. ``tests``: the size of the caller's Holm family, which sizes the Monte Carlo draws
    (above 32 captions) for its smallest threshold, alpha / tests."""
    a = np.asarray(_finite(a, "paired test"))
    b = np.asarray(_finite(b, "paired test"))
    if len(a) != len(b):
        raise UserError(f"paired test: {len(a)} and {len(b)} samples; pairs need the same captions")
    differences = a - b
    test = inference.sign_flip_test(differences, alternative, min_alpha=alpha / max(1, tests))
    if len(differences) >= 2:
        interval = paired_interval(a, b)
    else:
        interval = Interval(test.mean, test.mean, test.mean, LEVEL, "none: one caption", 1)
    return PairedTest(interval, test.p, test, test.p <= alpha)


def _finite(values: Sequence[float], what: str) -> list[float]:
    values = [float(v) for v in values]
    if not values:
        raise UserError(f"{what}: no samples")
    if not all(math.isfinite(v) for v in values):
        raise UserError(f"{what}: non-finite samples (an exact match has infinite SQNR); no interval")
    return values


def interval_json(values: Sequence[float]) -> dict:
    """What results.json records of a mean's interval: the bounds and the method's settings, or
    the reason there is none."""
    try:
        interval = mean_interval(values)
    except ValueError as error:
        return {"low": None, "high": None, "reason": str(error), **INTERVAL}
    settings = INTERVAL if interval.symmetric else BINARY_INTERVAL
    if not (math.isfinite(interval.low) and math.isfinite(interval.high)):
        return {"mean": interval.mean, "low": None, "high": None, "samples": interval.n,
                "reason": f"unbounded at {interval.n} captions (a resample of one repeated caption has no spread)",
                **settings}
    return {"mean": interval.mean, "low": interval.low, "high": interval.high, "samples": interval.n, **settings}


def recorded_spread(metric: dict | None, fmt: str = "{:.3f}") -> str:
    """How a recorded interval is printed after its mean: " ± half-width", " [low, high]" for the
    asymmetric Wilson interval of a 0/1 metric, or "" when none is recorded."""
    interval = (metric or {}).get("interval") or {}
    if interval.get("low") is None or interval.get("high") is None:
        return ""
    if interval.get("method") == BINARY_INTERVAL["method"]:
        return f" [{fmt.format(interval['low'])}, {fmt.format(interval['high'])}]"
    return f" ± {fmt.format((interval['high'] - interval['low']) / 2)}"


def recorded_half_width(metric: dict | None) -> float | None:
    """The half-width of the interval a results file records with a metric, or None."""
    interval = (metric or {}).get("interval") or {}
    if interval.get("low") is None or interval.get("high") is None:
        return None
    return (interval["high"] - interval["low"]) / 2
