"""Image and output metrics, one module each; every metric reports ``MetricResult``s.

- ``sqnr``:       SQNR (dB) of the quantized output against the full-precision one.
- ``clip_score``: CLIP score (Hessel et al. 2021) with open_clip.
- ``clip_iqa``:   CLIP-IQA (Wang et al. 2023) with pyiqa's ``clipiqa``.

A metric whose model cannot be loaded (no weights in the cache, no hub, package missing)
is reported as not computed: ``value is None`` and ``reason`` says why. No number is ever
filled in for it.

JSON: ``MetricResult.to_dict()`` writes non-finite floats as the strings ``"inf"``,
``"-inf"`` and ``"nan"`` (JSON has no infinity); ``MetricResult.from_dict`` reads them back.
An SQNR of ``"inf"`` means the two outputs were identical.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

logger = logging.getLogger("benchmark.metrics")


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
    def not_computed(cls, name: str, reason: str, details: dict | None = None) -> "MetricResult":
        return cls(name, None, None, reason, dict(details or {}))

    def to_dict(self) -> dict:
        return {"name": self.name, "value": _to_json(self.value),
                "per_sample": None if self.per_sample is None else [_to_json(v) for v in self.per_sample],
                "reason": self.reason, "details": self.details}

    @classmethod
    def from_dict(cls, data: dict) -> "MetricResult":
        per_sample = data.get("per_sample")
        return cls(data["name"], _from_json(data["value"]),
                   None if per_sample is None else [_from_json(v) for v in per_sample],
                   data.get("reason"), dict(data.get("details") or {}))


def image_batch(images, metric: str):
    """Images as a float tensor (B, 3, H, W) in [0, 1].

    Takes a tensor (B, 3, H, W), float in [0, 1] or uint8, or a list of PIL images of one
    size (what a diffusers pipeline returns). Out-of-range floats are an error rather than
    clamped: they mean the caller forgot to map the decoder's [-1, 1] output.
    """
    import torch

    if isinstance(images, (list, tuple)):
        from torchvision.transforms.functional import pil_to_tensor

        if not images:
            raise ValueError(f"{metric}: no images")
        tensors = [pil_to_tensor(image.convert("RGB")) for image in images]
        if len({t.shape for t in tensors}) > 1:
            raise ValueError(f"{metric}: images in one batch must share one size")
        images = torch.stack(tensors)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{metric}: expected images (B, 3, H, W) or a list of PIL images, "
                         f"got {getattr(images, 'shape', type(images).__name__)}")
    if images.dtype == torch.uint8:
        return images.float() / 255
    images = images.detach().float()
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError(f"{metric}: float images must lie in [0, 1], got [{images.min():.3g}, {images.max():.3g}]")
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


from .clip_iqa import ClipIQA  # noqa: E402  (after what the modules import)
from .clip_score import ClipScore  # noqa: E402
from .sqnr import Sqnr, sqnr_db  # noqa: E402

__all__ = ["ClipIQA", "ClipScore", "MetricResult", "PerSampleScore", "Sqnr", "image_batch", "sqnr_db"]

