"""ImageReward (Xu et al. 2023): a BLIP reward model of human preference, per caption, higher is better.

The score, exactly as the reference package ``image-reward`` (THUDM) computes it
(``ImageReward.score``): the image resized to 224 (bicubic) and centre-cropped, normalised with
CLIP's mean and std; BLIP's ViT-L/16 encodes it; the caption, tokenized by BERT's
``bert-base-uncased`` tokenizer (with BLIP's added ``[DEC]`` and ``[ENC]`` tokens, padded or cut
to 35 tokens), goes through BLIP's text encoder, a BERT with cross-attention to the image
tokens in every layer; the [CLS] state goes through the reward head (five linear layers, no
activations) and is standardised, ``(r − 0.16717362830052426) / 1.0333394966054072``.

Implementation: transformers' BLIP modules (``BlipVisionModel``, ``BlipTextModel``, ports of the
same BLIP code) with the official checkpoint's tensors renamed to them (``convert``), and the
head here. Not the ``image-reward`` package itself: it pins ``timm==0.6.13`` and
``fairscale==0.4.13`` and imports transformers internals that transformers 5 no longer has, so
it cannot be installed next to this project's pins. The tests check this implementation
against the reference formula written out from the package's ``vit.py``, ``med.py`` and
``ImageReward.py`` on a random-weight checkpoint in the official format.

Files (the reference package's own layout, ``~/.cache/ImageReward/``): ``ImageReward.pt``
(1.7 GB) and ``med_config.json`` from the Hugging Face repository ``THUDM/ImageReward``, and the
``bert-base-uncased`` tokenizer from the Hugging Face cache. Any missing: "not computed", with
the reason (``hadabench run --download-weights`` fetches them). Images are scored as the 8-bit
PNGs a user would see.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from benchmark.errors import UserError
from benchmark.metrics.base import PerSampleScore, PerSampleScorer, logger
from benchmark.metrics.fidelity import to_uint8
from benchmark.metrics.registry import Metric, MetricSpec

__all__ = ["METRIC", "ImageReward", "ImageRewardModel", "convert", "default_folder"]

NAME = "image_reward"
REPO = "THUDM/ImageReward"
FILES = ("ImageReward.pt", "med_config.json")
TOKENIZER = "bert-base-uncased"
MEAN, STD = 0.16717362830052426, 1.0333394966054072  # ImageReward.py: the reward's standardisation
MAX_TOKENS = 35
IMAGE_SIZE = 224
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
VIT_EPS = 1e-6  # BLIP's ViT: partial(nn.LayerNorm, eps=1e-6)
HEAD = (0, 2, 4, 6, 7)  # the Linear layers of ImageReward's MLP (1, 3, 5 are dropouts)
_FETCH = ("hadabench run --download-weights, or: huggingface-cli download " + REPO + " " + " ".join(FILES)
          + " --local-dir {folder}")


def default_folder() -> Path:
    """Where the reference package keeps its files: ``~/.cache/ImageReward``."""
    return Path(os.path.expanduser("~/.cache/ImageReward"))


_VISION_RENAMES = ((r"^cls_token$", "embeddings.class_embedding"), (r"^pos_embed$", "embeddings.position_embedding"),
                   (r"^patch_embed\.proj\.", "embeddings.patch_embedding."), (r"^norm\.", "post_layernorm."),
                   (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
                   (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
                   (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
                   (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
                   (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."))


def convert(state: dict) -> tuple[dict, dict, dict]:
    """The official checkpoint's tensors as (vision, text, head) state dicts of ``ImageRewardModel``:
    ``blip.visual_encoder.*`` renamed to transformers' ``BlipVisionModel``, ``blip.text_encoder.*``
    as they are (transformers' ``BlipTextModel`` keeps BLIP's names), ``mlp.layers.{0,2,4,6,7}``."""
    vision, text, head = {}, {}, {}
    for key, value in state.items():
        if key.startswith("blip.visual_encoder."):
            name = key[len("blip.visual_encoder."):]
            for pattern, replacement in _VISION_RENAMES:
                if re.match(pattern, name):
                    vision[re.sub(pattern, replacement, name)] = value
                    break
            else:
                raise UserError(f"{NAME}: unexpected vision tensor {key} in the checkpoint")
        elif key.startswith("blip.text_encoder.") and not key.endswith("position_ids"):
            text[key[len("blip.text_encoder."):]] = value
        elif key.startswith("mlp.layers."):
            index, rest = key[len("mlp.layers."):].split(".", 1)
            head[f"{HEAD.index(int(index))}.{rest}"] = value
    return vision, text, head


class ImageRewardModel(torch.nn.Module):
    """BLIP's ViT and text encoder (transformers' modules) and ImageReward's head, sized from the
    checkpoint's tensors and ``med_config.json``."""

    def __init__(self, state: dict, med_config: dict):
        super().__init__()
        from transformers import BlipTextConfig, BlipVisionConfig, BlipVisionModel
        from transformers.models.blip.modeling_blip_text import BlipTextModel

        vision_state, text_state, head_state = convert(state)
        width = vision_state["embeddings.class_embedding"].shape[-1]
        patch = vision_state["embeddings.patch_embedding.weight"].shape[-1]
        tokens = vision_state["embeddings.position_embedding"].shape[1] - 1
        side = round(tokens ** 0.5) * patch
        depth = len({k.split(".")[2] for k in vision_state if k.startswith("encoder.layers.")})
        vision_config = BlipVisionConfig(
            hidden_size=width, intermediate_size=vision_state["encoder.layers.0.mlp.fc1.weight"].shape[0],
            num_hidden_layers=depth, num_attention_heads=width // 64, image_size=side, patch_size=patch,
            hidden_act="gelu", layer_norm_eps=VIT_EPS, attention_dropout=0.0)
        text_config = BlipTextConfig(
            vocab_size=med_config["vocab_size"], hidden_size=med_config["hidden_size"],
            intermediate_size=med_config["intermediate_size"], num_hidden_layers=med_config["num_hidden_layers"],
            num_attention_heads=med_config["num_attention_heads"],
            max_position_embeddings=med_config["max_position_embeddings"],
            layer_norm_eps=med_config["layer_norm_eps"], hidden_act=med_config["hidden_act"],
            encoder_hidden_size=width, is_decoder=True, pad_token_id=med_config.get("pad_token_id", 0),
            bos_token_id=None, sep_token_id=None)
        if side != IMAGE_SIZE:
            raise UserError(f"{NAME}: the checkpoint's ViT takes {side} px images; ImageReward's take {IMAGE_SIZE}")
        self.vision = BlipVisionModel(vision_config)
        self.text = BlipTextModel(text_config, add_pooling_layer=False)
        hidden = med_config["hidden_size"]
        sizes = [head_state[f"{i}.weight"].shape for i in range(len(HEAD))]
        self.head = torch.nn.Sequential(*(torch.nn.Linear(s[1], s[0]) for s in sizes))
        if sizes[0][1] != hidden:
            raise UserError(f"{NAME}: the reward head takes {sizes[0][1]} features, the text encoder gives {hidden}")
        self.vision.load_state_dict(vision_state, strict=True)
        self.text.load_state_dict(text_state, strict=True)
        self.head.load_state_dict(head_state, strict=True)
        self.eval()

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Standardised rewards (B,) of preprocessed images and tokenized captions."""
        image = self.vision(pixel_values=pixels).last_hidden_state
        text = self.text(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image,
                         encoder_attention_mask=torch.ones(image.shape[:-1], dtype=torch.long, device=image.device))
        reward = self.head(text.last_hidden_state[:, 0, :].float())
        return ((reward - MEAN) / STD).reshape(-1)


def preprocess(images) -> torch.Tensor:
    """ImageReward's ``_transform(224)``: Resize(224, bicubic) of the PIL image, CenterCrop(224),
    ToTensor, Normalize(CLIP's mean and std); on the 8-bit images as saved."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor
    from torchvision.transforms.functional import to_pil_image

    transform = Compose([Resize(IMAGE_SIZE, interpolation=InterpolationMode.BICUBIC), CenterCrop(IMAGE_SIZE),
                         ToTensor(), Normalize(CLIP_MEAN, CLIP_STD)])
    return torch.stack([transform(to_pil_image(image).convert("RGB")) for image in to_uint8(images, NAME)])


def load_tokenizer(source: str = TOKENIZER, download: bool = False):
    """BLIP's tokenizer: BERT's, plus ``[DEC]`` (bos) and ``[ENC]`` (ImageReward's ``init_tokenizer``)."""
    from transformers import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(source, local_files_only=not download)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


class ImageReward(PerSampleScore):
    """Accumulates ImageReward over batches: ``update(images, captions)``, then ``result()``."""

    NAME = NAME

    def __init__(self, model=None, tokenizer=None, *, details: dict, device="cpu", batch_size: int = 8,
                 reason: str | None = None):
        if (model is None or tokenizer is None) and reason is None:
            raise UserError("ImageReward needs its model and tokenizer, or the reason why there are none")
        self.model = model.to(device) if model is not None else None
        self.tokenizer, self.details, self.reason = tokenizer, details, reason
        self.device, self.batch_size = torch.device(device), batch_size
        self.reset()

    @classmethod
    def load(cls, folder: str | Path | None = None, tokenizer: str = TOKENIZER, *, device="cpu",
             batch_size: int = 8, download: bool = False) -> ImageReward:
        """The checkpoint and ``med_config.json`` from ``folder`` (default ``~/.cache/ImageReward``)
        and the tokenizer (a hub name in the local cache, or a folder); "not computed" if any is missing."""
        folder = Path(folder) if folder is not None else default_folder()
        details = {"implementation": "transformers BLIP (BlipVisionModel, BlipTextModel) + ImageReward's head, "
                                     "the image-reward package's score() formula",
                   "checkpoint": str(folder / FILES[0]), "tokenizer": str(tokenizer),
                   "images": "uint8 as saved to PNG; resized to 224 (bicubic), centre-cropped",
                   "standardisation": f"(reward - {MEAN}) / {STD}"}
        if download and not all((folder / name).is_file() for name in FILES):
            try:
                from huggingface_hub import hf_hub_download

                for name in FILES:
                    hf_hub_download(repo_id=REPO, filename=name, local_dir=os.fspath(folder))
            except Exception as error:  # no hub: the reason below says which file is missing
                logger.warning("%s: download from %s failed: %s", NAME, REPO, error)
        missing = [name for name in FILES if not (folder / name).is_file()]
        if missing:
            reason = f"{', '.join(missing)} not found in {folder} ({_FETCH.format(folder=folder)})"
        else:
            try:
                tok = load_tokenizer(tokenizer, download)
            except Exception as error:  # not in the cache (offline) or not a tokenizer folder
                reason = (f"the {tokenizer} tokenizer cannot be loaded ({type(error).__name__}: {error}); fetch it "
                          f"once where the hub is reachable: hadabench run --download-weights")
            else:
                try:
                    med_config = json.loads((folder / FILES[1]).read_text())
                    state = torch.load(folder / FILES[0], map_location="cpu", weights_only=True)
                    model = ImageRewardModel(state, med_config)
                    if med_config["vocab_size"] < len(tok):
                        raise UserError(f"the tokenizer has {len(tok)} tokens, the text encoder "
                                        f"{med_config['vocab_size']}")
                    return cls(model, tok, details=details, device=device, batch_size=batch_size)
                except Exception as error:  # a corrupt or foreign file: report it, let the run go on
                    reason = f"cannot build ImageReward from {folder}: {type(error).__name__}: {error}"
        logger.warning("%s not computed: %s", NAME, reason)
        return cls(details=details, device=device, batch_size=batch_size, reason=reason)

    @property
    def available(self) -> bool:
        return self.model is not None

    def scores(self, images, captions: list[str]) -> torch.Tensor:
        """Per-image ImageReward (B,), float64, of images (8-bit as saved) against their captions."""
        if not self.available:
            raise RuntimeError(f"{NAME} is not available: {self.reason}")
        pixels = preprocess(images)
        if len(captions) != len(pixels):
            raise UserError(f"{NAME}: {len(pixels)} images but {len(captions)} captions")
        out = []
        for start in range(0, len(pixels), self.batch_size):
            text = self.tokenizer(list(captions[start:start + self.batch_size]), padding="max_length",
                                  truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
            out.append(self.model(pixels[start:start + self.batch_size].to(self.device),
                                  text.input_ids.to(self.device), text.attention_mask.to(self.device)).double().cpu())
        return torch.cat(out)


METRIC = Metric(
    NAME, "ImageReward (THUDM, BLIP reward model of human preference) of each image and its caption",
    (MetricSpec(NAME, NAME, "ImageReward", "{:.3f}", True, 0.001, True),),
    lambda config, device: PerSampleScorer(ImageReward.load(device=device, download=config.download_weights),
                                           with_captions=True))
