"""Inference over captions, in one place: intervals, paired tests, multiplicity, ranks and sample sizes.

Every cell of a run scores the same captions from the same seeds, so the unit of inference is the
caption: a cell's mean over captions, or the mean of per-caption differences between two cells.
Per-caption SQNR is skewed and paired differences are heavy-tailed (excess kurtosis up to ~17 in
the embedded run), and runs have few captions (8 to 64), so the methods here were chosen by
simulation on the project's own per-caption values (scripts/coverage.py), not by textbook habit:

- ``mean_interval``: the symmetric studentized bootstrap (bootstrap-t). Compared with the
  t-interval, the equal-tailed bootstrap-t, BCa, sign-flip inversion and the percentile bootstrap
  used before, it has the best worst-case coverage on these data at n = 8 to 64; no method stays
  within 1.5 points of 95% everywhere (skewed cells at n <= 16 and the heaviest-tailed differences
  remain a few points short: a sample that misses a rare extreme caption cannot know of it).
- ``sign_flip_test``: the randomization test of "mean difference 0" (Fisher/Pitman). Exact
  (every sign pattern, counted by meet in the middle) up to ``EXACT_MAX_N`` captions, so its
  p-values go down to 2 / 2**n instead of a bootstrap's 1 / (resamples + 1) floor, which made
  Holm blind beyond ~100 tests. It is exact when the null differences are symmetric about 0;
  on skewed differences it over-rejects, most at the tiny thresholds of a large Holm family.
- ``wilson_interval`` / ``newcombe_interval``: a metric whose per-caption values are all 0 or 1
  (caption accuracy) is a proportion: its interval is Wilson's score interval (Wilson 1927), and
  the interval of a paired difference of two such metrics Newcombe's hybrid score interval for
  paired proportions (Newcombe 1998, method 10). The bootstrap-t degenerates on them: a resample
  without the one 0 has no spread, so it is unbounded (the leaderboard's former "± ∞").
  ``mean_interval`` and ``paired_interval`` choose them by themselves when the values are all 0/1,
  so every consumer gets them from here. Their paired test stays ``sign_flip_test``: on
  differences in {-1, 0, 1} the exact sign-flip test leaves the ties (0) out and counts the
  signs of the discordant captions, which is the exact McNemar test.
- ``holm`` / ``holm_adjusted``: family-wise error control for any set of tests.
- ``ranks``: 1 + the number of cells significantly better, all pairs of a table in one Holm family.
- ``captions_for_half_width`` (a precision target) and ``captions_for_power`` (power).

Everything is numpy and the standard library, deterministic for a given seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from statistics import NormalDist

import numpy as np

from benchmark.errors import UserError

__all__ = ["ALPHA", "BINARY_METHOD", "DEFAULT_METHOD", "EXACT_MAX_N", "LEVEL", "METHODS", "PAIRED_BINARY_METHOD",
           "SMALL_SAMPLE", "Interval", "Pair", "SignFlipResult", "captions_for_half_width", "captions_for_power",
           "draws_for", "holm", "holm_adjusted", "is_binary", "mean_interval", "mean_intervals", "newcombe_interval",
           "paired_interval", "pairwise", "ranks", "sign_flip_test", "small_sample_note", "t_cdf", "t_quantile",
           "wilson_interval"]

ALPHA = 0.05
LEVEL = 1 - ALPHA
SMALL_SAMPLE = 10          # below this many captions no claim is made (small_sample_note)
RESAMPLES = 2000           # bootstrap resamples, as the project's percentile bootstrap used
SEED = 0
EXACT_MAX_N = 32           # exact sign-flip enumeration up to here: two half-enumerations of 2**16 sums
MC_RELATIVE_ERROR = 0.1    # Monte Carlo p-values: relative standard error at the smallest p that matters
DEFAULT_MIN_ALPHA = ALPHA / 100  # smallest threshold a lone test should resolve: Holm over 100 tests
ALTERNATIVES = ("two-sided", "greater", "less")
METHODS = ("bootstrap-t", "t", "bootstrap-t equal-tailed", "bca", "sign-flip")
DEFAULT_METHOD = "bootstrap-t"
BINARY_METHOD = "Wilson score"                  # values all 0/1: a proportion
PAIRED_BINARY_METHOD = "Newcombe hybrid score"  # a paired difference of two proportions
_CHUNK = 1 << 16           # rows of sign patterns per vectorised block
_NORMAL = NormalDist()


# -- Student's t, without scipy ---------------------------------------------------------------------

def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = np.finfo(float).tiny
    eps = np.finfo(float).eps
    qab, qap, qam = a + b, a + 1, a - 1
    c, d = 1.0, 1 - qab * x / qap
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1 + aa * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < eps:
            return h
    raise ArithmeticError(f"incomplete beta: no convergence for a={a}, b={b}, x={x}")


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    if df * np.finfo(float).eps >= 1:  # t's distance from the normal, O(1 / df), is below rounding
        return _NORMAL.cdf(t)
    if t * t < df:  # near the centre: the beta argument t**2 / (df + t**2) is small and exact
        half = 0.5 * _betainc(0.5, df / 2, t * t / (df + t * t))
        return 0.5 + half if t > 0 else 0.5 - half
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t > 0 else tail


def _t_pdf(t: float, df: float) -> float:
    return math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
                    - (df + 1) / 2 * math.log1p(t * t / df))


@lru_cache(maxsize=4096)
def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t: Newton's method on ``t_cdf``, kept inside a bisection bracket."""
    if not 0 < p < 1:
        raise UserError(f"t quantile: p = {p} is not in (0, 1)")
    if df <= 0:
        raise UserError(f"t quantile: {df} degrees of freedom")
    if df * np.finfo(float).eps >= 1:
        return _NORMAL.inv_cdf(p)
    if p < 0.5:
        return -t_quantile(1 - p, df)
    if p == 0.5:
        return 0.0
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, 2 * high
    t = min(max(_NORMAL.inv_cdf(p), low), high)
    eps = np.finfo(float).eps
    for _ in range(200):
        error = t_cdf(t, df) - p
        if error == 0:
            return t
        if error > 0:
            high = t
        else:
            low = t
        step = error / _t_pdf(t, df)
        if abs(step) <= 4 * eps * t:                             # converged: the next step is rounding
            return t - step
        candidate = t - step
        t = candidate if low < candidate < high else (low + high) / 2
        if high - low <= 4 * eps * high:
            return t
    return t


