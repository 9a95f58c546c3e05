"""Image and output metrics, one module each; every metric reports ``MetricResult``s.

- ``sqnr``:       SQNR (dB) of the quantized output against the full-precision one.
- ``clip_score``: CLIP score (Hessel et al. 2021) with open_clip.
- ``clip_iqa``:   CLIP-IQA (Wang et al. 2023) with pyiqa's ``clipiqa``.
- ``fidelity``:   PSNR and SSIM against the full-precision images; ``caption_accuracy``: the
  embedded model's caption checker.
- ``perceptual``: LPIPS (AlexNet) against the full-precision images, with torchmetrics.
- ``fid``:        FID (set-level) against the full-precision images and a reference folder, with pyiqa.
- ``image_reward``: ImageReward (THUDM) on transformers' BLIP.

A metric whose model cannot be loaded (no weights in the cache, no hub, package missing)
is reported as not computed: ``value is None`` and ``reason`` says why. No number is ever
filled in for it.

JSON: ``MetricResult.to_dict()`` writes non-finite floats as the strings ``"inf"``,
``"-inf"`` and ``"nan"`` (JSON has no infinity); ``MetricResult.from_dict`` reads them back.
An SQNR of ``"inf"`` means the two outputs were identical.
"""

from __future__ import annotations

from benchmark.metrics.base import MetricResult, PerSampleScore, image_batch, logger
from benchmark.metrics.clip_iqa import ClipIQA
from benchmark.metrics.clip_score import ClipScore
from benchmark.metrics.sqnr import Sqnr, sqnr_db

__all__ = ["ClipIQA", "ClipScore", "MetricResult", "PerSampleScore", "Sqnr", "image_batch", "logger", "sqnr_db"]
