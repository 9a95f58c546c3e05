"""FID (Heusel et al. 2017): the Fréchet distance between Inception feature statistics of two image sets.

Two numbers, both **set-level** (one per set of images; there are no per-caption values, so no
interval, paired test, ``compare`` or ``power`` applies to them, and the leaderboard marks them):

- ``fid``: a cell's images against the full-precision model's images of the same captions and
  seeds (deepcompressor's "FID against the 16-bit model");
- ``fid_reference``: the full-precision row's and each cell's images against a folder of
  reference images, e.g. COCO val images (``hadabench run --fid-reference DIR``); not computed
  when no folder is given.

Implementation: pyiqa's FID pieces, which are clean-fid's (Parmar et al. 2022): the FID
Inception-v3 of pytorch-fid (TensorFlow's 2015-12-05 graph ported to PyTorch,
``pt_inception-2015-12-05-6726825d.pth``, its 2048-d pool features), clean-fid's "clean"
preprocessing (each 8-bit channel resized to 299 × 299 as a float image with PIL's bicubic
filter, clipped to [0, 255], then (x − 128) / 128), and ``frechet_distance``
(``||mu1 − mu2||² + Tr(S1 + S2 − 2 sqrtm(S1 S2))`` with scipy's ``sqrtm``, sample covariances;
with fewer images than the 2048 dimensions the same trace exactly from the images' Gram
matrix, see ``frechet_distance`` here).
The reference folder goes through pyiqa's own folder pipeline (``get_folder_features``); the
generated images, held in memory, through the same preprocessing written here, which the tests
check equals pyiqa's on the same images saved as PNGs.

Weights: the one file, in pyiqa's cache (``<torch hub dir>/pyiqa/``); missing, the metric is
"not computed" (``hadabench run --download-weights`` fetches it with pyiqa's downloader).

No interval: FID is biased upwards at small sample sizes, by an amount that depends on the
number of images (Chong & Forsyth 2020), and with fewer images than feature dimensions (2048)
its covariances are rank-deficient. A bootstrap over images repeats images, which shrinks each
resample's diversity and so moves FID itself, not just its spread: the bootstrap distribution is
not centred on the estimate and its percentiles do not cover (tests/test_weight_metrics.py
simulates it on Gaussian features with a known FID: the estimate lies above the truth, the
resamples further above, and the 95% percentile interval holds the truth in under a fifth of
the samples). So FID is reported without an interval (said in the result's details), and two
FIDs compare only at the same number of images.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from benchmark.errors import UserError
from benchmark.metrics.base import MetricResult, logger
from benchmark.metrics.fidelity import to_uint8
from benchmark.metrics.registry import Metric, MetricSpec

__all__ = ["METRIC", "FidFeatures", "FidScorer", "clean_resize", "default_weights", "frechet_distance",
           "statistics"]

NAME = "fid"
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILE}"
SIZE = 299
NO_INTERVAL = ("none: FID is a set-level number, biased by the number of images; a bootstrap over images "
               "repeats images and moves FID itself, so its percentiles are no interval")
_FETCH = "hadabench run --download-weights (pyiqa's downloader), or download it there from {url}"


def default_weights() -> Path:
    """Where pyiqa caches and reads the FID Inception: ``<torch hub dir>/pyiqa/``."""
    from pyiqa.utils import download_util

    return Path(download_util.DEFAULT_CACHE_DIR) / WEIGHTS_FILE


def clean_resize(images) -> torch.Tensor:
    """clean-fid's "clean" preprocessing of 8-bit images: (B, 3, 299, 299) float32 in [-1, 1]
    (pyiqa's ``ResizeDataset(mode="clean")`` for files, here for images in memory)."""
    from PIL import Image

    uint8 = to_uint8(images, NAME).numpy()
    out = np.empty((len(uint8), 3, SIZE, SIZE), dtype=np.float32)
    for i, image in enumerate(uint8):
        for c in range(3):
            channel = Image.fromarray(image[c].astype(np.float32), mode="F").resize((SIZE, SIZE), Image.BICUBIC)
            out[i, c] = np.asarray(channel).clip(0, 255)
    return (torch.from_numpy(out) - 128) / 128


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean and the sample covariance (ddof 1) of features (N, D), in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise UserError(f"{NAME}: at least 2 images are needed for a covariance, got {len(features)}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID of two feature sets (N, D) and (M, D): ``||mu_a - mu_b||² + Tr(S_a) + Tr(S_b) - 2 Tr sqrt(S_a S_b)``.

    With at least as many images in each set as feature dimensions, pyiqa's (clean-fid's)
    ``frechet_distance`` of their statistics (scipy's ``sqrtm`` of S_a S_b). With fewer (every run
    of a few hundred captions: 2048 dimensions), S_a S_b is singular and ``sqrtm`` is ill-posed
    (slow, and pyiqa then adds 1e-6 to the diagonals, which moves the result), so the trace is
    taken exactly in the images' space instead: with the centred features A (N, D) and B (M, D),
    S_a S_b = A^T A B^T B / ((N-1)(M-1)) has the non-zero eigenvalues of (B A^T)(A B^T), so
    Tr sqrt(S_a S_b) = (sum of the singular values of B A^T) / sqrt((N-1)(M-1)). The tests check
    the two against each other and against pyiqa's whole folder pipeline."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    (mu_a, sigma_a), (mu_b, sigma_b) = statistics(a), statistics(b)
    if min(len(a), len(b)) >= a.shape[1]:
        from pyiqa.archs.fid_arch import frechet_distance as reference

        # pyiqa prints when it regularises a singular product, and passes sqrtm's deprecated disp
        # (removed in SciPy 1.18: constraints.txt pins 1.17)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*`disp` argument is deprecated", category=DeprecationWarning)
            return float(reference(mu_a, sigma_a, mu_b, sigma_b))
    centred_a, centred_b = a - mu_a, b - mu_b
    cross = np.linalg.svd(centred_b @ centred_a.T, compute_uv=False).sum() / np.sqrt((len(a) - 1) * (len(b) - 1))
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(sigma_a) + np.trace(sigma_b) - 2 * cross)


