"""CLIP score (Hessel et al. 2021) with open_clip: ``100 · max(cos(image, caption), 0)``.

Per sample, then the mean over samples. The backbone and the pretrained tag are options
(default ``ViT-L-14`` / ``openai``) and are recorded with the numbers. Images are quantized
to 8 bits before open_clip's own preprocessing, as if read from saved PNGs.

Weights come from the local cache; ``download=True`` lets open_clip fetch them. Without
it, weights missing from the cache give "not computed" at once, instead of open_clip's
retries against an unreachable hub (tens of seconds when the hub cannot be reached and
``HF_HUB_OFFLINE`` is not set). Where the hub cannot be reached, set ``HF_HUB_OFFLINE=1``:
otherwise open_clip asks the hub for updates even when the weights are cached.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from benchmark.errors import UserError
from benchmark.metrics.base import PerSampleScore, PerSampleScorer, image_batch, logger
from benchmark.metrics.registry import Metric, MetricSpec

NAME = "clip_score"
_FETCH = "hadabench run --download-weights, or ClipScore.load(..., download=True)"


class ClipScore(PerSampleScore):
    """Accumulates CLIP scores over batches: ``update(images, captions)``, then ``result()``.

    Build it with ``ClipScore.load(...)`` (the real open_clip path), or pass a model,
    its preprocessing and tokenizer directly (tests; a model already in memory).
    """

    NAME = NAME

    def __init__(self, model=None, preprocess=None, tokenizer=None, *, model_name: str, pretrained: str,
                 device: str | torch.device = "cpu", batch_size: int = 16, reason: str | None = None):
        if model is None and reason is None:
            raise UserError("ClipScore needs a model, or the reason why there is none")
        self.model = model.to(device).eval() if model is not None else None
        self.preprocess, self.tokenizer = preprocess, tokenizer
        self.device, self.batch_size, self.reason = torch.device(device), batch_size, reason
        self.details = {"backbone": model_name, "pretrained": pretrained,
                        "formula": "mean over samples of 100*max(cos(image, caption), 0)"}
        self.reset()

    @classmethod
    def load(cls, model_name: str = "ViT-L-14", pretrained: str = "openai", *, device="cpu",
             batch_size: int = 16, cache_dir: str | None = None, download: bool = False) -> ClipScore:
        """Load the backbone once per run; when it cannot be loaded, a metric that says why."""
        options = dict(model_name=model_name, pretrained=pretrained, device=device, batch_size=batch_size)
        try:
            import open_clip
        except ImportError as error:
            reason = f"open_clip is not installed ({error})"
        else:
            reason = None if download else _missing_weights(open_clip, model_name, pretrained, cache_dir)
            if reason is None:
                try:
                    model, _, preprocess = open_clip.create_model_and_transforms(
                        model_name, pretrained=pretrained, device=device, cache_dir=cache_dir)
                    tokenizer = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
                    return cls(model, preprocess, tokenizer, **options)
                except Exception as error:  # download or load failed: report it, let the run go on
                    reason = f"cannot load {model_name}/{pretrained} with open_clip: {error}"
        logger.warning("%s not computed: %s", NAME, reason)
        return cls(**options, reason=reason)

    @property
    def available(self) -> bool:
        return self.model is not None

    @torch.no_grad()
    def scores(self, images, captions: list[str]) -> torch.Tensor:
        """Per-sample CLIP scores (B,) of images (see ``image_batch``) against their captions.

        Not torchmetrics' CLIPScore: that clamps the mean of the cosines at 0 (we clamp each
        sample) and cuts captions at 77 tokens by slicing, dropping the end token (open_clip's
        tokenizer keeps it), so the two differ where cosines are negative or captions long."""
        if not self.available:
            raise RuntimeError(f"{NAME} is not available: {self.reason}")
        images = image_batch(images, NAME)
        if len(captions) != len(images):
            raise UserError(f"{NAME}: {len(images)} images but {len(captions)} captions")
        from torchvision.transforms.functional import to_pil_image

        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            pixels = torch.stack([self.preprocess(to_pil_image((x * 255).round().to(torch.uint8)))
                                  for x in chunk]).to(self.device)
            tokens = self.tokenizer(list(captions[start:start + self.batch_size])).to(self.device)
            cos = F.cosine_similarity(self.model.encode_image(pixels).float(),
                                      self.model.encode_text(tokens).float(), dim=-1)
            out.append(100 * cos.clamp_min(0).cpu())
        return torch.cat(out)



def _missing_weights(open_clip, model_name: str, pretrained: str, cache_dir: str | None) -> str | None:
    """Why the weights are not on this machine, or None when they are (no network used)."""
    if model_name.startswith("local-dir:") or os.path.isfile(pretrained):
        return None  # local files: open_clip reports what is wrong with them
    if model_name.startswith("hf-hub:"):
        from huggingface_hub import try_to_load_from_cache

        repo = model_name[len("hf-hub:"):]
        if isinstance(try_to_load_from_cache(repo, "open_clip_config.json", cache_dir=cache_dir), str):
            return None
        return (f"{repo} is not in the local Hugging Face cache "
                f"(fetch it once where the hub is reachable: {_FETCH})")
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        return f"open_clip knows no pretrained weights {pretrained!r} for {model_name} (tags: {tags})"
    if cfg.get("file"):
        return None if os.path.isfile(cfg["file"]) else f"weights file {cfg['file']} not found"
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        # 'org/repo/' names the default file; open_clip prefers its safetensors twin.
        repo, filename = os.path.split(cfg["hf_hub"])
        candidates = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"] if not filename else \
            [filename[:-4] + ".safetensors", filename] if filename.endswith((".bin", ".pth")) else [filename]
        if any(isinstance(try_to_load_from_cache(repo, name, cache_dir=cache_dir), str) for name in candidates):
            return None
        return (f"weights {repo}/{candidates[-1]} are not in the local Hugging Face cache "
                f"(fetch them once where the hub is reachable: {_FETCH})")
    url = cfg.get("url", "")
    target = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))
    if os.path.isfile(target):
        return None
    return f"weights {url} are not in the local cache ({target}); fetch them once with download=True"


METRIC = Metric(
    NAME, "100 * max(cos(image, caption), 0) with open_clip (default ViT-L-14 / openai)",
    (MetricSpec(NAME, NAME, "CLIP score", "{:.2f}", True, 0.01, True),),
    lambda config, device: PerSampleScorer(ClipScore.load(config.clip_model, config.clip_pretrained, device=device,
                                                          download=config.download_weights), with_captions=True))
