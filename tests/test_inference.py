"""benchmark.results.inference: the sign-flip test against brute force, Holm by hand, the interval's
coverage on a heavy-tailed simulation, sample sizes against textbook values, and Student's t
against closed forms."""

import itertools
import math

import numpy as np
import pytest

from benchmark.results import inference
from benchmark.results.inference import (
    SMALL_SAMPLE,
    captions_for_half_width,
    captions_for_power,
    draws_for,
    holm,
    holm_adjusted,
    mean_interval,
    mean_intervals,
    pairwise,
    ranks,
    sign_flip_test,
    small_sample_note,
    t_cdf,
    t_quantile,
)


def brute_force(x, alternative):
    """The sign-flip p-value by listing every sign pattern (itertools)."""
    x = np.asarray(x, dtype=float)
    observed = x.sum()
    sums = np.array([np.dot(signs, x) for signs in itertools.product((1, -1), repeat=len(x))])
    tie = 1e-9
    if alternative == "two-sided":
        extreme = np.abs(sums) >= abs(observed) - tie
    elif alternative == "greater":
        extreme = sums >= observed - tie
    else:
        extreme = sums <= observed + tie
    return extreme.sum() / len(sums)


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_exact_enumeration_equals_brute_force_at_n_6(alternative):
    rng = np.random.default_rng(1)
    samples = [rng.normal(0.4, 1, 6), [0.5, -0.5, 1.0, 1.0, 0.0, 2.0],  # ties and a zero
               [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0.0] * 6]
    for x in samples:
        result = sign_flip_test(x, alternative)
        assert result.exact and result.draws is None
        assert result.p == brute_force(x, alternative)


def test_monte_carlo_p_is_close_to_exact_at_n_12():
    x = np.random.default_rng(2).normal(0.5, 1, 12)
    exact = sign_flip_test(x)
    draws = 20_000
    estimate = sign_flip_test(x, draws=draws, exact=False)
    assert exact.exact and not estimate.exact and estimate.draws == draws
    assert abs(estimate.p - exact.p) < 4 * math.sqrt(exact.p * (1 - exact.p) / draws)
    assert sign_flip_test(x, draws=draws, exact=False) == estimate  # seeded


def test_resolution_and_smallest_p():
    n = 10
    exact = sign_flip_test(np.arange(1.0, n + 1))                  # every difference positive: the extreme
    assert exact.resolution == 1 / 2 ** n and exact.min_p == 2 / 2 ** n and exact.p == exact.min_p
    one_sided = sign_flip_test(np.arange(1.0, n + 1), "greater")
    assert one_sided.min_p == 1 / 2 ** n and one_sided.p == one_sided.min_p
    with_zero = sign_flip_test([0.0] + list(range(1, n)))          # a zero carries no sign
    assert with_zero.min_p == 2 / 2 ** (n - 1) and with_zero.n == n
    draws = 999
    monte_carlo = sign_flip_test(np.arange(1.0, 41.0), draws=draws)  # n = 40 > EXACT_MAX_N
    assert not monte_carlo.exact
    assert monte_carlo.resolution == monte_carlo.min_p == monte_carlo.p == 1 / (draws + 1)
    for min_alpha in (0.05, 0.05 / 104, 1e-6):
        d = draws_for(min_alpha)
        assert 1 / (d + 1) < min_alpha
        assert math.sqrt((1 - min_alpha) / (min_alpha * d)) <= inference.MC_RELATIVE_ERROR
    assert sign_flip_test(np.arange(1.0, 41.0)).draws == draws_for(inference.DEFAULT_MIN_ALPHA)
    assert sign_flip_test([0.0] * 5).p == 1.0
    with pytest.raises(ValueError):
        sign_flip_test(np.arange(1.0, 41.0), exact=True)           # 2**40 patterns: not enumerated


