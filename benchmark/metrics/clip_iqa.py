"""CLIP-IQA (Wang et al. 2023) with pyiqa's ``clipiqa`` metric: per image in [0, 1], higher is better.

pyiqa scores an image by how much CLIP prefers a positive prompt over its negative, averaged
over five pairs ("Good image" / "bad image", "Sharp image" / "blurry image", "sharp edges" /
"blurry edges", "High resolution image" / "low resolution image", "Noise-free image" /
"noisy image"), on OpenAI's RN50 CLIP. Images are rounded to 8 bits first, as CLIP score
rounds them: both metrics score the PNG a user would see.
That backbone is a TorchScript archive, ``RN50.pt``. We always give pyiqa the file's path,
so pyiqa never downloads anything: when the file is missing, the metric is not computed.
The default path is where openai-clip and pyiqa cache it, ``<torch hub dir>/clip/RN50.pt``.

Install: pyiqa's declared dependencies weigh about 1.25 GB (bitsandbytes, facexlib,
tensorboard, dev tools) that ``clipiqa`` never imports. Its import chain needs only::

    pip install --no-deps pyiqa==0.1.16
    pip install openai-clip==1.0.1 opencv-python-headless pyyaml requests huggingface_hub

(with torch and torchvision; openai-clip imports ``pkg_resources``: ``setuptools<81``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from benchmark.errors import UserError
from benchmark.metrics.base import PerSampleScore, PerSampleScorer, image_batch, logger
from benchmark.metrics.registry import Metric, MetricSpec

NAME = "clip_iqa"
RN50_URL = ("https://openaipublic.azureedge.net/clip/models/"
            "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt")
RN50_SHA256 = RN50_URL.split("/")[-2]  # OpenAI names the folder after the file's sha256


def default_weights() -> Path:
    return Path(torch.hub.get_dir()) / "clip" / "RN50.pt"


class ClipIQA(PerSampleScore):
    """Accumulates CLIP-IQA over batches: ``update(images)``, then ``result()``.

    Build it with ``ClipIQA.load(weights)``; ``weights`` is a CLIP TorchScript archive
    (OpenAI's ``RN50.pt`` by default).
    """

    NAME = NAME

    def __init__(self, metric=None, *, details: dict, device="cpu", batch_size: int = 16,
                 reason: str | None = None):
        if metric is None and reason is None:
            raise UserError("ClipIQA needs a pyiqa metric, or the reason why there is none")
        self.metric, self.details, self.reason = metric, details, reason
        self.device, self.batch_size = torch.device(device), batch_size
        self.reset()

    @classmethod
    def load(cls, weights: str | Path | None = None, *, device="cpu", batch_size: int = 16,
             download: bool = False) -> ClipIQA:
        """Build pyiqa's ``clipiqa`` once per run on a local CLIP archive; "not computed" if it
        can't. ``download``: fetch OpenAI's RN50 archive to the default path when it is missing."""
        path = Path(weights) if weights is not None else default_weights()
        if download and weights is None and not path.is_file():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(RN50_URL, os.fspath(path), hash_prefix=RN50_SHA256)
            except Exception as error:  # no network: the reason below says the file is missing
                logger.warning("%s: download of %s failed: %s", NAME, RN50_URL, error)
        details = {"implementation": "pyiqa clipiqa", "weights": str(path), "input": "8-bit images"}
        try:
            import pyiqa
        except ImportError as error:
            reason = f"pyiqa is not installed ({error})"
        else:
            details["pyiqa"] = pyiqa.__version__
            if not path.is_file():
                reason = (f"CLIP weights not found at {path} (hadabench run --download-weights, "
                          f"or download {RN50_URL} there)")
            else:
                sha = hashlib.sha256(path.read_bytes()).hexdigest()
                details["weights_sha256"] = sha
                details["official_rn50"] = sha == RN50_SHA256  # the paper's backbone, or another CLIP
                try:
                    # backbone= a file path: pyiqa loads it as is, with no download.
                    metric = pyiqa.create_metric("clipiqa", device=torch.device(device), backbone=os.fspath(path))
                    return cls(metric, details=details, device=device, batch_size=batch_size)
                except Exception as error:  # a corrupt or foreign file: report it, let the run go on
                    reason = f"pyiqa cannot build clipiqa on {path}: {type(error).__name__}: {error}"
        logger.warning("%s not computed: %s", NAME, reason)
        return cls(details=details, device=device, batch_size=batch_size, reason=reason)

    @property
    def available(self) -> bool:
        return self.metric is not None

    @torch.no_grad()
    def scores(self, images) -> torch.Tensor:
        """Per-image CLIP-IQA (B,), images as in ``image_batch`` (full resolution, no resize)."""
        if not self.available:
            raise RuntimeError(f"{NAME} is not available: {self.reason}")
        images = (image_batch(images, NAME) * 255).round() / 255  # 8 bits, like CLIP score's input
        return torch.cat([self.metric(images[i:i + self.batch_size].to(self.device)).reshape(-1).cpu()
                          for i in range(0, len(images), self.batch_size)])


METRIC = Metric(
    NAME, "CLIP-IQA with pyiqa's clipiqa (OpenAI RN50)",
    (MetricSpec(NAME, NAME, "CLIP-IQA", "{:.3f}", True, 0.001, True),),
    lambda config, device: PerSampleScorer(ClipIQA.load(device=device, download=config.download_weights),
                                           with_captions=False))
