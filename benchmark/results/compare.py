"""Comparisons between the cells of one run: intervals, paired tests, significance ranks, and
how many captions a claim needs. The leaderboard, ``hadabench power``, ``hadabench compare`` and
the README's findings all read their numbers from here; the methods are those of
benchmark/results/inference.py (through ``stats``).

All cells of one precision in one run scored the same captions from the same seeds, so any
two of them pair caption by caption: a two-sided sign-flip test of every pair, with Holm's
correction over all the pairs of the precision (one family per precision and metric).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from benchmark.errors import UserError
from benchmark.metrics.registry import MetricSpec
from benchmark.results import inference
from benchmark.results.schema import OK, cell_key, metric_value
from benchmark.results.stats import (
    ALPHA,
    Interval,
    captions_for_half_width,
    captions_for_power,
    holm_adjusted,
    mean_interval,
    paired_interval,
    paired_test,
)

__all__ = ["Ranked", "cell_samples", "compare_runs", "pairwise", "power_rows", "rank_cells"]


def cell_samples(cell: dict, key: str) -> list[float] | None:
    """A cell's per-caption values of one metric, or None (failed, not computed, not finite)."""
    if cell.get("status") != OK:
        return None
    values = (cell.get("per_sample") or {}).get(key)
    if not isinstance(values, list) or not values:
        return None
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    return values if all(math.isfinite(v) for v in values) else None


@dataclass
class Ranked:
    """One cell's standing in its precision for one metric."""

    cell: dict
    interval: Interval | None
    rank: int | None                    # 1 + how many cells are significantly better (Holm)
    tied_with_best: bool                # not significantly worse than the best cell (Holm)
    versus_best: inference.Pair | None  # this cell's pair with the best one: best - this cell
    tests: int = 0                      # the Holm family: all pairs of the precision's cells


def _interval(values: list[float] | None) -> Interval | None:
    return mean_interval(values) if values is not None and len(values) >= 2 else None


def rank_cells(cells: list[dict], spec: MetricSpec, alpha: float = ALPHA) -> list[Ranked]:
    """The cells (of one precision) with intervals and significance ranks: two-sided sign-flip
    tests of every pair, Holm's correction over all the pairs at family-wise ``alpha``."""
    samples = [cell_samples(c, spec.key) for c in cells]
    intervals = [_interval(s) for s in samples]
    sign = 1 if spec.higher_is_better else -1
    scored = [i for i, interval in enumerate(intervals) if interval is not None]
    best = max(scored, key=lambda i: sign * intervals[i].mean) if scored else None
    tests = pairwise([samples[i] for i in scored], alpha) if len(scored) > 1 else {}
    family = len(scored) * (len(scored) - 1) // 2
    # Cells without per-caption values (older files) can only be ranked by their means.
    means = [metric_value(c.get("metrics", {}).get(spec.key)) if c.get("status") == OK else None for c in cells]
    known = [sign * m for m in means if m is not None]
    out = []
    for index, cell in enumerate(cells):
        if index not in scored:
            tied = not scored and means[index] is not None and sign * means[index] == max(known)
            out.append(Ranked(cell, None, None, tied, None, family))
            continue
        position = scored.index(index)
        better = sum(1 for other in range(len(scored)) if other != position
                     and tests[other, position].significant and sign * tests[other, position].difference > 0)
        versus = None if index == best else tests[scored.index(best), position]
        tied = index == best or not (versus.significant and sign * versus.difference > 0)
        out.append(Ranked(cell, intervals[index], 1 + better, tied, versus, family))
    return out


def pairwise(samples: list[list[float]], alpha: float = ALPHA) -> dict[tuple[int, int], inference.Pair]:
    """``(i, j) -> `` the pair ``samples[i] - samples[j]`` for every ordered pair i != j: two-sided
    sign-flip tests (inference.pairwise), Holm's correction over the n (n - 1) / 2 pairs, one family."""
    tests = {}
    for pair in inference.pairwise({str(i): values for i, values in enumerate(samples)}, alpha):
        i, j = int(pair.a), int(pair.b)
        tests[i, j] = pair
        tests[j, i] = replace(pair, a=pair.b, b=pair.a, difference=-pair.difference)
    return tests


