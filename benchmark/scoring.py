"""The metrics of one run, their models loaded once, applied to the reference and each cell.

A cell's metrics (keys of ``cell["metrics"]``; per-sample values in ``cell["per_sample"]``):

- ``sqnr_db``: SQNR of the final latents against the full-precision run, mean of per-sample
  dB (the leaderboard's SQNR: the paper's "end of the denoising process");
- ``sqnr_pooled_db``: the same latents, summed signal over summed noise;
- ``sqnr_image_db``: SQNR of the decoded images, mean of per-sample dB;
- ``clip_score``, ``clip_iqa``: of the generated images (CLIP score against their captions).
"""

from __future__ import annotations

from .metrics import ClipIQA, ClipScore, MetricResult, Sqnr
from .stats import interval_json

METRICS = {
    "sqnr": "SQNR (dB) against the full-precision run: final latents and decoded images",
    "clip_score": "100 * max(cos(image, caption), 0) with open_clip (default ViT-L-14 / openai)",
    "clip_iqa": "CLIP-IQA with pyiqa's clipiqa (OpenAI RN50)",
}


def _entry(result: MetricResult) -> tuple[dict, list | None]:
    """(the metric with its interval over captions, its per-sample values)."""
    entry = result.to_dict()
    per_sample = entry.pop("per_sample")
    if result.computed and result.per_sample is not None:
        entry["interval"] = interval_json(result.per_sample)
    return entry, per_sample


class Scorers:
    def __init__(self, config, device: str):
        self.metrics = list(config.metrics)
        download = config.download_weights
        self.clip = (ClipScore.load(config.clip_model, config.clip_pretrained, device=device, download=download)
                     if "clip_score" in self.metrics else None)
        self.iqa = ClipIQA.load(device=device, download=download) if "clip_iqa" in self.metrics else None

    def setup(self) -> dict:
        """Per metric: computed or not, and why not; backbone and weights."""
        out = {}
        if "sqnr" in self.metrics:
            out["sqnr"] = {"status": "computed", "on": "final latents (sqnr_db, sqnr_pooled_db) "
                           "and decoded images (sqnr_image_db)",
                           "aggregate": "sqnr_db: mean of per-sample dB; sqnr_pooled_db: pooled ratio"}
        for name, scorer in (("clip_score", self.clip), ("clip_iqa", self.iqa)):
            if scorer is not None:
                out[name] = {"status": "computed" if scorer.available else "not computed",
                             "reason": scorer.reason, **scorer.details}
        return out

    def _image_metrics(self, images, captions) -> tuple[dict, dict]:
        metrics, per_sample = {}, {}
        for name, scorer, args in (("clip_score", self.clip, (images, captions)),
                                   ("clip_iqa", self.iqa, (images,))):
            if scorer is None:
                continue
            scorer.reset()
            scorer.update(*args)
            metrics[name], per_sample[name] = _entry(scorer.result())
        return metrics, per_sample

    def reference(self, images, captions) -> dict:
        """The full-precision row of the leaderboard."""
        return self._image_metrics(images, captions)[0]

    def cell(self, reference, generation, captions) -> tuple[dict, dict]:
        metrics, per_sample = {}, {}
        if "sqnr" in self.metrics:
            for what, ref, test in (("latent", reference.latents, generation.latents),
                                    ("image", reference.images, generation.images)):
                sqnr = Sqnr(what)
                sqnr.update(ref, test)
                mean, pooled = sqnr.result()
                key = "sqnr_db" if what == "latent" else "sqnr_image_db"
                metrics[key], per_sample[key] = _entry(mean)
                if what == "latent":
                    metrics["sqnr_pooled_db"], _ = _entry(pooled)
        image_metrics, image_per_sample = self._image_metrics(generation.images, captions)
        return {**metrics, **image_metrics}, {**per_sample, **image_per_sample}
