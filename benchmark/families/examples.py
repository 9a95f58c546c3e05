"""Tiny randomly initialised pipelines of every family, built offline, saved in the hub layout.

Each has the real classes of its family (PixArt-Sigma / -alpha: ``PixArtTransformer2DModel``,
T5, ``AutoencoderKL``; SD3: ``SD3Transformer2DModel`` with two CLIP encoders and T5; FLUX:
``FluxTransformer2DModel`` with CLIP and T5; Sana: ``SanaTransformer2DModel`` with Gemma-2 and
``AutoencoderDC``; SD 1.5: ``UNet2DConditionModel`` with CLIP and ``AutoencoderKL`` in a
``StableDiffusionPipeline``, no safety checker) and the real tokenizer files (T5:
``spiece.model`` from a SentencePiece model trained here, no tokenizer.json, so loading runs
the conversion the hub checkpoints need; CLIP and Gemma: byte-level/character BPE
vocabularies written here), so loading one through ``load_model`` runs the same code as the
real checkpoints. Used by the tests, ``hadabench
validate`` (``tiny_transformer``) and ``python -m benchmark.models.speed``.

    save_tiny("flux", "/tmp/tiny-flux")     # then: hadabench run --model /tmp/tiny-flux ...
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from benchmark import _compat  # noqa: F401  (torchvision shim before diffusers)
from benchmark.errors import UserError

__all__ = ["TINY", "save_tiny", "save_tiny_pixart", "tiny_transformer"]
_TOKENIZER_CONFIG = {"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "model_max_length": 300,
                     "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}

_WORDS = ("a an the of on in with and to at by is two three red green blue yellow white black "
          "purple gray brown small large cat dog man woman person table street car bus train "
          "plate food pizza sitting standing top left right bottom center background circle "
          "square triangle cross photo picture room window tree sky water field").split()


def _write_tokenizer(folder: Path) -> None:
    """A T5 tokenizer folder as the PixArt checkpoints ship it: a SentencePiece unigram model."""
    import io
    import itertools

    import sentencepiece as spm

    words = _WORDS
    text = [" ".join(words[i:i + 6]) for i in range(len(words))]
    text += [" ".join(pair) for pair in itertools.combinations(words[:20], 2)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_writer=model, vocab_size=120, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, num_threads=1,
        minloglevel=2)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps(_TOKENIZER_CONFIG, indent=1))


def _byte_vocab(specials: list[str], suffix: str = "") -> dict[str, int]:
    """Every byte-level character (and, with ``suffix``, its end-of-word form): no merges
    needed, any text tokenizes."""
    from tokenizers.pre_tokenizers import ByteLevel

    chars = sorted(ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(specials)}
    for token in chars + ([c + suffix for c in chars] if suffix else []):
        vocab.setdefault(token, len(vocab))
    return vocab


def _clip(projection: bool):
    """A CLIP text encoder with its tokenizer (the SD3 and FLUX layout)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tokenizer = CLIPTokenizer(vocab=_byte_vocab(["<|startoftext|>", "<|endoftext|>"], "</w>"),
                              merges=[], model_max_length=77)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37,
                            num_hidden_layers=2, num_attention_heads=4, projection_dim=32,
                            max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return tokenizer, (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _t5(folder: Path, d_model: int):
    """A T5 encoder and the hub's T5 tokenizer layout (spiece.model, converted on load)."""
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    _write_tokenizer(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=d_model, d_ff=2 * d_model,
                                      d_kv=16, num_layers=2, num_heads=2, pad_token_id=0, eos_token_id=1))
    return tokenizer, encoder


def _gemma():
    """A Gemma-2 text encoder (Sana's) with a character-level Gemma tokenizer."""
    from transformers import Gemma2Config, Gemma2Model, GemmaTokenizer

    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "▁"])}
    for byte in range(256):  # byte fallback, as Gemma's own vocabulary has
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for char in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;'\"-!?()":
        vocab.setdefault(char, len(vocab))
    tokenizer = GemmaTokenizer(vocab=vocab, merges=[])
    encoder = Gemma2Model(Gemma2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                       head_dim=16, pad_token_id=0, eos_token_id=1, bos_token_id=2))
    return tokenizer, encoder


def _vae_kl(latent_channels: int, flow: bool):
    from diffusers import AutoencoderKL

    extra = {"use_quant_conv": False, "use_post_quant_conv": False, "shift_factor": 0.0609,
             "scaling_factor": 1.5035} if flow else {}  # SD3/FLUX's VAE: shift, no quant convs
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels, norm_num_groups=8,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         block_out_channels=(8, 16), layers_per_block=1, sample_size=32 if flow else 16, **extra)


