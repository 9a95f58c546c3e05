"""What every metric reports (``MetricResult``) and the shared helpers of per-sample metrics.

A metric whose model cannot be loaded is reported as not computed: ``value is None`` and
``reason`` says why. No number is ever filled in for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from benchmark.errors import UserError
from benchmark.logs import get_logger

__all__ = ["MetricResult", "PerSampleScore", "PerSampleScorer", "image_batch", "image_tensor", "logger"]

logger = get_logger("metrics")


@dataclass(frozen=True)
class MetricResult:
    name: str
    value: float | None                      # None: not computed, see reason
    per_sample: list[float] | None = None
    reason: str | None = None                # why it was not computed
    details: dict = field(default_factory=dict)  # backbone, weights, aggregation, ...

    @property
    def computed(self) -> bool:
        return self.value is not None

    @classmethod
    def not_computed(cls, name: str, reason: str, details: dict | None = None) -> MetricResult:
        return cls(name, None, None, reason, dict(details or {}))

    def to_dict(self) -> dict:
        return {"name": self.name, "value": _to_json(self.value),
                "per_sample": None if self.per_sample is None else [_to_json(v) for v in self.per_sample],
                "reason": self.reason, "details": self.details}

    @classmethod
    def from_dict(cls, data: dict) -> MetricResult:
        per_sample = data.get("per_sample")
        return cls(data["name"], _from_json(data["value"]),
                   None if per_sample is None else [_from_json(v) for v in per_sample],
                   data.get("reason"), dict(data.get("details") or {}))


def image_tensor(images, metric: str):
    """A tensor (B, 3, H, W) as given, or a list of PIL images of one size stacked as uint8;
    anything else is a one-line error naming ``metric``."""
    import torch

    if isinstance(images, (list, tuple)):
        from torchvision.transforms.functional import pil_to_tensor

        if not images:
            raise UserError(f"{metric}: no images")
        tensors = [pil_to_tensor(image.convert("RGB")) for image in images]
        if len({t.shape for t in tensors}) > 1:
            raise UserError(f"{metric}: images in one batch must share one size")
        images = torch.stack(tensors)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise UserError(f"{metric}: expected images (B, 3, H, W) or a list of PIL images, "
                        f"got {getattr(images, 'shape', type(images).__name__)}")
    return images


def image_batch(images, metric: str):
    """Images as a float tensor (B, 3, H, W) in [0, 1].

    Takes a tensor (B, 3, H, W), float in [0, 1] or uint8, or a list of PIL images of one
    size (what a diffusers pipeline returns). Out-of-range floats are an error rather than
    clamped: they mean the caller forgot to map the decoder's [-1, 1] output.
    """
    import torch

    images = image_tensor(images, metric)
    if images.dtype == torch.uint8:
        return images.float() / 255
    images = images.detach().float()
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise UserError(f"{metric}: float images must lie in [0, 1], got [{images.min():.3g}, {images.max():.3g}]")
    return images


def _to_json(value: float | None):
    if value is None or math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _from_json(value):
    return float(value) if isinstance(value, str) else value


class PerSampleScore:
    """A metric that scores each sample and reports their mean. Subclasses set ``NAME``,
    ``details`` and ``reason`` (None when available), and implement ``available`` and
    ``scores(*batch)``; ``update(*batch)`` then ``result()`` accumulate over batches."""

    NAME = "score"
    details: dict
    reason: str | None

    @property
    def available(self) -> bool:
        raise NotImplementedError

    def scores(self, *batch):
        raise NotImplementedError

    def reset(self) -> None:
        self._scores = []

    def update(self, *batch):
        """Score one batch and keep it; None (nothing kept) when the metric is not available."""
        if not self.available:
            return None
        scores = self.scores(*batch)
        self._scores.append(scores)
        return scores

    def result(self) -> MetricResult:
        import torch

        if not self.available:
            return MetricResult.not_computed(self.NAME, self.reason, self.details)
        if not self._scores:
            return MetricResult.not_computed(self.NAME, "no samples", self.details)
        scores = torch.cat(self._scores).double()
        return MetricResult(self.NAME, scores.mean().item(), scores.tolist(), None,
                            {**self.details, "samples": len(scores)})


class PerSampleScorer:
    """The run's scorer of a ``PerSampleScore`` metric of the generated images (CLIP score,
    CLIP-IQA): the same on the full-precision row and on each cell."""

    def __init__(self, metric: PerSampleScore, with_captions: bool):
        self.metric, self.with_captions = metric, with_captions

    def setup(self) -> dict:
        return {"status": "computed" if self.metric.available else "not computed", "reason": self.metric.reason,
                **self.metric.details}

    def reference(self, images, captions) -> dict[str, MetricResult]:
        self.metric.reset()
        self.metric.update(*((images, captions) if self.with_captions else (images,)))
        return {self.metric.NAME: self.metric.result()}

    def cell(self, reference, generation, captions) -> dict[str, MetricResult]:
        return self.reference(generation.images, captions)
