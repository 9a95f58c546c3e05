"""PixArt-Sigma (and PixArt-alpha) through diffusers' own pipeline.

    PixArtAdapter.load("PixArt-alpha/PixArt-Sigma-XL-2-512-MS", torch.float16, "cuda")

Generation calls the pipeline itself (the code a user with the real weights runs) with one
``torch.Generator`` per caption, stops at the final latents, and decodes them with the VAE.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Sequence

import torch

from .base import Generation, ModelAdapter

__all__ = ["PixArtAdapter", "PIPELINE_CLASSES"]

PIPELINE_CLASSES = ("PixArtSigmaPipeline", "PixArtAlphaPipeline")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


@contextlib.contextmanager
def _logs_only_on_success(names=("diffusers", "transformers")):
    """The libraries' log lines while loading, printed only once the load has succeeded: a
    failed load is one error line, not the warnings printed on the way to failing."""
    held: list[logging.LogRecord] = []

    def hold(record):
        held.append(record)
        return False

    handlers = [h for name in names for h in logging.getLogger(name).handlers]
    for handler in handlers:
        handler.addFilter(hold)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(hold)
    for record in held:  # reached only without an exception
        logging.getLogger(record.name).handle(record)


class PixArtAdapter(ModelAdapter):
    name = "pixart"
    guidance_scale = 4.5  # the pipeline's own default

    def __init__(self, pipe, source: str):
        super().__init__()
        if type(pipe).__name__ not in PIPELINE_CLASSES:
            raise ValueError(f"{source} is a {type(pipe).__name__}, not one of {', '.join(PIPELINE_CLASSES)}")
        self.pipe, self.source = pipe, source
        self.transformer = pipe.transformer
        self.device, self.dtype = pipe.transformer.device, pipe.transformer.dtype

    @classmethod
    def load(cls, name_or_path: str, dtype: torch.dtype = torch.float32,
             device: str | torch.device = "cpu", cache_dir: str | None = None) -> "PixArtAdapter":
        """A hub id (from the hub cache, ``cache_dir`` or the default one, when HF_HUB_OFFLINE=1)
        or a local pipeline folder."""
        from diffusers import DiffusionPipeline

        try:
            # model_index.json names the pipeline class, so Sigma and alpha both load here.
            with _logs_only_on_success():
                pipe = DiffusionPipeline.from_pretrained(name_or_path, dtype=dtype, cache_dir=cache_dir)
        except (OSError, EnvironmentError) as error:
            raise ValueError(f"cannot load a pipeline from {name_or_path!r}: {str(error).splitlines()[0]}") from error
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        pipe.transformer.eval().requires_grad_(False)
        return cls(pipe, str(name_or_path))

    def _folder(self) -> Path:
        return Path(self.pipe.transformer.config._name_or_path or "")

    def fingerprint(self) -> dict:
        """Path, sizes and mtimes of the transformer's weight files (hashing GBs is too slow)."""
        folder = self._folder()
        files = sorted(p for p in folder.glob("*") if p.suffix in _WEIGHT_SUFFIXES) if folder.is_dir() else []
        if not files:
            raise ValueError(f"cannot fingerprint {self.source}: no weight files in {folder}")
        return {"model": self.source, "pipeline": type(self.pipe).__name__, "dtype": str(self.dtype),
                "transformer_config": json.loads(json.dumps(dict(self.transformer.config), default=str)),
                "weights": [{"path": str(p.resolve()), "bytes": p.stat().st_size,
                             "mtime_ns": p.stat().st_mtime_ns} for p in files]}

    def default_settings(self) -> dict:
        return {"guidance_scale": self.guidance_scale, "resolution": self._resolution()}

    def _resolution(self) -> int:
        return self.transformer.config.sample_size * self.pipe.vae_scale_factor

    @torch.no_grad()
    def generate(self, captions: Sequence[str], seeds: Sequence[int], steps: int = 20,
                 batch_size: int = 16, guidance_scale: float | None = None,
                 resolution: int | None = None) -> Generation:
        captions, seeds = list(captions), [int(s) for s in seeds]
        if len(captions) != len(seeds):
            raise ValueError(f"{len(captions)} captions but {len(seeds)} seeds")
        guidance = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        size = resolution or self._resolution()
        latents = []
        for start in range(0, len(captions), batch_size):
            chunk = captions[start:start + batch_size]
            generators = [torch.Generator("cpu").manual_seed(s) for s in seeds[start:start + batch_size]]
            out = self.pipe(prompt=chunk, generator=generators, num_inference_steps=steps,
                            guidance_scale=guidance, height=size, width=size, output_type="latent",
                            use_resolution_binning=False,  # we ask for square sizes it already supports
                            clean_caption=False,  # needs bs4 + ftfy; off so results do not depend on them
                            return_dict=True)
            latents.append(out.images)
        latents = torch.cat(latents)
        images = []
        vae = self.pipe.vae
        for start in range(0, len(latents), batch_size):
            chunk = latents[start:start + batch_size].to(vae.dtype)
            decoded = vae.decode(chunk / vae.config.scaling_factor, return_dict=False)[0]
            images.append((decoded.float() / 2 + 0.5).clamp(0, 1).cpu())
        return Generation(captions, seeds, latents.float().cpu(), torch.cat(images),
                          {"steps": steps, "guidance_scale": guidance, "resolution": size})
