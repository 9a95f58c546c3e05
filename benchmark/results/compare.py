"""Comparisons between the cells of one run: intervals, paired tests, significance ranks, and
how many captions a claim needs. The leaderboard, ``hadabench power`` and the README's
findings all read their numbers from here.

All cells of one precision in one run scored the same captions from the same seeds, so any
two of them pair caption by caption (``stats.paired_test``).
"""

from __future__ import annotations

from benchmark.errors import UserError

import math
from dataclasses import dataclass

from benchmark.metrics.registry import MetricSpec
from benchmark.results.schema import OK, metric_value
from benchmark.results.stats import Interval, PairedTest, captions_needed, mean_interval, paired_test

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
    rank: int | None              # 1 + how many cells are significantly better
    tied_with_best: bool          # not significantly worse than the best cell
    versus_best: PairedTest | None


def rank_cells(cells: list[dict], spec: MetricSpec) -> list[Ranked]:
    """The cells (of one precision) with intervals and paired-bootstrap significance ranks."""
    samples = [cell_samples(c, spec.key) for c in cells]
    intervals = [mean_interval(s) if s is not None else None for s in samples]
    sign = 1 if spec.higher_is_better else -1
    scored = [i for i, interval in enumerate(intervals) if interval is not None]
    best = max(scored, key=lambda i: sign * intervals[i].mean) if scored else None
    tests = pairwise([samples[i] for i in scored]) if scored else {}
    # Cells without per-caption values (older files) can only be ranked by their means.
    means = [metric_value(c.get("metrics", {}).get(spec.key)) if c.get("status") == OK else None for c in cells]
    known = [sign * m for m in means if m is not None]
    out = []
    for index, cell in enumerate(cells):
        if index not in scored:
            tied = not scored and means[index] is not None and sign * means[index] == max(known)
            out.append(Ranked(cell, None, None, tied, None))
            continue
        position = scored.index(index)
        better = sum(1 for other in range(len(scored)) if other != position
                     and tests[other, position].significant
                     and sign * tests[other, position].difference.mean > 0)
        versus = None if index == best else tests[scored.index(best), position]
        tied = index == best or not (versus.significant and sign * versus.difference.mean > 0)
        out.append(Ranked(cell, intervals[index], 1 + better, tied, versus))
    return out


def pairwise(samples: list[list[float]]) -> dict[tuple[int, int], PairedTest]:
    """``(i, j) -> paired_test(samples[i], samples[j])`` for every ordered pair i != j."""
    tests = {}
    for i in range(len(samples)):
        for j in range(i + 1, len(samples)):
            test = paired_test(samples[i], samples[j])
            tests[i, j] = test
            flipped = Interval(-test.difference.mean, -test.difference.high, -test.difference.low,
                               test.difference.samples)
            tests[j, i] = PairedTest(flipped, test.p_value, test.significant)
    return tests


def power_rows(results: dict, spec: MetricSpec, target: float) -> list[dict]:
    """For every cell and every pair of cells of each precision: the interval's half-width at
    this run's number of captions, and the captions needed for +-``target``."""
    rows = []
    for precision in results["config"]["precisions"]:
        cells = [c for c in results["cells"].values() if c.get("precision") == precision]
        usable = [(c["label"], cell_samples(c, spec.key)) for c in cells]
        usable = [(label, s) for label, s in usable if s is not None]
        for label, values in usable:
            interval = mean_interval(values)
            rows.append({"precision": precision, "comparison": label, "mean": interval.mean,
                         "half_width": interval.half_width, "captions": interval.samples,
                         "needed": captions_needed(interval, target)})
        tests = pairwise([s for _, s in usable])
        for i in range(len(usable)):
            for j in range(i + 1, len(usable)):
                test = tests[i, j]
                rows.append({"precision": precision, "comparison": f"{usable[i][0]} − {usable[j][0]}",
                             "mean": test.difference.mean, "half_width": test.difference.half_width,
                             "captions": test.difference.samples,
                             "needed": captions_needed(test.difference, target),
                             "verdict": test.verdict(spec.higher_is_better)})
    return rows


def compare_runs(a: dict, b: dict, spec: MetricSpec) -> list[dict]:
    """Cell by cell, ``b - a`` for two runs of the same evaluation captions and seeds (another
    grid, kernel, numerics or code): the paired difference with its interval and verdict."""
    captions = [doc.get("captions", {}).get("evaluation", {}).get("ids") for doc in (a, b)]
    seeds = [doc.get("config", {}).get("seed") for doc in (a, b)]
    if captions[0] is None or captions[0] != captions[1] or seeds[0] != seeds[1]:
        raise UserError("the two runs did not score the same evaluation captions from the same seeds: "
                         "a paired comparison needs them")
    rows = []
    for key, cell_a in a["cells"].items():
        cell_b = b["cells"].get(key)
        ours, theirs = cell_samples(cell_a, spec.key), cell_samples(cell_b or {}, spec.key)
        if ours is None or theirs is None:
            continue
        test = paired_test(theirs, ours)
        rows.append({"cell": key, "a": mean_interval(ours).mean, "b": mean_interval(theirs).mean,
                     "difference": test.difference, "p_value": test.p_value,
                     "verdict": test.verdict(spec.higher_is_better)})
    return rows