class FidFeatures:
    """The FID Inception, loaded once per run: ``features(images)`` of images in memory and
    ``folder_features(path)`` of a folder (pyiqa's pipeline), both (N, 2048) float64."""

    def __init__(self, model=None, *, details: dict, device="cpu", batch_size: int = 16, reason: str | None = None):
        if model is None and reason is None:
            raise UserError("FidFeatures needs the FID Inception, or the reason why there is none")
        self.model, self.details, self.reason = model, details, reason
        self.device, self.batch_size = torch.device(device), batch_size

    @classmethod
    def load(cls, *, device="cpu", batch_size: int = 16, download: bool = False) -> FidFeatures:
        details = {"implementation": "pyiqa (clean-fid): pytorch-fid's FID Inception-v3, pool3 2048-d features, "
                                     "clean resize (PIL bicubic per channel to 299 x 299), frechet_distance",
                   "images": "uint8 as saved to PNG", "set_level": True, "interval": NO_INTERVAL}
        try:
            from benchmark import _compat

            _compat.ensure_torchvision()
            import pyiqa
            from pyiqa.archs.inception import FID_WEIGHTS_URL, InceptionV3
            from pyiqa.utils.download_util import load_file_from_url
        except ImportError as error:
            reason = f"pyiqa is not installed ({error})"
        else:
            path = default_weights()
            details.update(pyiqa=pyiqa.__version__, weights=str(path))
            if download and not path.is_file():
                try:
                    load_file_from_url(FID_WEIGHTS_URL, model_dir=os.fspath(path.parent))
                except Exception as error:  # no network: the reason below says the file is missing
                    logger.warning("%s: download of %s failed: %s", NAME, FID_WEIGHTS_URL, error)
            if not path.is_file():
                reason = (f"FID Inception weights not found at {path} "
                          f"({_FETCH.format(url=f'{FID_WEIGHTS_URL} or {PYTORCH_FID_URL}')})")
            else:
                details["weights_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
                try:
                    with contextlib.redirect_stdout(io.StringIO()):  # pyiqa prints what it loads
                        model = InceptionV3(output_blocks=[3], resize_input=False, normalize_input=False)
                    return cls(model.eval().to(device), details=details, device=device, batch_size=batch_size)
                except Exception as error:  # a corrupt or foreign file: report it, let the run go on
                    reason = f"pyiqa cannot build the FID Inception on {path}: {type(error).__name__}: {error}"
        logger.warning("%s not computed: %s", NAME, reason)
        return cls(details=details, device=device, batch_size=batch_size, reason=reason)

    @property
    def available(self) -> bool:
        return self.model is not None

    @torch.no_grad()
    def features(self, images) -> np.ndarray:
        if not self.available:
            raise RuntimeError(f"{NAME} is not available: {self.reason}")
        batches = []
        for start in range(0, len(images), self.batch_size):
            pixels = clean_resize(images[start:start + self.batch_size]).to(self.device)
            batches.append(self.model(pixels, False, False)[0].reshape(len(pixels), -1).double().cpu().numpy())
        return np.concatenate(batches)

    def folder_features(self, folder: str | Path) -> np.ndarray:
        """Features of every image in ``folder`` (and its sub-folders), through pyiqa's own pipeline."""
        if not self.available:
            raise RuntimeError(f"{NAME} is not available: {self.reason}")
        from pyiqa.archs.fid_arch import get_folder_features

        return get_folder_features(os.fspath(folder), self.model, num_workers=0, batch_size=self.batch_size,
                                   device=self.device, mode="clean", verbose=False).astype(np.float64)


class FidScorer:
    """``fid`` of each cell against the full-precision images; ``fid_reference`` of the
    full-precision row and each cell against the reference folder's images."""

    def __init__(self, features: FidFeatures, reference_dir: str | None):
        self.features, self.reference_dir = features, reference_dir
        self._reference = None
        self._full_precision = (None, None)  # (the full-precision images, their features): one run, one reference
        self.no_reference = None if reference_dir else "no reference folder given (hadabench run --fid-reference DIR)"
        if reference_dir and not Path(reference_dir).is_dir():
            raise UserError(f"--fid-reference {reference_dir}: not a folder")

    def _reference_features(self) -> np.ndarray:
        if self._reference is None:
            self._reference = self.features.folder_features(self.reference_dir)
            if len(self._reference) < 2:
                raise UserError(f"--fid-reference {self.reference_dir}: {len(self._reference)} image(s); "
                                "FID needs at least 2")
            logger.info("%s: %d reference images from %s", NAME, len(self._reference), self.reference_dir)
        return self._reference

    def setup(self) -> dict:
        entry = {"status": "computed" if self.features.available else "not computed", "reason": self.features.reason,
                 "fid": "against the full-precision images", "fid_reference": self.reference_dir,
                 **self.features.details}
        if self.features.available and self.no_reference:
            entry["not_computed"] = {"fid_reference": self.no_reference}
        return entry

    def _result(self, key: str, ours: np.ndarray, theirs: np.ndarray, against: str) -> MetricResult:
        if min(len(ours), len(theirs)) < 2:
            return MetricResult.not_computed(key, f"FID needs at least 2 images in each set, got {len(ours)} and "
                                                  f"{len(theirs)}", self.features.details)
        details = {**self.features.details, "against": against, "images": len(ours), "reference_images": len(theirs),
                   "aggregate": "set-level: one Fréchet distance for the whole set, no per-caption values"}
        return MetricResult(key, frechet_distance(ours, theirs), None, None, details)

    def _with_reference(self, features: np.ndarray) -> MetricResult:
        if self.no_reference:
            return MetricResult.not_computed("fid_reference", self.no_reference, self.features.details)
        return self._result("fid_reference", features, self._reference_features(),
                            f"the images of {self.reference_dir}")

    def reference(self, images, captions) -> dict[str, MetricResult]:
        if not self.features.available:
            return {"fid_reference": MetricResult.not_computed("fid_reference", self.features.reason,
                                                               self.features.details)}
        return {"fid_reference": self._with_reference(self.features.features(images))}

    def cell(self, reference, generation, captions) -> dict[str, MetricResult]:
        if not self.features.available:
            return {key: MetricResult.not_computed(key, self.features.reason, self.features.details)
                    for key in ("fid", "fid_reference")}
        ours = self.features.features(generation.images)
        if self._full_precision[0] is not reference.images:
            self._full_precision = (reference.images, self.features.features(reference.images))
        return {"fid": self._result("fid", ours, self._full_precision[1], "the full-precision images"),
                "fid_reference": self._with_reference(ours)}


METRIC = Metric(
    NAME, "FID (set-level) against the full-precision images, and against --fid-reference DIR (pyiqa, clean-fid)",
    (MetricSpec("fid", NAME, "FID vs full precision", "{:.2f}", False, 0.01, True, per_sample=False),
     MetricSpec("fid_reference", NAME, "FID vs reference", "{:.2f}", False, 0.01, True, per_sample=False)),
    lambda config, device: FidScorer(FidFeatures.load(device=device, download=config.download_weights),
                                     config.fid_reference))
