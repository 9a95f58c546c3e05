"""A PixArt-Sigma-sized transformer with random weights, its inputs, and swapping its targets for
quantized modules: the stand-in of the memory probe, the GPU timing script and their tests."""

from __future__ import annotations

import torch

from benchmark.models.base import ModelAdapter
from benchmark.transform.base import CalibrationStats

__all__ = ["build_pixart", "pixart_inputs", "swap_in"]


class _Transformer(ModelAdapter):
    """A bare transformer behind the adapter interface, for its target swapping."""

    name = "pixart-sized"

    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer

    def generate(self, *args, **kwargs):
        raise NotImplementedError("timing only: call the transformer directly")

    def fingerprint(self) -> dict:
        return {"model": self.name}


def swap_in(model, transform: str, params: dict, precision: str = "w4a4", fused: bool = False,
            kernel: str | None = None):
    """Quantize every target group of ``model`` (with random calibration statistics: the
    values do not matter for timing); returns a function that undoes it."""
    adapter = _Transformer(model)
    stats = {}
    for group in adapter.targets():
        channels = group.in_features
        stats[group.name] = CalibrationStats.from_activations(
            torch.randn(1, 64, channels, generator=torch.Generator().manual_seed(channels)))
    kernel = kernel or ("triton" if fused else "torch")
    adapter.quantize(transform, precision, stats, kernel=kernel, **params)
    return adapter.restore


def build_pixart(latent: int, layers: int = 28, heads: int = 16, head_dim: int = 72,
                 caption_channels: int = 4096):
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    return PixArtTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=head_dim, num_layers=layers,
        cross_attention_dim=heads * head_dim, sample_size=latent, caption_channels=caption_channels,
        interpolation_scale=max(1, latent // 64), use_additional_conditions=False).eval()


def pixart_inputs(model, batch: int, text_tokens: int, device, dtype):
    cfg = model.config
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(batch, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=gen)
    text = torch.randn(batch, text_tokens, cfg.caption_channels, generator=gen)
    return dict(hidden_states=latents.to(device, dtype), encoder_hidden_states=text.to(device, dtype),
                timestep=torch.full((batch,), 999, device=device),
                added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)


