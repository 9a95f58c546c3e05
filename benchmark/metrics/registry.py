"""The metrics, registered by name: what each ``--metrics`` name computes, how its numbers are
shown, which way is better, and how far the regression gate lets each move.

A metric is its module plus one registration: the module declares a ``Metric`` (its result keys
as ``MetricSpec``s and how to build its scorer for a run), and ``METRICS`` names it here. A
package registers more under the ``hadabench.metrics`` entry-point group, a plugin file with
``METRICS = {"name": Metric(...)}``. Scoring, the run summary, the leaderboard, ``compare``,
``power`` and ``check`` read every number's spec from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from benchmark.errors import UserError
from benchmark.metrics.base import MetricResult
from benchmark.registry import Registry

__all__ = ["METRICS", "Metric", "MetricSpec", "Scorer", "default_tolerance", "leaderboard_metrics", "metric_spec",
           "metric_specs"]


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


class Scorer(Protocol):
    """One metric's models, loaded once per run and applied to the reference and each cell."""

    def setup(self) -> dict:
        """Computed or not (``status``), why not (``reason``), backbone and weights: recorded."""

    def reference(self, images, captions) -> dict[str, MetricResult]:
        """The full-precision row's values (empty when the metric compares against it)."""

    def cell(self, reference, generation, captions) -> dict[str, MetricResult]:
        """A quantized cell's values, by result key, against the full-precision ``reference``."""


@dataclass(frozen=True)
class Metric:
    """A ``--metrics`` name: its result keys and how to build its scorer for a run
    (``build(config, device)``, ``config`` the run's ``RunConfig``)."""

    name: str
    description: str
    specs: tuple[MetricSpec, ...]
    build: Callable[[object, str], Scorer]


def _check_metric(name: str, metric) -> None:
    if not isinstance(metric, Metric):
        raise UserError(f"metric {name!r} is a {type(metric).__name__}, not a benchmark.metrics.registry.Metric")
    if metric.name != name:
        raise UserError(f"metric {name!r} declares the name {metric.name!r}")


METRICS = Registry("metric", "hadabench.metrics", {
    "sqnr": "benchmark.metrics.sqnr:METRIC",
    "clip_score": "benchmark.metrics.clip_score:METRIC",
    "clip_iqa": "benchmark.metrics.clip_iqa:METRIC",
    "psnr": "benchmark.metrics.fidelity:PSNR",
    "ssim": "benchmark.metrics.fidelity:SSIM",
    "caption_accuracy": "benchmark.metrics.caption_accuracy:METRIC",
    "lpips": "benchmark.metrics.perceptual:METRIC",
    "fid": "benchmark.metrics.fid:METRIC",
    "image_reward": "benchmark.metrics.image_reward:METRIC",
}, check=_check_metric)


def metric_specs() -> dict[str, MetricSpec]:
    """Every registered result key's spec, in registration order."""
    return {spec.key: spec for entry in METRICS.entries().values() if entry.value is not None
            for spec in entry.value.specs}


def metric_spec(key: str) -> MetricSpec:
    specs = metric_specs()
    try:
        return specs[key]
    except KeyError:
        raise UserError(f"unknown metric {key!r}: one of {', '.join(specs)}") from None


def leaderboard_metrics() -> list[MetricSpec]:
    return [spec for spec in metric_specs().values() if spec.leaderboard]


def default_tolerance() -> dict[str, float]:
    """The gate's tolerance per result key, recorded in every run so that it can serve as a baseline."""
    return {key: spec.tolerance for key, spec in metric_specs().items()}
