"""A tiny randomly initialised PixArt-Sigma pipeline, built offline, saved in the hub layout.

It has the real classes (``PixArtSigmaPipeline``, ``PixArtTransformer2DModel`` with learned
sigma, ``T5EncoderModel``, ``AutoencoderKL``, ``DPMSolverMultistepScheduler``) and the real
tokenizer layout (``tokenizer/spiece.model`` + ``tokenizer_config.json``, no tokenizer.json,
from a SentencePiece model trained here), so loading it through ``PixArtAdapter`` runs the
same code as the real checkpoints, including the SentencePiece conversion that needs the
``sentencepiece`` and ``protobuf`` packages. Used by the tests and the statistics table.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import _compat  # noqa: F401  (torchvision shim before diffusers)

__all__ = ["save_tiny_pixart"]
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


def save_tiny_pixart(folder: str | Path, seed: int = 0) -> Path:
    """Build the tiny pipeline with ``seed`` and ``save_pretrained`` it into ``folder``."""
    from diffusers import (AutoencoderKL, DPMSolverMultistepScheduler, PixArtSigmaPipeline,
                           PixArtTransformer2DModel)
    from transformers import T5Config, T5EncoderModel

    from transformers import AutoTokenizer

    folder = Path(folder)
    _write_tokenizer(folder / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    torch.manual_seed(seed)
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=64, d_kv=16,
                                           num_layers=2, num_heads=2, pad_token_id=0, eos_token_id=1))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2,
                        block_out_channels=(8, 16), layers_per_block=1, sample_size=16)
    # Like PixArt-Sigma: learned sigma (out = 2 x in), ada_norm_single, caption projection.
    transformer = PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=32, sample_size=8, patch_size=2, caption_channels=32,
        use_additional_conditions=False)
    pipe = PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                               transformer=transformer, scheduler=DPMSolverMultistepScheduler())
    pipe.save_pretrained(folder)
    # save_pretrained adds tokenizer.json; the hub checkpoints have none, so loading converts
    # spiece.model (the path real users take).
    for extra in (folder / "tokenizer").iterdir():
        if extra.name not in ("spiece.model", "tokenizer_config.json", "special_tokens_map.json"):
            extra.unlink()
    (folder / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(_TOKENIZER_CONFIG, indent=1))
    return folder