def test_a_one_db_shift_on_32_captions_survives_a_family_of_55():
    rng = np.random.default_rng(3)
    difficulty = rng.normal(15, 4, 32)                             # shared by both cells
    a = difficulty + 1.0 + rng.normal(0, 1 / math.sqrt(2), 32)
    b = difficulty + rng.normal(0, 1 / math.sqrt(2), 32)           # per-caption differences: sd ~1 dB
    result = sign_flip_test(a - b)
    assert result.exact and result.p < 0.05 / 55
    assert result.min_p < 0.05 / 55                                 # the floor is far below Holm's threshold


def test_holm_by_hand():
    # sorted: 0.005 x 4 = 0.02 <= 0.05 reject; 0.01 x 3 = 0.03 reject; 0.03 x 2 = 0.06 stop.
    p = [0.01, 0.04, 0.03, 0.005]
    assert holm_adjusted(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm(p) == [True, False, False, True]
    assert holm(p, alpha=0.1) == [True, True, True, True]           # 0.06 <= 0.1: all four
    assert holm([0.5, 0.2]) == [False, False] and holm([]) == []
    assert holm_adjusted([0.3, 0.2]) == pytest.approx([0.4, 0.4])  # 0.2 x 2, then max(0.4, 0.3 x 1)
    assert holm_adjusted([0.9, 0.6]) == [1.0, 1.0]                  # capped at 1
    with pytest.raises(ValueError):
        holm([1.5])


def test_interval_coverage_on_heavy_tails_beats_the_percentile_bootstrap():
    """t with 3 df, n = 16, 400 samples. The percentile bootstrap's true coverage here is ~91%, the
    chosen method's ~97%: a paired gap of 2.5 points is >2 standard errors inside both. (A z-interval
    with n in place of n - 1 is not reliably distinguishable at this size and is not tested.)"""
    rng = np.random.default_rng(4)
    samples = rng.standard_t(3, size=(400, 16))
    _, low, high = mean_intervals(samples)
    covered = (low <= 0) & (high >= 0)
    counts = inference._resample_counts(16, inference.RESAMPLES, inference.SEED)
    means = samples @ counts.T / 16
    p_low, p_high = np.quantile(means, [0.025, 0.975], axis=1)
    percentile = (p_low <= 0) & (p_high >= 0)
    assert 0.93 <= covered.mean() <= 0.995
    assert covered.mean() - percentile.mean() >= 0.025


def test_mean_interval_basics():
    x = list(np.random.default_rng(5).normal(10, 3, 32))
    interval = mean_interval(x)
    assert interval.low < interval.mean < interval.high and interval.n == 32
    assert interval.method == inference.DEFAULT_METHOD and interval.level == inference.LEVEL
    assert mean_interval(x) == interval                             # deterministic
    assert mean_interval([5.0] * 8).half_width == 0
    for method in inference.METHODS:
        other = mean_interval(x, method=method)
        assert other.low < other.mean < other.high, method
    t = mean_interval(x, method="t")
    sd = np.std(x, ddof=1)
    assert t.half_width == pytest.approx(t_quantile(0.975, 31) * sd / math.sqrt(32))
    with pytest.raises(ValueError):
        mean_interval([1.0])
    with pytest.raises(ValueError):
        mean_interval([1.0, float("inf")])


def test_ranks_are_holm_corrected_over_all_pairs():
    rng = np.random.default_rng(6)
    difficulty = rng.normal(15, 5, 32)
    cells = {"better": difficulty + 1 + rng.normal(0, 0.3, 32), "b": difficulty + rng.normal(0, 0.3, 32),
             "c": difficulty + rng.normal(0, 0.3, 32)}
    assert ranks(cells) == {"better": 1, "b": 2, "c": 2}
    assert ranks(cells, higher_is_better=False) == {"better": 3, "b": 1, "c": 1}
    pairs = pairwise(cells)
    assert len(pairs) == 3 and all(p.p_holm >= p.p for p in pairs)
    assert ranks({"only": [1.0, 2.0]}) == {"only": 1}
    with pytest.raises(ValueError):
        ranks({"a": [1.0, 2.0], "b": [1.0]})


def test_captions_for_power_matches_the_textbook():
    z = np.random.default_rng(7).normal(0, 1, 40)
    z = (z - z.mean()) / z.std(ddof=1)                              # sd exactly 1
    assert captions_for_power(z + 0.5) == 34                       # paired t, d = 0.5, 80%, two-sided 0.05
    assert captions_for_power(z + 0.5, power=0.9) > 34
    assert captions_for_power(z) is None                           # no difference to detect
    assert captions_for_power([1.0, 1.0, 1.0]) == math.ceil(math.log2(2 / 0.05))  # the sign-flip floor


def test_captions_for_half_width_is_a_precision_target():
    n = captions_for_half_width(1.0, 0.5)
    half = lambda k: t_quantile(0.975, k - 1) / math.sqrt(k)  # noqa: E731
    assert half(n) <= 0.5 < half(n - 1)
    x = np.random.default_rng(8).normal(0, 2, 32)
    assert captions_for_half_width(x, 0.5) == captions_for_half_width(float(np.std(x, ddof=1)), 0.5)
    assert captions_for_half_width([3.0, 3.0], 0.1) is None


def test_small_sample_note():
    assert "too few captions for a claim" in small_sample_note(SMALL_SAMPLE - 2)
    assert small_sample_note(SMALL_SAMPLE) is None


def test_student_t_against_closed_forms():
    for p in (0.6, 0.8, 0.975, 0.999):
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-10)       # Cauchy
        assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-10)
        assert t_quantile(1 - p, 7) == -t_quantile(p, 7)
        for df in (3, 12.5, 31, 1000):
            assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-12)
    assert t_quantile(0.975, 10_000) == pytest.approx(t_quantile(0.975, math.inf), rel=1e-3)


