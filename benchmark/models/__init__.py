"""Model adapters: load a text-to-image pipeline, list its quantization targets, generate,
and swap targets for quantized modules and back.

    from benchmark.models import load_model
    model = load_model("embedded")                       # the shipped model, offline
    model = load_model("PixArt-alpha/PixArt-Sigma-XL-2-512-MS", torch.float16, "cuda")
    model = load_model("black-forest-labs/FLUX.1-dev")   # any registered family's pipeline
"""

from __future__ import annotations

from pathlib import Path

import torch

from benchmark import _compat  # noqa: F401  (torchvision shim before diffusers)
from benchmark.errors import UserError
from benchmark.models.base import ROLES, Generation, ModelAdapter, TargetGroup, find_targets
from benchmark.registry import Registry

__all__ = ["ADAPTERS", "MODELS", "ROLES", "Generation", "ModelAdapter", "TargetGroup", "find_targets",
           "load_model"]


def _check_adapter(name: str, value) -> None:
    if not (isinstance(value, type) and issubclass(value, ModelAdapter)):
        raise UserError(f"model adapter {name!r} must be a ModelAdapter subclass, not {value!r}")


# How a model is loaded, by name (entry-point group ``hadabench.models``): ``--model <name>`` loads
# that adapter's own model (``Adapter.load(None, dtype, device)``); "pipeline" is the one for any
# diffusers pipeline (a hub id or a folder), and a folder with embedded.json is an embedded model.
ADAPTERS = Registry("model adapter", "hadabench.models", {
    "embedded": "benchmark.models.embedded:EmbeddedAdapter",
    "pipeline": "benchmark.models.pipeline:PipelineAdapter",
}, check=_check_adapter)
PIPELINE = "pipeline"

MODELS = {
    "embedded": "the shipped small pixel-space PixArt transformer (offline, minutes on a CPU)",
    "PixArt-alpha/PixArt-Sigma-XL-2-512-MS": "PixArt-Sigma 512 px (the paper's setting), hub id or its local folder",
    "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS": "PixArt-Sigma 1024 px",
    "PixArt-alpha/PixArt-XL-2-512x512": "PixArt-alpha 512 px (family pixart)",
    "stabilityai/stable-diffusion-3-medium-diffusers": "SD3 medium (family sd3)",
    "stabilityai/stable-diffusion-3.5-medium": "SD3.5 medium, dual-attention blocks (family sd3)",
    "stabilityai/stable-diffusion-3.5-large": "SD3.5 large (family sd3)",
    "black-forest-labs/FLUX.1-dev": "FLUX.1-dev (family flux)",
    "black-forest-labs/FLUX.1-schnell": "FLUX.1-schnell (family flux)",
    "Efficient-Large-Model/Sana_1600M_1024px_diffusers": "Sana 1.6B 1024 px (family sana)",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "Stable Diffusion 1.5, a convolutional UNet (family unet)",
    "PATH": "a local diffusers pipeline folder of any family ('hadabench ls'), or an "
            "embedded-model folder (embedded.json)",
}


def load_model(name_or_path: str = "embedded", dtype: torch.dtype | str = torch.float32,
               device: str | torch.device = "cpu", cache_dir: str | None = None) -> ModelAdapter:
    """``"embedded"``: the shipped model; a folder with ``embedded.json``: an embedded model
    trained elsewhere; anything else: a hub id or local folder of a diffusers pipeline whose
    transformer a registered family describes (``cache_dir``: the hub cache to read, default
    the standard one)."""
    if isinstance(dtype, str):
        dtype = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
                 "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}.get(dtype) or \
            _raise(ValueError(f"unknown dtype {dtype!r}: use fp32, fp16 or bf16"))
    if name_or_path != PIPELINE and name_or_path in ADAPTERS:
        return ADAPTERS.entry(name_or_path).value.load(None, dtype, device)
    if (Path(name_or_path) / "embedded.json").is_file():
        return ADAPTERS.entry("embedded").value.load(name_or_path, dtype, device)
    return ADAPTERS.entry(PIPELINE).value.load(name_or_path, dtype, device, cache_dir)


def _raise(error: Exception):
    raise error
