"""PSNR and SSIM of generated images against the full-precision model's images, per caption.

Both are computed on the 8-bit images exactly as the run saves them as PNGs
(``benchmark.run.folder.save_images``: ``(images.clamp(0, 1) * 255).round().to(uint8)``);
``to_uint8`` is that one conversion, shared by both metrics (and by the caption checker).

- ``psnr_db``: per image ``10 · log10(255² / MSE)``, the MSE over all pixels and channels of
  the uint8 values (in float64); identical images give ``+inf``. The aggregate is the mean of
  the per-image dB values (``+inf`` if any image is identical to its reference).
- ``ssim``: Wang et al. 2004 per image: an 11 × 11 Gaussian window with σ = 1.5 (truncated at
  3.5 σ), K1 = 0.01, K2 = 0.03, data range 255, population (not sample) covariances; the SSIM
  map is averaged over each channel's valid region and then over the channels. This is
  scikit-image's ``structural_similarity(a, b, channel_axis=-1, data_range=255,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``. It is computed with
  torchmetrics' functional SSIM in float64, with one change of border handling: torchmetrics
  reflect-pads the image by 5 pixels and averages the whole H × W map (border windows
  included), while scikit-image averages only the map's interior, cropping (win − 1)/2 = 5
  pixels on every side. We take torchmetrics' full map (``return_full_image=True``) and crop
  those 5 pixels ourselves, so only windows lying wholly inside the image count and the
  padding never enters; the two then agree to < 1e-11 (float64; in float32 they differ by up to 2e-3).
  Images must be at least 11 pixels on each side. Identical images give exactly 1.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from benchmark.errors import UserError
from benchmark.metrics.base import MetricResult, image_tensor
from benchmark.metrics.registry import Metric, MetricSpec

__all__ = ["PSNR", "SSIM", "FidelityScorer", "Psnr", "Ssim", "psnr_db", "ssim", "to_uint8"]

SSIM_SIGMA = 1.5
SSIM_WINDOW = 2 * int(3.5 * SSIM_SIGMA + 0.5) + 1  # 11, scikit-image's and torchmetrics' truncation
SSIM_K1, SSIM_K2 = 0.01, 0.03
DATA_RANGE = 255.0


def to_uint8(images, metric: str = "images") -> torch.Tensor:
    """Images as saved to PNG: a uint8 tensor (B, 3, H, W) on the CPU.

    Takes a float tensor (B, 3, H, W) in [0, 1] (converted as ``save_images`` does:
    ``(x.clamp(0, 1) * 255).round()`` in the tensor's own dtype), a uint8 tensor (kept), or a
    list of PIL images of one size. Floats outside [0, 1] or not finite are an error, not
    clamped: they mean the caller forgot to map the decoder's [-1, 1] output.
    """
    images = image_tensor(images, metric).detach().cpu()
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise UserError(f"{metric}: images must be float in [0, 1] or uint8, got {images.dtype}")
    if images.numel():
        if not torch.isfinite(images).all():
            raise UserError(f"{metric}: images contain NaN or infinite values")
        if images.min() < 0 or images.max() > 1:
            raise UserError(f"{metric}: float images must lie in [0, 1], "
                             f"got [{images.min():.3g}, {images.max():.3g}]")
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def _pair(reference_images, images, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    reference, test = to_uint8(reference_images, metric), to_uint8(images, metric)
    if reference.shape != test.shape:
        raise UserError(f"{metric}: reference {tuple(reference.shape)} and images {tuple(test.shape)} differ in shape")
    if reference.shape[0] == 0:
        raise UserError(f"{metric}: no images")
    return reference, test


def psnr_db(reference_images, images) -> torch.Tensor:
    """Per-image PSNR in dB of the 8-bit images, float64 (B,); identical images give +inf."""
    reference, test = _pair(reference_images, images, "psnr_db")
    err = (reference.double() - test.double()).reshape(len(reference), -1)
    mse = err.square().mean(1)
    ratio = torch.where(mse > 0, DATA_RANGE ** 2 / mse.clamp_min(torch.finfo(mse.dtype).tiny), math.inf)
    return 10 * torch.log10(ratio)


def ssim(reference_images, images) -> torch.Tensor:
    """Per-image SSIM of the 8-bit images, float64 (B,), as scikit-image computes it (module doc)."""
    reference, test = _pair(reference_images, images, "ssim")
    pad = (SSIM_WINDOW - 1) // 2
    if min(reference.shape[-2:]) < SSIM_WINDOW:
        raise UserError(f"ssim: images must be at least {SSIM_WINDOW} pixels on each side, "
                         f"got {tuple(reference.shape[-2:])}")
    from torchmetrics.functional.image import structural_similarity_index_measure

    from benchmark import _compat  # noqa: F401  (torchmetrics imports torchvision)

    _, full = structural_similarity_index_measure(
        test.double(), reference.double(), gaussian_kernel=True, sigma=SSIM_SIGMA, kernel_size=SSIM_WINDOW,
        data_range=DATA_RANGE, k1=SSIM_K1, k2=SSIM_K2, reduction="none", return_full_image=True)
    values = full[..., pad:-pad, pad:-pad].mean(dim=(1, 2, 3))
    # SSIM(x, x) = 1; torchmetrics clamps negative variances (rounding) to 0, which can leave 1 - 1e-16
    identical = (reference == test).reshape(len(reference), -1).all(1)
    return torch.where(identical, torch.ones_like(values), values)


class _PerImage:
    NAME = "per_image"
    FUNCTION = None
    DETAILS: ClassVar[dict] = {}

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._values = []

    def update(self, reference_images, images) -> torch.Tensor:
        """Score one batch against its full-precision reference and keep it; per-image values (B,)."""
        values = type(self).FUNCTION(reference_images, images)
        self._values.append(values)
        return values

    def result(self) -> MetricResult:
        details = dict(self.DETAILS)
        if not self._values:
            return MetricResult.not_computed(self.NAME, "no samples", details)
        values = torch.cat(self._values)
        return MetricResult(self.NAME, values.mean().item(), values.tolist(), None,
                            {**details, "samples": len(values)})


class Psnr(_PerImage):
    """Accumulates PSNR over batches: ``update(reference_images, images)``, then ``result()`` (``psnr_db``)."""

    NAME = "psnr_db"
    FUNCTION = staticmethod(psnr_db)
    DETAILS: ClassVar[dict] = {"formula": "10*log10(255^2 / MSE), MSE over all pixels and channels of the 8-bit images",
               "images": "uint8 as saved to PNG: round(clamp(x, 0, 1) * 255)",
               "reference": "the full-precision model's images for the same captions and seeds",
               "aggregate": "mean of per-image dB (+inf if any image is identical)"}


class Ssim(_PerImage):
    """Accumulates SSIM over batches: ``update(reference_images, images)``, then ``result()`` (``ssim``)."""

    NAME = "ssim"
    FUNCTION = staticmethod(ssim)
    DETAILS: ClassVar[dict] = {"formula": "SSIM (Wang et al. 2004), Gaussian window 11x11 sigma 1.5, K1 0.01, K2 0.03, "
                          "data range 255, population covariance, mean over the valid (border-cropped) map "
                          "per channel then over channels = skimage structural_similarity",
               "images": "uint8 as saved to PNG: round(clamp(x, 0, 1) * 255)",
               "reference": "the full-precision model's images for the same captions and seeds",
               "aggregate": "mean over images"}


class FidelityScorer:
    """A run's scorer of one image-fidelity metric: each cell's saved images against the
    full-precision run's (the full-precision row has nothing to compare with)."""

    def __init__(self, metric: _PerImage):
        self.metric = metric

    def setup(self) -> dict:
        return {"status": "computed", "against": "the full-precision images", **self.metric.DETAILS}

    def reference(self, images, captions) -> dict[str, MetricResult]:
        return {}

    def cell(self, reference, generation, captions) -> dict[str, MetricResult]:
        self.metric.reset()
        self.metric.update(reference.images, generation.images)
        return {self.metric.NAME: self.metric.result()}


PSNR = Metric("psnr", "PSNR (dB) of the 8-bit images against the full-precision images",
              (MetricSpec("psnr_db", "psnr", "PSNR (dB)", "{:.2f}", True, 0.01, True),),
              lambda config, device: FidelityScorer(Psnr()))
SSIM = Metric("ssim", "SSIM (Wang et al. 2004) of the 8-bit images against the full-precision images",
              (MetricSpec("ssim", "ssim", "SSIM", "{:.4f}", True, 0.0001, True),),
              lambda config, device: FidelityScorer(Ssim()))