# -- checks -----------------------------------------------------------------------------------------------

def _finite(values: Sequence[float], what: str, at_least: int = 1) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    if x.size < at_least:
        raise UserError(f"{what}: {x.size} sample(s); at least {at_least} needed")
    if not np.all(np.isfinite(x)):
        raise UserError(f"{what}: non-finite samples (an exact match has infinite SQNR)")
    return x


def small_sample_note(n: int) -> str | None:
    """A sentence for reports when ``n`` captions are too few for a claim (n < SMALL_SAMPLE), else None.
    At such sizes intervals under-cover on this benchmark's skewed values and an exact sign-flip
    test cannot reach the small p-values a corrected family needs."""
    if n >= SMALL_SAMPLE:
        return None
    floor = min(1.0, 2 / 2 ** n) if n > 0 else 1.0
    return (f"too few captions for a claim: {n} < {SMALL_SAMPLE}; intervals under-cover at this size and the "
            f"smallest two-sided sign-flip p-value is {floor:.3g}")


# -- the sign-flip test -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SignFlipResult:
    """A sign-flip test of "mean difference 0". ``exact``: every one of the 2**n sign patterns was
    counted (``draws`` None); otherwise ``draws`` random patterns. ``resolution``: the step between
    attainable p-values; ``min_p``: the smallest p-value this test could have returned for these
    captions, whatever the data (compare it with the threshold before reading "not significant")."""

    p: float
    n: int
    exact: bool
    draws: int | None
    resolution: float
    min_p: float
    mean: float
    alternative: str

    def significant(self, alpha: float = ALPHA) -> bool:
        return self.p <= alpha


