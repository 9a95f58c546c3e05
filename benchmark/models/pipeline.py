"""Any registered family through diffusers' own pipeline: PixArt-Sigma / -alpha, SD3 / 3.5,
FLUX.1, Sana.

    PipelineAdapter.load("PixArt-alpha/PixArt-Sigma-XL-2-512-MS", torch.float16, "cuda")
    PipelineAdapter.load("/path/to/a/saved/FluxPipeline")

``model_index.json`` names the pipeline class; the transformer's class names the family
(``benchmark.families.builtin``), which says where the quantization targets are. Generation calls the
pipeline itself (the code a user with the real weights runs) with one ``torch.Generator`` per
caption, stops at the final latents, and decodes them with the VAE.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmark.errors import UserError
from benchmark.families.registry import families, family_for
from benchmark.models.base import Generation, ModelAdapter

__all__ = ["PipelineAdapter"]

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


def _denoiser(pipe):
    """The pipeline's denoising network: its transformer, or a UNet pipeline's unet (SD 1.x / 2.x)."""
    transformer = getattr(pipe, "transformer", None)
    return getattr(pipe, "unet", None) if transformer is None else transformer


class PipelineAdapter(ModelAdapter):
    name = "pipeline"

    def __init__(self, pipe, source: str):
        super().__init__()
        transformer = _denoiser(pipe)
        self.family = family_for(transformer) if transformer is not None else None
        if self.family is None:
            known = ", ".join(f"{n} ({', '.join(e.value.pipelines)})" for n, e in families().items()
                              if e.value is not None)
            raise UserError(f"{source} is a {type(pipe).__name__} whose transformer "
                             f"({type(transformer).__name__}) no registered family describes; "
                             f"families: {known}")
        self.pipe, self.source = pipe, source
        self.transformer = transformer
        self.device, self.dtype = transformer.device, transformer.dtype
        # the pipeline's own default, as a user calling it without the argument gets
        self.guidance_scale = inspect.signature(type(pipe).__call__).parameters["guidance_scale"].default

    @classmethod
    def load(cls, name_or_path: str, dtype: torch.dtype = torch.float32,
             device: str | torch.device = "cpu", cache_dir: str | None = None) -> PipelineAdapter:
        """A hub id (from the hub cache, ``cache_dir`` or the default one, when HF_HUB_OFFLINE=1)
        or a local pipeline folder."""
        from diffusers import DiffusionPipeline

        try:
            with _logs_only_on_success():
                pipe = DiffusionPipeline.from_pretrained(name_or_path, dtype=dtype, cache_dir=cache_dir)
        except (OSError, ValueError) as error:  # no such folder or hub id, or not a pipeline there: the input
            raise UserError(f"cannot load a pipeline from {name_or_path!r}: {str(error).splitlines()[0]}") from error
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        _denoiser(pipe).eval().requires_grad_(False)
        return cls(pipe, str(name_or_path))

    def _folder(self) -> Path:
        return Path(self.transformer.config._name_or_path or "")

    def fingerprint(self) -> dict:
        """Path, sizes and mtimes of the transformer's weight files (hashing GBs is too slow)."""
        folder = self._folder()
        files = sorted(p for p in folder.glob("*") if p.suffix in _WEIGHT_SUFFIXES) if folder.is_dir() else []
        if not files:
            raise UserError(f"cannot fingerprint {self.source}: no weight files in {folder}")
        return {"model": self.source, "pipeline": type(self.pipe).__name__, "family": self.family.name,
                "dtype": str(self.dtype),
                "transformer_config": json.loads(json.dumps(dict(self.transformer.config), default=str)),
                "weights": [{"path": str(p.resolve()), "bytes": p.stat().st_size,
                             "mtime_ns": p.stat().st_mtime_ns} for p in files]}

    def default_settings(self) -> dict:
        return {"guidance_scale": self.guidance_scale, "resolution": self._resolution()}

    def check_steps(self, steps: int) -> None:
        # diffusers' PixArt-alpha pipeline reads one step as a one-step (DMD) model's and takes the
        # scheduler's second output, which no multi-step scheduler returns (an IndexError inside it)
        if steps == 1 and type(self.pipe).__name__ == "PixArtAlphaPipeline":
            raise UserError(f"{self.source}: PixArt-alpha's pipeline treats --steps 1 as a one-step (DMD) "
                            "model's sampling, which its scheduler does not support: use --steps 2 or more")

    def _resolution(self) -> int:
        """The transformer's native latent size in pixels; FLUX's config has none, its VAE's does."""
        sample_size = self.transformer.config.get("sample_size")
        if sample_size is None:
            return int(self.pipe.vae.config.sample_size)
        return sample_size * self.pipe.vae_scale_factor

    @torch.no_grad()
    def generate(self, captions: Sequence[str], seeds: Sequence[int], steps: int = 20,
                 batch_size: int = 16, guidance_scale: float | None = None,
                 resolution: int | None = None) -> Generation:
        captions, seeds = list(captions), [int(s) for s in seeds]
        if len(captions) != len(seeds):
            raise UserError(f"{len(captions)} captions but {len(seeds)} seeds")
        guidance = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        size = resolution or self._resolution()
        latents = []
        for start in range(0, len(captions), batch_size):
            chunk = captions[start:start + batch_size]
            generators = [torch.Generator("cpu").manual_seed(s) for s in seeds[start:start + batch_size]]
            out = self.pipe(prompt=chunk, generator=generators, num_inference_steps=steps,
                            guidance_scale=guidance, height=size, width=size, output_type="latent",
                            return_dict=True, **self.family.pipeline_kwargs)
            latents.append(self._unpacked(out.images, size))
        latents = torch.cat(latents)
        images = []
        vae = self.pipe.vae
        shift = getattr(vae.config, "shift_factor", None)
        for start in range(0, len(latents), batch_size):
            chunk = latents[start:start + batch_size].to(vae.dtype) / vae.config.scaling_factor
            if shift is not None:  # SD3 / FLUX VAEs
                chunk = chunk + shift
            decoded = vae.decode(chunk, return_dict=False)[0]
            images.append((decoded.float() / 2 + 0.5).clamp(0, 1).cpu())
        return Generation(captions, seeds, latents.float().cpu(), torch.cat(images),
                          {"steps": steps, "guidance_scale": guidance, "resolution": size})

    def _unpacked(self, latents: torch.Tensor, size: int) -> torch.Tensor:
        """FLUX returns its latents packed in 2x2 patches, (N, tokens, 4C): unpack to (N, C, H, W)."""
        if latents.dim() == 3 and hasattr(self.pipe, "_unpack_latents"):
            return self.pipe._unpack_latents(latents, size, size, self.pipe.vae_scale_factor)
        return latents
