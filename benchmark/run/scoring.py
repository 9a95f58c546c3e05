"""The metrics of one run: each selected metric's scorer (``benchmark.metrics.registry``), its
models loaded once, applied to the full-precision reference and to each cell.

A cell's metrics are the keys of ``cell["metrics"]`` (the aggregate with its interval over
captions), their per-caption values ``cell["per_sample"]`` (for the keys whose spec has them).
"""

from __future__ import annotations

from benchmark.metrics.base import MetricResult
from benchmark.metrics.registry import METRICS, metric_specs
from benchmark.results.stats import interval_json

__all__ = ["Scorers"]


def _entry(result: MetricResult) -> tuple[dict, list | None]:
    """(the metric with its interval over captions, its per-sample values)."""
    entry = result.to_dict()
    per_sample = entry.pop("per_sample")
    if result.computed and result.per_sample is not None:
        entry["interval"] = interval_json(result.per_sample)
    return entry, per_sample


class Scorers:
    def __init__(self, config, device: str):
        self.scorers = {name: METRICS.get(name).build(config, device) for name in config.metrics}
        self.specs = metric_specs()

    def setup(self) -> dict:
        """Per metric: computed or not, and why not; backbone and weights."""
        return {name: scorer.setup() for name, scorer in self.scorers.items()}

    def _record(self, results: dict[str, MetricResult]) -> tuple[dict, dict]:
        metrics, per_sample = {}, {}
        for key, result in results.items():
            metrics[key], values = _entry(result)
            if self.specs[key].per_sample:
                per_sample[key] = values
        return metrics, per_sample

    def reference(self, images, captions) -> dict:
        """The full-precision row of the leaderboard."""
        results = {}
        for scorer in self.scorers.values():
            results.update(scorer.reference(images, captions))
        return self._record(results)[0]

    def cell(self, reference, generation, captions) -> tuple[dict, dict]:
        results = {}
        for scorer in self.scorers.values():
            results.update(scorer.cell(reference, generation, captions))
        return self._record(results)
