"""LPIPS (Zhang et al. 2018) of generated images against the full-precision model's images, per caption.

The metric's reference configuration: LPIPS v0.1 on AlexNet, i.e. the ImageNet AlexNet's five
ReLU feature maps, each unit-normalised over channels, the squared differences weighted by the
paper's learned linear layers (``lin0``–``lin4``), averaged over space and summed over layers.
Lower is closer; identical images give 0.

Implementation: torchmetrics' ``LearnedPerceptualImagePatchSimilarity(net_type="alex")`` (a port
of richzhang/PerceptualSimilarity, maintained with the rest of torchmetrics, which the project
already uses for SSIM). torchmetrics ships the v0.1 linear layers (``lpips_models/alex.pth``,
6 kB); the AlexNet trunk is torchvision's ``AlexNet_Weights.IMAGENET1K_V1``
(``alexnet-owt-7be5be79.pth``, 233 MB), which torchvision caches in
``<torch hub dir>/checkpoints/``. That one file is what a machine needs: when it is not in the
cache the metric is "not computed" at once (no download is tried unless asked:
``hadabench run --download-weights``, or ``Lpips.load(download=True)``, fetches it from
``ALEXNET_URL`` with torchvision's hash check).

Input: the 8-bit images exactly as the run saves them (``fidelity.to_uint8``), mapped to [-1, 1]
(``normalize=True``), at their own resolution (no resize; LPIPS is defined on the images as
they are). Images must be at least ``MIN_SIDE`` pixels on each side for AlexNet's pooling.
Checked against pyiqa's independent port (``pyiqa.archs.lpips_arch.LPIPS``) on a random-weight
AlexNet saved where torchvision reads it (tests/test_weight_metrics.py).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from benchmark.errors import UserError
from benchmark.metrics.base import MetricResult, logger
from benchmark.metrics.fidelity import to_uint8
from benchmark.metrics.registry import Metric, MetricSpec

__all__ = ["ALEXNET_URL", "METRIC", "Lpips", "LpipsScorer", "default_weights"]

NAME = "lpips"
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
ALEXNET_SHA256_PREFIX = "7be5be79"  # torchvision names its files after their sha256's first 8 hex digits
MIN_SIDE = 32
_FETCH = f"hadabench run --download-weights, or download {ALEXNET_URL} there"


def default_weights() -> Path:
    """Where torchvision caches (and reads) the ImageNet AlexNet: ``<torch hub dir>/checkpoints/``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(ALEXNET_URL)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Lpips:
    """Accumulates LPIPS over batches: ``update(reference_images, images)``, then ``result()``.

    Build it with ``Lpips.load()``: torchmetrics' AlexNet LPIPS on the cached AlexNet, or a
    metric that says why it is not computed."""

    NAME = NAME

    def __init__(self, metric=None, *, details: dict, device="cpu", batch_size: int = 16, reason: str | None = None):
        if metric is None and reason is None:
            raise UserError("Lpips needs a torchmetrics LPIPS, or the reason why there is none")
        self.metric, self.details, self.reason = metric, details, reason
        self.device, self.batch_size = torch.device(device), batch_size
        self.reset()

    @classmethod
    def load(cls, *, device="cpu", batch_size: int = 16, download: bool = False) -> Lpips:
        """torchmetrics' LPIPS (AlexNet, v0.1) once per run; "not computed" when the AlexNet
        weights are not in torchvision's cache (``download``: fetch them first)."""
        path = default_weights()
        details = {"implementation": "torchmetrics LearnedPerceptualImagePatchSimilarity(net_type='alex')",
                   "version": "LPIPS v0.1 (linear layers shipped with torchmetrics)",
                   "trunk_weights": str(path), "trunk_url": ALEXNET_URL,
                   "images": "uint8 as saved to PNG, mapped to [-1, 1], full resolution",
                   "reference": "the full-precision model's images for the same captions and seeds",
                   "aggregate": "mean over images (lower is closer)"}
        if download and not path.is_file():
            try:
                torch.hub.load_state_dict_from_url(ALEXNET_URL, check_hash=True, map_location="cpu")
            except Exception as error:  # no network: the reason below says the file is missing
                logger.warning("%s: download of %s failed: %s", NAME, ALEXNET_URL, error)
        try:
            from benchmark import _compat

            _compat.ensure_torchvision()
            import torchmetrics
            from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity
        except ImportError as error:
            reason = f"torchmetrics (with torchvision) is not importable ({error})"
        else:
            details["torchmetrics"] = torchmetrics.__version__
            if not path.is_file():
                reason = f"AlexNet weights not found at {path} ({_FETCH})"
            else:
                sha = _sha256(path)
                details["trunk_sha256"] = sha
                details["official_alexnet"] = sha.startswith(ALEXNET_SHA256_PREFIX)
                try:
                    metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", reduction="none", normalize=True)
                    return cls(metric.to(device), details=details, device=device, batch_size=batch_size)
                except Exception as error:  # a corrupt or foreign file: report it, let the run go on
                    reason = f"torchmetrics cannot build LPIPS on {path}: {type(error).__name__}: {error}"
        logger.warning("%s not computed: %s", NAME, reason)
        return cls(details=details, device=device, batch_size=batch_size, reason=reason)

    @property
    def available(self) -> bool:
        return self.metric is not None

    def reset(self) -> None:
        self._values = []

    @torch.no_grad()
    def scores(self, reference_images, images) -> torch.Tensor:
        """Per-image LPIPS (B,), float64, of ``images`` against ``reference_images`` (8-bit as saved)."""
        if not self.available:
            raise RuntimeError(f"{NAME} is not available: {self.reason}")
        reference, test = to_uint8(reference_images, NAME), to_uint8(images, NAME)
        if reference.shape != test.shape:
            raise UserError(f"{NAME}: reference {tuple(reference.shape)} and images {tuple(test.shape)} "
                            "differ in shape")
        if reference.shape[0] == 0:
            raise UserError(f"{NAME}: no images")
        if min(reference.shape[-2:]) < MIN_SIDE:
            raise UserError(f"{NAME}: images must be at least {MIN_SIDE} pixels on each side, "
                            f"got {tuple(reference.shape[-2:])}")
        out = []
        for start in range(0, len(test), self.batch_size):
            a = (test[start:start + self.batch_size].float() / 255).to(self.device)
            b = (reference[start:start + self.batch_size].float() / 255).to(self.device)
            self.metric.reset()
            self.metric.update(a, b)
            out.append(self.metric.compute().reshape(-1).double().cpu())
        return torch.cat(out)

    def update(self, reference_images, images):
        """Score one batch and keep it; None (nothing kept) when the metric is not available."""
        if not self.available:
            return None
        values = self.scores(reference_images, images)
        self._values.append(values)
        return values

    def result(self) -> MetricResult:
        if not self.available:
            return MetricResult.not_computed(NAME, self.reason, self.details)
        if not self._values:
            return MetricResult.not_computed(NAME, "no samples", self.details)
        values = torch.cat(self._values)
        return MetricResult(NAME, values.mean().item(), values.tolist(), None, {**self.details, "samples": len(values)})


class LpipsScorer:
    """A run's LPIPS: each cell's images against the full-precision run's (the full-precision row
    has nothing to compare with)."""

    def __init__(self, metric: Lpips):
        self.metric = metric

    def setup(self) -> dict:
        return {"status": "computed" if self.metric.available else "not computed", "reason": self.metric.reason,
                "against": "the full-precision images", **self.metric.details}

    def reference(self, images, captions) -> dict[str, MetricResult]:
        return {}

    def cell(self, reference, generation, captions) -> dict[str, MetricResult]:
        self.metric.reset()
        try:
            self.metric.update(reference.images, generation.images)
        except UserError as error:  # images LPIPS cannot take (too small): not computed, the run goes on
            return {NAME: MetricResult.not_computed(NAME, str(error), self.metric.details)}
        return {NAME: self.metric.result()}


METRIC = Metric(
    NAME, "LPIPS v0.1 (AlexNet) of the 8-bit images against the full-precision images, with torchmetrics",
    (MetricSpec(NAME, NAME, "LPIPS", "{:.4f}", False, 0.0001, True),),
    lambda config, device: LpipsScorer(Lpips.load(device=device, download=config.download_weights)))