def test_student_t_against_scipy_where_installed():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2.5, 5, 31, 200):
        for p in (0.55, 0.9, 0.975, 0.9995):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)


# -- 0/1 metrics: Wilson's interval, Newcombe's paired interval, the McNemar test -------------------------

def _textbook_wilson(k: int, n: int, z: float) -> tuple[float, float]:
    """Wilson (1927) as textbooks write it: (p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)."""
    p = k / n
    centre, spread = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n), (centre + spread) / (1 + z * z / n)


@pytest.mark.parametrize(("k", "n"), [(0, 8), (1, 8), (31, 32), (32, 32), (16, 32), (60, 128), (127, 128)])
def test_wilson_interval_matches_the_textbook_formula_and_scipy(k, n):
    z = 1.959963984540054  # the 0.975 normal quantile
    interval = inference.mean_interval([1.0] * k + [0.0] * (n - k))
    assert interval.method == inference.BINARY_METHOD and not interval.symmetric
    assert interval.mean == k / n and interval.n == n
    low, high = _textbook_wilson(k, n, z)
    assert interval.low == pytest.approx(max(low, 0.0), abs=1e-12)
    assert interval.high == pytest.approx(min(high, 1.0), abs=1e-12)
    assert 0 <= interval.low <= interval.mean <= interval.high <= 1
    stats = pytest.importorskip("scipy.stats")
    reference = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert (interval.low, interval.high) == pytest.approx((reference.low, reference.high), abs=1e-12)


def test_wilson_replaces_the_unbounded_bootstrap_t_on_one_failure():
    values = [1.0] * 31 + [0.0]
    bootstrap = inference.mean_interval(values, method=inference.DEFAULT_METHOD)
    assert not math.isfinite(bootstrap.half_width)  # the leaderboard's former "± ∞"
    wilson = inference.mean_interval(values)
    assert math.isfinite(wilson.half_width) and wilson.high < 1
    everything = inference.mean_interval([1.0] * 32)  # the bootstrap's "± 0.000"
    assert everything.high == 1 and everything.low == pytest.approx(_textbook_wilson(32, 32, 1.959963984540054)[0])
    # values that are not all 0/1 keep the bootstrap-t
    assert inference.mean_interval([1.0] * 31 + [0.5]).method == inference.DEFAULT_METHOD


