"""The one list of the numbers a cell reports: what each is called, how it is shown, which
way is better, and how far the regression gate lets it move.

Read by scoring (which metrics a ``--metrics`` name computes), the run summary, the
leaderboard and ``hadabench check``; a new metric is one line here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["METRIC_SPECS", "MetricSpec", "leaderboard_metrics", "metric_spec"]


@dataclass(frozen=True)
class MetricSpec:
    key: str                 # the key in a cell's "metrics"
    computed_by: str         # the --metrics name that computes it
    header: str              # column header
    fmt: str                 # how one value is printed
    higher_is_better: bool
    tolerance: float         # the gate, where runs reproduce bit for bit: the largest drop let through
    leaderboard: bool        # a column of the leaderboard's tables
    per_sample: bool = True  # has per-caption values (intervals and paired tests)

    def show(self, value: float | None) -> str:
        if value is None:
            return "n/a"
        if value in (float("inf"), float("-inf")):
            return "∞" if value > 0 else "-∞"
        return self.fmt.format(value)


METRIC_SPECS: dict[str, MetricSpec] = {spec.key: spec for spec in (
    MetricSpec("sqnr_db", "sqnr", "SQNR (dB)", "{:.2f}", True, 0.01, True),
    MetricSpec("sqnr_pooled_db", "sqnr", "pooled SQNR (dB)", "{:.2f}", True, 0.01, False, per_sample=False),
    MetricSpec("sqnr_image_db", "sqnr", "image SQNR (dB)", "{:.2f}", True, 0.01, False),
    MetricSpec("clip_score", "clip_score", "CLIP score", "{:.2f}", True, 0.01, True),
    MetricSpec("clip_iqa", "clip_iqa", "CLIP-IQA", "{:.3f}", True, 0.001, True),
)}


def metric_spec(key: str) -> MetricSpec:
    try:
        return METRIC_SPECS[key]
    except KeyError:
        raise ValueError(f"unknown metric {key!r}: one of {', '.join(METRIC_SPECS)}") from None


def leaderboard_metrics() -> list[MetricSpec]:
    return [spec for spec in METRIC_SPECS.values() if spec.leaderboard]
