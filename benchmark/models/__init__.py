"""Model adapters: load a text-to-image pipeline, list its quantization targets, generate,
and swap targets for quantized modules and back.

    from benchmark.models import load_model
    model = load_model("embedded")                       # the shipped model, offline
    model = load_model("PixArt-alpha/PixArt-Sigma-XL-2-512-MS", torch.float16, "cuda")
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import _compat  # noqa: F401  (torchvision shim before diffusers)
from .base import ROLES, Generation, ModelAdapter, TargetGroup, find_targets

__all__ = ["MODELS", "ROLES", "Generation", "ModelAdapter", "TargetGroup", "find_targets", "load_model"]

MODELS = {
    "embedded": "the shipped small pixel-space PixArt transformer (offline, minutes on a CPU)",
    "PixArt-alpha/PixArt-Sigma-XL-2-512-MS": "PixArt-Sigma 512 px (the paper's setting), hub id or its local folder",
    "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS": "PixArt-Sigma 1024 px",
    "PATH": "a local diffusers PixArt pipeline folder, or an embedded-model folder (embedded.json)",
}


def load_model(name_or_path: str = "embedded", dtype: torch.dtype | str = torch.float32,
               device: str | torch.device = "cpu", cache_dir: str | None = None) -> ModelAdapter:
    """``"embedded"``: the shipped model; a folder with ``embedded.json``: an embedded model
    trained elsewhere; anything else: a hub id or local folder of a PixArt pipeline
    (``cache_dir``: the hub cache to read, default the standard one)."""
    if isinstance(dtype, str):
        dtype = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
                 "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}.get(dtype) or \
            _raise(ValueError(f"unknown dtype {dtype!r}: use fp32, fp16 or bf16"))
    if name_or_path == "embedded" or (Path(name_or_path) / "embedded.json").is_file():
        from .embedded import EmbeddedAdapter
        return EmbeddedAdapter.load(None if name_or_path == "embedded" else name_or_path, dtype, device)
    from .pixart import PixArtAdapter
    return PixArtAdapter.load(name_or_path, dtype, device, cache_dir)


def _raise(error: Exception):
    raise error