def _textbook_newcombe(a: int, b: int, c: int, d: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Newcombe (1998) method 10, written from the paper (and Altman et al., Statistics with
    Confidence, 2000, p. 52): a = both 1, b = first only, c = second only, d = neither."""
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = _textbook_wilson(a + b, n, z)
    l2, u2 = _textbook_wilson(a + c, n, z)
    big_a = (a + b) * (c + d) * (a + c) * (b + d)
    big_b = a * d - b * c
    big_c = big_b - n / 2 if big_b > n / 2 else (big_b if big_b < 0 else 0)
    phi = big_c / math.sqrt(big_a) if big_a > 0 else 0.0
    delta = math.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    epsilon = math.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
    return p1 - p2 - delta, p1 - p2 + epsilon


@pytest.mark.parametrize("table", [(36, 12, 2, 6), (30, 1, 0, 1), (31, 0, 1, 0), (20, 5, 5, 2), (10, 0, 0, 22),
                                   (0, 3, 9, 20)])
def test_newcombe_paired_interval_matches_the_paper(table):
    both, only_a, only_b, neither = table
    a = [1.0] * both + [1.0] * only_a + [0.0] * only_b + [0.0] * neither
    b = [1.0] * both + [0.0] * only_a + [1.0] * only_b + [0.0] * neither
    interval = inference.paired_interval(a, b)
    assert interval.method == inference.PAIRED_BINARY_METHOD
    assert interval.mean == pytest.approx((only_a - only_b) / len(a))
    low, high = _textbook_newcombe(*table)
    assert (interval.low, interval.high) == pytest.approx((max(low, -1), min(high, 1)), abs=1e-12)
    assert interval.low <= interval.mean <= interval.high
    # the stats layer gives the same interval to paired_test (compare, findings) and power
    from benchmark.results import stats
    assert stats.paired_test(a, b).difference == interval


def test_sign_flip_on_binary_differences_is_the_exact_mcnemar_test():
    stats = pytest.importorskip("scipy.stats")
    a = [1.0] * 20 + [1.0] * 7 + [0.0] * 1 + [0.0] * 4
    b = [1.0] * 20 + [0.0] * 7 + [1.0] * 1 + [0.0] * 4
    test = inference.sign_flip_test(np.subtract(a, b))
    assert test.exact
    assert test.p == pytest.approx(stats.binomtest(7, 8, 0.5).pvalue, rel=1e-12)  # exact McNemar: 7 of 8 discordant


def test_binary_intervals_reach_every_consumer():
    from benchmark.metrics.registry import metric_spec
    from benchmark.reports.leaderboard import _with_interval
    from benchmark.results.compare import power_rows, rank_cells
    from benchmark.results.stats import interval_json

    spec = metric_spec("caption_accuracy")
    values = {"x": [1.0] * 31 + [0.0], "y": [1.0] * 28 + [0.0] * 4}
    cells = [{"label": k, "precision": "w4a4", "status": "ok", "per_sample": {spec.key: v},
              "metrics": {spec.key: {"value": float(np.mean(v))}}} for k, v in values.items()]
    ranked = rank_cells(cells, spec)
    assert [r.interval.method for r in ranked] == [inference.BINARY_METHOD] * 2
    assert _with_interval(spec, ranked[0].interval.mean, ranked[0].interval) == "0.969 [0.843, 0.994]"
    recorded = interval_json(values["x"])
    assert recorded["method"] == inference.BINARY_METHOD and recorded["low"] == pytest.approx(0.8425573617998745)
    from benchmark.results.stats import recorded_spread
    from benchmark.run.cells import summary
    assert recorded_spread({"interval": recorded}) == " [0.843, 0.994]"  # the run's line and the full-precision row
    line = summary("w4a4/x", {"status": "ok", "metrics": {spec.key: {"value": 31 / 32, "interval": recorded}},
                              "timings": {}})
    assert "caption_accuracy 0.969 [0.843, 0.994]" in line
    rows = power_rows({"config": {"precisions": ["w4a4"]}, "cells": {c["label"]: c for c in cells}}, spec, 0.05)
    pair = next(r for r in rows if "−" in r["comparison"])
    expected = inference.newcombe_interval(values["x"], values["y"])
    assert pair["half_width"] == pytest.approx(expected.half_width)