def draws_for(min_alpha: float, relative_error: float = MC_RELATIVE_ERROR) -> int:
    """Monte Carlo sign patterns so that a p-value equal to ``min_alpha`` is estimated to within
    ``relative_error`` (one standard error, sqrt((1-p) / (p draws))); the smallest attainable p,
    1 / (draws + 1), is then well below ``min_alpha``."""
    if not 0 < min_alpha < 1:
        raise UserError(f"min_alpha = {min_alpha} is not in (0, 1)")
    return math.ceil((1 - min_alpha) / (min_alpha * relative_error ** 2))


def _tie(x: np.ndarray) -> float:
    """Sums that agree to within rounding are ties (counted as extreme: conservative)."""
    return 8 * max(len(x), 1) * np.finfo(float).eps * float(np.abs(x).sum())


def _sorted_signed_sums(x: np.ndarray) -> np.ndarray:
    """All 2**len(x) sums of +-x_i, ascending: each value doubles a sorted list into two sorted
    runs (the list shifted down and up), which a stable sort merges in linear time."""
    sums = np.zeros(1)
    for value in np.abs(x):
        sums = np.sort(np.concatenate((sums - value, sums + value)), kind="stable")
    return sums


def _exact_count_at_least(x: np.ndarray, c: float) -> int:
    """#{sign patterns e: sum(e_i x_i) >= c}, counted exactly by meet in the middle: the sorted
    sums of each half, and for each sum a of the first, how many sums of the second are >= c - a."""
    half = len(x) // 2
    first, second = _sorted_signed_sums(x[:half]), _sorted_signed_sums(x[half:])
    keys = c - first[::-1]                                      # ascending: a faster search
    return len(first) * len(second) - int(np.searchsorted(second, keys, side="left").sum())