# The tiny transformers, one per family (``tiny_transformer``): real classes, random weights.
TINY = {
    # Like PixArt-Sigma: learned sigma (out = 2 x in), ada_norm_single, caption projection.
    "pixart": ("PixArtTransformer2DModel", dict(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=32, sample_size=8, patch_size=2, caption_channels=32,
        use_additional_conditions=False)),
    # Like SD3.5: qk RMS norm, block 0 a dual-attention (MMDiT-X) block, the last one context_pre_only.
    "sd3": ("SD3Transformer2DModel", dict(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=32,
        pooled_projection_dim=64, pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm")),
    # Like FLUX.1-dev: guidance embedding, packed 2x2 latents (16 = 4 latent channels x 4).
    "flux": ("FluxTransformer2DModel", dict(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 4, 8))),
    "sana": ("SanaTransformer2DModel", dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
        num_cross_attention_heads=2, cross_attention_head_dim=16, cross_attention_dim=32,
        caption_channels=32, sample_size=16, patch_size=1)),  # Sana wants sizes divisible by 32
    # Like SD 1.5's UNet, two levels: cross-attention down block (its ResNet, transformer, 3x3
    # stride-2 downsampler), plain down block (a width change: 1x1 shortcut), the cross-attention
    # mid block, plain up block (upsampler), cross-attention up block; every input width has a
    # Hadamard matrix (32, 64, 96, 128, 256).
    "unet": ("UNet2DConditionModel", dict(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)),
}
VARIANTS = ("pixart-sigma", "pixart-alpha", "sd3", "flux", "sana", "sd15")


def tiny_transformer(family: str, seed: int | None = 0):
    """The tiny random transformer of ``family`` (a key of ``TINY``); ``seed=None`` draws from
    the current random state (a pipeline draws all its components from one seeded stream)."""
    import diffusers

    cls, kwargs = TINY[family]
    if seed is not None:
        torch.manual_seed(seed)
    return getattr(diffusers, cls)(**kwargs).eval().requires_grad_(False)


def save_tiny(variant: str, folder: str | Path, seed: int = 0) -> Path:
    """Build the tiny pipeline of ``variant`` (one of ``VARIANTS``) and save it into ``folder``."""
    import diffusers

    if variant not in VARIANTS:
        raise UserError(f"unknown tiny variant {variant!r}; one of {', '.join(VARIANTS)}")
    folder = Path(folder)
    torch.manual_seed(seed)
    if variant.startswith("pixart"):
        tokenizer, text_encoder = _t5(folder / "tokenizer", 32)
        cls = diffusers.PixArtSigmaPipeline if variant == "pixart-sigma" else diffusers.PixArtAlphaPipeline
        pipe = cls(tokenizer=tokenizer, text_encoder=text_encoder, vae=_vae_kl(4, flow=False),
                   transformer=tiny_transformer("pixart", None),
                   scheduler=diffusers.DPMSolverMultistepScheduler())
    elif variant == "sd3":
        (tok1, enc1), (tok2, enc2) = _clip(True), _clip(True)
        tok3, enc3 = _t5(folder / "tokenizer_3", 64)
        pipe = diffusers.StableDiffusion3Pipeline(
            transformer=tiny_transformer("sd3", None), scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
            vae=_vae_kl(4, flow=True), text_encoder=enc1, tokenizer=tok1, text_encoder_2=enc2,
            tokenizer_2=tok2, text_encoder_3=enc3, tokenizer_3=tok3)
    elif variant == "flux":
        tok1, enc1 = _clip(False)
        tok2, enc2 = _t5(folder / "tokenizer_2", 32)
        pipe = diffusers.FluxPipeline(
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True),
            vae=_vae_kl(4, flow=True), text_encoder=enc1, tokenizer=tok1, text_encoder_2=enc2,
            tokenizer_2=tok2, transformer=tiny_transformer("flux", None))
    elif variant == "sd15":
        tokenizer, text_encoder = _clip(False)
        # SD 1.5's own scheduler settings (PLMS, scaled-linear betas)
        scheduler = diffusers.PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                            skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
        pipe = diffusers.StableDiffusionPipeline(
            vae=_vae_kl(4, flow=False), text_encoder=text_encoder, tokenizer=tokenizer,
            unet=tiny_transformer("unet", None), scheduler=scheduler, safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)
    else:
        from diffusers import AutoencoderDC

        tokenizer, text_encoder = _gemma()
        vae = AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=2,
                            encoder_block_types=("ResBlock", "EfficientViTBlock"),
                            decoder_block_types=("ResBlock", "EfficientViTBlock"),
                            encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                            encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
                            encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
                            downsample_block_type="conv", upsample_block_type="interpolate",
                            scaling_factor=0.41407)
        # Sana's own scheduler settings: flow matching through DPM-Solver
        scheduler = diffusers.DPMSolverMultistepScheduler(prediction_type="flow_prediction",
                                                          use_flow_sigmas=True, flow_shift=3.0)
        pipe = diffusers.SanaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                                      transformer=tiny_transformer("sana", None), scheduler=scheduler)
    pipe.save_pretrained(folder)
    # save_pretrained adds tokenizer.json to the T5 folders; the hub checkpoints have none, so
    # loading converts spiece.model (the path real users take).
    for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        sub = folder / name
        if (sub / "spiece.model").is_file():
            for extra in sub.iterdir():
                if extra.name not in ("spiece.model", "tokenizer_config.json", "special_tokens_map.json"):
                    extra.unlink()
            (sub / "tokenizer_config.json").write_text(json.dumps(_TOKENIZER_CONFIG, indent=1))
    return folder


def save_tiny_pixart(folder: str | Path, seed: int = 0) -> Path:
    """The tiny PixArt-Sigma pipeline (``save_tiny("pixart-sigma", ...)``)."""
    return save_tiny("pixart-sigma", folder, seed)