def power_rows(results: dict, spec: MetricSpec, target: float, power: float = 0.8,
               alpha: float = ALPHA) -> list[dict]:
    """For every cell and every pair of cells of each precision: the mean with its interval's
    half-width at this run's number of captions and the captions for a ±``target`` half-width
    (``for_half_width``: a precision target, not power); for the pairs also the two-sided
    sign-flip p-value, its Holm adjustment over the precision's pairs and the verdict, and the
    captions for ``power`` to detect the observed difference at Holm's strictest threshold
    alpha / pairs (``for_power``, ``power_alpha``)."""
    rows = []
    for precision in results["config"]["precisions"]:
        prefix = cell_key(precision, "")
        # a cell's name is its key without the precision: the label, and a study's role or block
        # subset after it ("affine [roles=ffn_up]"), so that a sensitivity study's cells are told apart
        cells = [(key[len(prefix):] if key.startswith(prefix) else c["label"], c)
                 for key, c in results["cells"].items() if c.get("precision") == precision]
        usable = [(name, cell_samples(c, spec.key)) for name, c in cells]
        usable = [(label, s) for label, s in usable if s is not None and len(s) >= 2]
        for label, values in usable:
            interval = mean_interval(values)
            rows.append({"precision": precision, "comparison": label, "mean": interval.mean, "interval": interval,
                         "half_width": interval.half_width, "captions": interval.n,
                         "for_half_width": captions_for_half_width(values, target)})
        tests = pairwise([s for _, s in usable], alpha) if len(usable) > 1 else {}
        family = len(usable) * (len(usable) - 1) // 2
        for i in range(len(usable)):
            for j in range(i + 1, len(usable)):
                differences = np.asarray(usable[i][1]) - np.asarray(usable[j][1])
                interval, pair = paired_interval(usable[i][1], usable[j][1]), tests[i, j]
                rows.append({"precision": precision, "comparison": f"{usable[i][0]} − {usable[j][0]}",
                             "mean": interval.mean, "interval": interval, "half_width": interval.half_width,
                             "captions": interval.n,
                             "for_half_width": captions_for_half_width(differences, target),
                             "for_power": captions_for_power(differences, power, alpha / family),
                             "power_alpha": alpha / family, "tests": family, "p_value": pair.p,
                             "p_holm": pair.p_holm,
                             "verdict": "significant (Holm)" if pair.significant else "not significant"})
    return rows


def compare_runs(a: dict, b: dict, spec: MetricSpec, alpha: float = ALPHA) -> list[dict]:
    """Cell by cell, ``b - a`` for two runs of the same evaluation captions and seeds (another
    grid, kernel, numerics or code): the paired difference with its interval, the two-sided
    sign-flip p-value (exact up to 32 captions), its Holm adjustment over all the cells compared,
    and the verdict at family-wise ``alpha``."""
    captions = [doc.get("captions", {}).get("evaluation", {}).get("ids") for doc in (a, b)]
    seeds = [doc.get("config", {}).get("seed") for doc in (a, b)]
    if captions[0] is None or captions[0] != captions[1] or seeds[0] != seeds[1]:
        raise UserError("the two runs did not score the same evaluation captions from the same seeds: "
                         "a paired comparison needs them")
    pending = []
    for key, cell_a in a["cells"].items():
        ours, theirs = cell_samples(cell_a, spec.key), cell_samples(b["cells"].get(key) or {}, spec.key)
        if ours is not None and theirs is not None:
            pending.append((key, ours, theirs))
    tests = [paired_test(theirs, ours, tests=len(pending), alpha=alpha) for _, ours, theirs in pending]
    adjusted = holm_adjusted([t.p_value for t in tests])
    rows = []
    for (key, ours, theirs), test, q in zip(pending, tests, adjusted, strict=True):
        better = (test.difference.mean > 0) == spec.higher_is_better
        rows.append({"cell": key, "a": math.fsum(ours) / len(ours), "b": math.fsum(theirs) / len(theirs),
                     "difference": test.difference, "captions": len(ours), "p_value": test.p_value,
                     "exact": test.test.exact, "p_holm": q, "tests": len(pending),
                     "verdict": ("better" if better else "worse") if q <= alpha else "not significant"})
    return rows