def sign_flip_test(differences: Sequence[float], alternative: str = "two-sided", draws: int | None = None,
                   seed: int = SEED, min_alpha: float = DEFAULT_MIN_ALPHA,
                   exact: bool | None = None) -> SignFlipResult:
    """Randomization test of "the mean of the paired ``differences`` is 0": under the null every
    caption's difference is as likely to have either sign, so the observed sum is compared with
    the sums of all sign flips. Exact for differences symmetric about 0 at any n, whatever
    their tails; otherwise asymptotic (skewed differences over-reject at small n and tiny
    thresholds). ``alternative``: "greater" (mean > 0), "less" or "two-sided".

    Exact when at most ``EXACT_MAX_N`` differences are non-zero (p = count / 2**n, the observed
    pattern included), else Monte Carlo with ``draws`` patterns (default ``draws_for(min_alpha)``;
    pass the smallest threshold the caller will compare with, e.g. alpha / tests for Holm) and
    p = (1 + count) / (1 + draws). ``exact`` forces one or the other. Zero differences carry no
    sign and are left out of the count (they change no sum)."""
    if alternative not in ALTERNATIVES:
        raise UserError(f"alternative {alternative!r}: one of {', '.join(ALTERNATIVES)}")
    x = _finite(differences, "sign-flip test")
    n = len(x)
    mean = float(math.fsum(x) / n)
    x = x[x != 0]
    m = len(x)
    observed = math.fsum(x)
    tie = _tie(x)
    use_exact = m <= EXACT_MAX_N if exact is None else exact
    if use_exact:
        if m > EXACT_MAX_N:
            raise UserError(f"exact sign-flip test of {m} non-zero differences: at most {EXACT_MAX_N}")
        patterns = 2 ** m
        # The null distribution is symmetric (e and -e are equally likely), so every tail is a count
        # of sums at or above a threshold.
        if alternative == "two-sided":
            c = abs(observed) - tie
            p = 1.0 if c <= 0 else min(1.0, 2 * _exact_count_at_least(x, c) / patterns)
            min_p = min(1.0, 2 / patterns)
        else:
            c = observed - tie if alternative == "greater" else -observed - tie
            p = _exact_count_at_least(x, c) / patterns
            min_p = 1 / patterns
        return SignFlipResult(p, n, True, None, 1 / patterns, min_p, mean, alternative)
    draws = draws_for(min_alpha) if draws is None else int(draws)
    if draws < 1:
        raise UserError(f"sign-flip test: {draws} draws")
    rng = np.random.default_rng(seed)
    extreme, done = 0, 0
    while done < draws:
        size = min(_CHUNK, draws - done)
        bits = np.unpackbits(rng.integers(0, 256, size=(size, (m + 7) // 8), dtype=np.uint8), axis=1, count=m)
        sums = observed - 2 * (bits.astype(float) @ x)  # each flipped difference moves the sum by -2 x_i
        if alternative == "two-sided":
            extreme += int(np.count_nonzero(np.abs(sums) >= abs(observed) - tie))
        elif alternative == "greater":
            extreme += int(np.count_nonzero(sums >= observed - tie))
        else:
            extreme += int(np.count_nonzero(sums <= observed + tie))
        done += size
    p = (1 + extreme) / (1 + draws)
    return SignFlipResult(p, n, False, draws, 1 / (1 + draws), 1 / (1 + draws), mean, alternative)


# -- multiplicity -------------------------------------------------------------------------------------------

def holm_adjusted(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979): the k-th smallest becomes the running maximum
    of (m - j + 1) p_(j), j <= k, capped at 1. Reject where adjusted <= alpha; controls the
    family-wise error rate under any dependence."""
    p = [float(v) for v in pvalues]
    if any(not 0 <= v <= 1 for v in p):
        raise UserError("Holm: p-values must lie in [0, 1]")
    m = len(p)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(sorted(range(m), key=lambda i: p[i])):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def holm(pvalues: Sequence[float], alpha: float = ALPHA) -> list[bool]:
    """Which hypotheses Holm's step-down procedure rejects at family-wise level ``alpha``."""
    return [q <= alpha for q in holm_adjusted(pvalues)]


# -- intervals ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    """A mean over captions with its confidence interval; ``method`` says how it was computed."""

    mean: float
    low: float
    high: float
    level: float
    method: str
    n: int

    @property
    def half_width(self) -> float:
        """Half the interval's width (for the asymmetric intervals of 0/1 metrics, not the distance
        from the mean to either bound: report ``low`` and ``high`` for those)."""
        return (self.high - self.low) / 2

    @property
    def symmetric(self) -> bool:
        """Whether the interval is mean -+ half_width by construction (not Wilson's nor Newcombe's)."""
        return self.method not in (BINARY_METHOD, PAIRED_BINARY_METHOD)


@lru_cache(maxsize=64)
def _resample_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """How often each caption appears in each bootstrap resample (resamples x n), fixed by the seed."""
    index = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    counts = np.zeros((resamples, n))
    np.add.at(counts, (np.repeat(np.arange(resamples), n), index.ravel()), 1)
    counts.flags.writeable = False
    return counts


@lru_cache(maxsize=64)
def _flip_sets(n: int, draws: int, seed: int) -> np.ndarray:
    """Random subsets of the captions (draws x n, 0/1), as random sign patterns pick them."""
    subsets = np.random.default_rng(seed).integers(0, 2, size=(draws, n)).astype(float)
    subsets.flags.writeable = False
    return subsets


def _order_statistic(values: np.ndarray, rank: int) -> np.ndarray:
    """The ``rank``-th smallest (1-based) of each row; -inf / +inf beyond the ends."""
    if rank < 1:
        return np.full(values.shape[0], -np.inf)
    if rank > values.shape[1]:
        return np.full(values.shape[0], np.inf)
    return np.partition(values, rank - 1, axis=1)[:, rank - 1]


def _quantile_rows(values: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row i's ``q[i]`` quantile, linear between order statistics."""
    ordered = np.sort(values, axis=1)
    position = np.clip(q, 0, 1) * (values.shape[1] - 1)
    lower = np.floor(position).astype(int)
    upper = np.minimum(lower + 1, values.shape[1] - 1)
    rows = np.arange(values.shape[0])
    return ordered[rows, lower] + (ordered[rows, upper] - ordered[rows, lower]) * (position - lower)


def _block(x: np.ndarray, level: float, method: str, resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) for each row of ``x`` (rows x n)."""
    n = x.shape[1]
    tail = (1 - level) / 2
    mean = x.mean(axis=1)
    centred = x - mean[:, None]
    sd = np.sqrt((centred ** 2).sum(axis=1) / (n - 1))
    se = sd / math.sqrt(n)
    if method == "t":
        half = t_quantile(1 - tail, n - 1) * se
        return mean - half, mean + half
    if method == "sign-flip":
        # Inverting the sign-flip test: mu is inside unless shifting the data by -mu makes the
        # one-sided p-value <= tail. With the same random patterns for every mu, the bounds are
        # order statistics of the means of the flipped subsets (Hartigan's typical values).
        subsets = _flip_sets(n, resamples, seed)
        size = subsets.sum(axis=1)
        empty = int(np.count_nonzero(size == 0))
        means = (x @ subsets[size > 0].T) / size[size > 0]
        rank = math.floor(tail * (1 + resamples) - 1 - empty) + 1  # fewest subsets at or beyond a bound
        return _order_statistic(means, rank), _order_statistic(means, means.shape[1] + 1 - rank)
    counts = _resample_counts(n, resamples, seed)
    moved = centred @ counts.T / n                               # resampled mean - mean
    if method == "bca":
        below = (np.count_nonzero(moved < 0, axis=1) + 0.5 * np.count_nonzero(moved == 0, axis=1)) / resamples
        z0 = np.array([_NORMAL.inv_cdf(v) for v in np.clip(below, 0.5 / resamples, 1 - 0.5 / resamples)])
        spread = (centred ** 2).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            accel = np.where(spread > 0, (centred ** 3).sum(axis=1) / (6 * spread ** 1.5), 0.0)
        bounds = []
        for z in (_NORMAL.inv_cdf(tail), _NORMAL.inv_cdf(1 - tail)):
            shifted = z0 + (z0 + z) / (1 - accel * (z0 + z))
            q = np.array([_NORMAL.cdf(v) for v in shifted])
            bounds.append(mean + _quantile_rows(moved, q))
        return bounds[0], bounds[1]
    second = (centred ** 2) @ counts.T / n
    resampled_se = np.sqrt(np.maximum(second - moved ** 2, 0) / (n - 1))  # sd (n - 1) / sqrt(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        studentized = moved / resampled_se
    studentized[np.isnan(studentized)] = 0.0                     # a constant resample of a constant sample
    if method == "bootstrap-t":
        rank = math.ceil(level * (resamples + 1))
        half = _order_statistic(np.abs(studentized), rank) * se
        half[se == 0] = 0.0
        return mean - half, mean + half
    if method == "bootstrap-t equal-tailed":
        low_q = _order_statistic(studentized, math.floor(tail * (resamples + 1)))
        high_q = _order_statistic(studentized, math.ceil((1 - tail) * (resamples + 1)))
        with np.errstate(invalid="ignore"):
            low, high = mean - high_q * se, mean - low_q * se
        return np.where(se == 0, mean, low), np.where(se == 0, mean, high)
    raise UserError(f"interval method {method!r}: one of {', '.join(METHODS)}")


def mean_intervals(samples: np.ndarray, level: float = LEVEL, method: str = DEFAULT_METHOD,
                   resamples: int = RESAMPLES, seed: int = SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(means, lows, highs) for each row of ``samples`` (rows x n), vectorised: what
    ``mean_interval`` computes for one row, for many at once (the coverage study)."""
    x = np.asarray(samples, dtype=float)
    if x.ndim != 2 or x.shape[1] < 2:
        raise UserError("mean intervals: a 2-D array with at least 2 samples per row")
    if not np.all(np.isfinite(x)):
        raise UserError("mean intervals: non-finite samples")
    if method not in METHODS:
        raise UserError(f"interval method {method!r}: one of {', '.join(METHODS)}")
    if not 0 < level < 1:
        raise UserError(f"level {level} is not in (0, 1)")
    step = max(1, (_CHUNK * 64) // resamples)                      # rows x resamples held at once
    lows, highs = [], []
    for start in range(0, x.shape[0], step):
        low, high = _block(x[start:start + step], level, method, resamples, seed)
        lows.append(low)
        highs.append(high)
    return x.mean(axis=1), np.concatenate(lows), np.concatenate(highs)


def is_binary(values: Sequence[float] | np.ndarray) -> bool:
    """Whether every value is exactly 0 or 1 (a per-caption pass/fail metric: a proportion)."""
    x = np.asarray(values, dtype=float).ravel()
    return x.size > 0 and bool(np.all((x == 0) | (x == 1)))


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise UserError(f"level {level} is not in (0, 1)")
    return _NORMAL.inv_cdf(1 - (1 - level) / 2)


def _wilson_bounds(successes: float, n: int, z: float) -> tuple[float, float]:
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def wilson_interval(successes: int, n: int, level: float = LEVEL) -> Interval:
    """Wilson's score interval of a proportion ``successes / n`` (Wilson 1927): the p whose score
    test, |p_hat - p| / sqrt(p (1 - p) / n) <= z, accepts, i.e. the roots of a quadratic in p.
    Asymmetric, inside [0, 1], and of non-zero width at 0 and n successes (where the Wald and the
    bootstrap intervals collapse); its coverage stays near the nominal level at small n
    (Brown, Cai & DasGupta 2001)."""
    if n < 1 or not 0 <= successes <= n or successes != int(successes):
        raise UserError(f"Wilson interval: {successes} successes of {n}")
    low, high = _wilson_bounds(float(successes), int(n), _z(level))
    return Interval(successes / n, low, high, level, BINARY_METHOD, int(n))


def newcombe_interval(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Interval:
    """The interval of mean(a) - mean(b) for 0/1 values ``a[i]``, ``b[i]`` of the same captions:
    Newcombe's hybrid score interval for paired proportions (Newcombe 1998, method 10). With the
    Wilson intervals (l1, u1) of p1 = mean(a) and (l2, u2) of p2 = mean(b), and phi the correlation
    of the pairs' 2 x 2 table with Newcombe's correction (cells both, only_a, only_b, neither: B =
    both * neither - only_a * only_b, C = B - n/2 when B > n/2, 0 when 0 <= B <= n/2, B when B < 0;
    phi = C / sqrt(product of the margins), 0 when a margin is empty), D = p1 - p2 lies in
    [D - sqrt((p1-l1)^2 - 2 phi (p1-l1)(u2-p2) + (u2-p2)^2), D + sqrt((u1-p1)^2 - 2 phi (u1-p1)(p2-l2) + (p2-l2)^2)].
    """
    x, y = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if len(x) != len(y) or not (is_binary(x) and is_binary(y)):
        raise UserError("Newcombe interval: two series of 0/1 values over the same captions")
    n, z = len(x), _z(level)
    both, only_a = float(np.sum((x == 1) & (y == 1))), float(np.sum((x == 1) & (y == 0)))
    only_b, neither = float(np.sum((x == 0) & (y == 1))), float(np.sum((x == 0) & (y == 0)))
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    l1, u1 = _wilson_bounds(both + only_a, n, z)
    l2, u2 = _wilson_bounds(both + only_b, n, z)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    association = both * neither - only_a * only_b
    corrected = association - n / 2 if association > n / 2 else min(association, 0.0)
    phi = corrected / math.sqrt(margins) if margins > 0 else 0.0
    d = p1 - p2
    below = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    above = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return Interval(float(math.fsum(x - y) / n), max(-1.0, d - below), min(1.0, d + above), level,
                    PAIRED_BINARY_METHOD, n)


def mean_interval(values: Sequence[float], level: float = LEVEL, method: str | None = None) -> Interval:
    """The mean of ``values`` (one cell's captions, or paired differences) with its interval.

    ``method`` None: Wilson's score interval (``wilson_interval``) when every value is 0 or 1 (a
    proportion), else ``DEFAULT_METHOD``. The default: the symmetric bootstrap-t, mean -+ q se with q
    the ``level`` quantile of |resampled mean - mean| / resampled se over 2000 resamples (seed 0,
    so the same numbers every time). Studentizing lets the interval widen when a resample shows the
    tails the sample hints at, which the percentile bootstrap cannot; symmetry keeps it stable at
    small n. scripts/coverage.py measures every method on this project's data. A paired difference
    of two 0/1 metrics needs both series: ``paired_interval``."""
    x = _finite(values, "interval", at_least=2)
    if method is None and is_binary(x):
        return wilson_interval(int(x.sum()), len(x), level)
    method = DEFAULT_METHOD if method is None else method
    _, low, high = mean_intervals(x[None, :], level, method)
    return Interval(float(math.fsum(x) / len(x)), float(low[0]), float(high[0]), level, method, len(x))


def paired_interval(a: Sequence[float], b: Sequence[float], level: float = LEVEL,
                    method: str | None = None) -> Interval:
    """The interval of mean(a - b) over the same captions (a[i] and b[i] score caption i):
    ``newcombe_interval`` when both are 0/1 (and ``method`` None), else ``mean_interval`` of the
    differences."""
    a, b = _finite(a, "paired interval"), _finite(b, "paired interval")
    if len(a) != len(b):
        raise UserError(f"paired interval: {len(a)} and {len(b)} samples; pairs need the same captions")
    if method is None and is_binary(a) and is_binary(b):
        return newcombe_interval(a, b, level)
    return mean_interval(a - b, level, DEFAULT_METHOD if method is None else method)


# -- ranks ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pair:
    """Two cells of one table over the same captions: mean(a - b), the sign-flip p-value, the
    Holm-adjusted p-value within the table's family of all pairs, and the verdict."""

    a: str
    b: str
    difference: float
    p: float
    p_holm: float
    significant: bool


def pairwise(cells: Mapping[str, Sequence[float]], alpha: float = ALPHA, seed: int = SEED) -> list[Pair]:
    """Every pair of cells, two-sided sign-flip tests, Holm over all pairs of the table."""
    labels = list(cells)
    values = {label: _finite(cells[label], f"cell {label}") for label in labels}
    if len({len(v) for v in values.values()}) > 1:
        raise UserError("pairwise: the cells scored different numbers of captions; pairs need the same captions")
    pairs = list(combinations(labels, 2))
    min_alpha = alpha / max(1, len(pairs))                     # Holm's smallest threshold
    tests = [sign_flip_test(values[a] - values[b], seed=seed, min_alpha=min_alpha) for a, b in pairs]
    adjusted = holm_adjusted([t.p for t in tests])
    return [Pair(a, b, t.mean, t.p, q, q <= alpha) for (a, b), t, q in zip(pairs, tests, adjusted, strict=True)]


def ranks(cells: Mapping[str, Sequence[float]], higher_is_better: bool = True, alpha: float = ALPHA) -> dict[str, int]:
    """label -> 1 + the number of other cells significantly better (Holm over all pairs of the
    table, family-wise ``alpha``). Cells that no test separates share a rank."""
    better = {label: 0 for label in cells}
    for pair in pairwise(cells, alpha):
        if pair.significant and pair.difference != 0:
            a_wins = (pair.difference > 0) == higher_is_better
            better[pair.b if a_wins else pair.a] += 1
    return {label: 1 + count for label, count in better.items()}


# -- sample sizes ---------------------------------------------------------------------------------------------

def _sd(values_or_sd: Sequence[float] | float) -> float:
    if isinstance(values_or_sd, (int, float)):
        sd = float(values_or_sd)
    else:
        x = _finite(values_or_sd, "standard deviation", at_least=2)
        sd = float(np.std(x, ddof=1))
    if not (math.isfinite(sd) and sd >= 0):
        raise UserError(f"standard deviation {sd}")
    return sd


def _smallest_n(ok, guess: int) -> int:
    """The smallest n >= 2 with ok(n), for ok false and then true as n grows, walking from ``guess``
    (the normal approximation, a few captions off at most)."""
    n = max(2, guess)
    if ok(n):
        while n > 2 and ok(n - 1):
            n -= 1
        return n
    while not ok(n):
        n += 1
    return n


def captions_for_half_width(values_or_sd: Sequence[float] | float, target: float, level: float = LEVEL) -> int | None:
    """A PRECISION target, not power: the fewest captions for which a t-interval of the mean
    (from the per-caption ``values``, or a standard deviation) is +-``target`` wide. A study sized
    this way has only about even odds of calling an effect of size ``target`` significant; use
    ``captions_for_power`` for that. None when the values do not vary (any n gives width 0)."""
    if not target > 0:
        raise UserError(f"target half-width {target}: must be > 0")
    sd = _sd(values_or_sd)
    if sd == 0:
        return None
    tail = (1 - level) / 2
    guess = math.ceil((_NORMAL.inv_cdf(1 - tail) * sd / target) ** 2)
    return _smallest_n(lambda n: t_quantile(1 - tail, n - 1) * sd / math.sqrt(n) <= target, guess)


def captions_for_power(differences: Sequence[float], power: float = 0.8, alpha: float = ALPHA) -> int | None:
    """Captions for ``power`` to detect the observed mean difference with a two-sided paired test
    at ``alpha``, taking the observed mean and sd as the truth.

    The t-approximation: the smallest n with n >= ((t_{1-alpha/2, n-1} + t_{power, n-1}) sd / |mean|)**2
    (the normal formula with t quantiles at the n it yields, found by search rather than by
    iterating). It is within a caption of the exact noncentral-t answer for the paired t-test
    (effect size 0.5: 34), which the sign-flip test matches for large n. Never below the n at
    which an exact two-sided sign-flip test can reach ``alpha`` at all (2 / 2**n <= alpha). None
    when the mean difference is 0 (no effect to detect)."""
    if not 0 < power < 1 or not 0 < alpha < 1:
        raise UserError(f"power {power} and alpha {alpha} must lie in (0, 1)")
    x = _finite(differences, "captions for power", at_least=2)
    mean, sd = float(math.fsum(x) / len(x)), float(np.std(x, ddof=1))
    floor = max(2, math.ceil(math.log2(2 / alpha)))
    if abs(mean) <= _tie(x) / len(x):                             # 0 up to the rounding of the sum
        return None
    if sd == 0:
        return floor
    ratio = sd / abs(mean)
    guess = math.ceil(((_NORMAL.inv_cdf(1 - alpha / 2) + _NORMAL.inv_cdf(power)) * ratio) ** 2)
    n = _smallest_n(lambda n: n >= ((t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * ratio) ** 2,
                    guess)
    return max(n, floor)
