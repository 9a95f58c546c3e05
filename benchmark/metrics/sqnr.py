"""SQNR in dB between a full-precision output and its quantized counterpart.

Per sample: ``10 · log10(||ref||² / ||ref − test||²)`` over all elements of the sample
(the first dimension is the batch), so it works for latents (B, C, H, W) and decoded images
alike. Identical samples give ``+inf``; a zero reference with a non-zero error gives
``-inf``. Energies are summed in float64.

Two aggregates, both reported:

- ``sqnr_mean_db``:   the mean of the per-sample dB values (+inf if any sample is exact);
- ``sqnr_pooled_db``: ``10 · log10(Σ signal energy / Σ noise energy)`` over all samples,
  dominated by the high-energy samples.
"""

from __future__ import annotations

import math

import torch

from benchmark.errors import UserError
from benchmark.metrics.base import MetricResult
from benchmark.metrics.registry import Metric, MetricSpec


def _energies(reference: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if reference.shape != test.shape:
        raise UserError(f"sqnr: reference {tuple(reference.shape)} and test {tuple(test.shape)} differ in shape")
    if reference.dim() < 1 or reference.shape[0] == 0:
        raise UserError(f"sqnr: needs a batch dimension with at least one sample, got {tuple(reference.shape)}")
    for name, x in (("reference", reference), ("test", test)):
        if not torch.isfinite(x).all():
            raise UserError(f"sqnr: {name} contains NaN or infinite values")
    ref = reference.detach().reshape(reference.shape[0], -1).double()
    err = ref - test.detach().reshape(test.shape[0], -1).double()
    return ref.square().sum(1).cpu(), err.square().sum(1).cpu()


def _db(signal: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    # noise == 0 is an exact match: +inf, whatever the signal (0/0 included).
    ratio = torch.where(noise > 0, signal / noise.clamp_min(torch.finfo(noise.dtype).tiny), math.inf)
    return 10 * torch.log10(ratio)


def sqnr_db(reference: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """Per-sample SQNR in dB, a float64 tensor of shape (B,)."""
    return _db(*_energies(reference, test))


class Sqnr:
    """Accumulates SQNR over batches: ``update(ref, test)`` per batch, then ``result()``."""

    def __init__(self, what: str = "output"):
        self.what = what  # recorded: which tensor was compared (e.g. "latent", "image")
        self.reset()

    def reset(self) -> None:
        self._signal, self._noise = [], []

    def update(self, reference: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
        signal, noise = _energies(reference, test)
        self._signal.append(signal)
        self._noise.append(noise)
        return _db(signal, noise)

    def result(self) -> tuple[MetricResult, MetricResult]:
        """(``sqnr_mean_db``, ``sqnr_pooled_db``)."""
        details = {"what": self.what, "formula": "10*log10(||ref||^2 / ||ref - test||^2)"}
        if not self._signal:
            reason = "no samples"
            return (MetricResult.not_computed("sqnr_mean_db", reason, details),
                    MetricResult.not_computed("sqnr_pooled_db", reason, details))
        signal, noise = torch.cat(self._signal), torch.cat(self._noise)
        per_sample = _db(signal, noise)
        pooled = _db(signal.sum(), noise.sum())
        return (MetricResult("sqnr_mean_db", per_sample.mean().item(), per_sample.tolist(), None,
                             {**details, "aggregate": "mean of per-sample dB", "samples": len(per_sample)}),
                MetricResult("sqnr_pooled_db", pooled.item(), None, None,
                             {**details, "aggregate": "dB of summed signal over summed noise",
                              "samples": len(per_sample)}))


class SqnrScorer:
    """SQNR of each cell's final latents (``sqnr_db``, ``sqnr_pooled_db``) and decoded images
    (``sqnr_image_db``) against the full-precision run's."""

    def setup(self) -> dict:
        return {"status": "computed",
                "on": "final latents (sqnr_db, sqnr_pooled_db) and decoded images (sqnr_image_db)",
                "aggregate": "sqnr_db: mean of per-sample dB; sqnr_pooled_db: pooled ratio"}

    def reference(self, images, captions) -> dict[str, MetricResult]:
        return {}

    def cell(self, reference, generation, captions) -> dict[str, MetricResult]:
        out = {}
        for what, ref, test in (("latent", reference.latents, generation.latents),
                                ("image", reference.images, generation.images)):
            sqnr = Sqnr(what)
            sqnr.update(ref, test)
            mean, pooled = sqnr.result()
            if what == "latent":
                out["sqnr_db"], out["sqnr_pooled_db"] = mean, pooled
            else:
                out["sqnr_image_db"] = mean
        return out


METRIC = Metric(
    "sqnr", "SQNR (dB) against the full-precision run: final latents and decoded images",
    (MetricSpec("sqnr_db", "sqnr", "SQNR (dB)", "{:.2f}", True, 0.01, True),
     MetricSpec("sqnr_pooled_db", "sqnr", "pooled SQNR (dB)", "{:.2f}", True, 0.01, False, per_sample=False),
     MetricSpec("sqnr_image_db", "sqnr", "image SQNR (dB)", "{:.2f}", True, 0.01, False)),
    lambda config, device: SqnrScorer())
