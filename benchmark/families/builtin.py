"""The built-in model families: where each diffusion transformer's quantization targets are.

Each is a ``Family`` declaration (``benchmark.families.targets``): per block list, the roles and the
linears that read each role's input, and the linears left in full precision with the reason.
A family from another package registers the same way under the ``hadabench.families`` entry
point group, or from a plugin file with ``FAMILIES = {"name": Family(...)}``.

What every family leaves out, and why: the adaptive-norm modulation linears inside the
blocks (``norm1.linear`` and the like) read the timestep (and pooled text) embedding, one
vector per sample rather than a sequence of tokens: a per-token activation grid and a
per-sample mean are meaningless there, and PixArt's equivalent (adaLN-single) sits outside
its blocks, so the paper does not quantize it either. Embedders and the final projection are
outside the blocks and stay in full precision in every family, as in the paper.

``unet`` (Stable Diffusion 1.x / 2.x, HQ-DM's setting) is the one UNet: its targets are also
k x k convolutions (the ResNet blocks' and the resamplers'), quantized per pixel over the
input channels (``benchmark.transform.conv``); its block lists are nested
(``down_blocks.*.resnets``, ``down_blocks.*.attentions.*.transformer_blocks``, ...).
"""

from __future__ import annotations

from functools import partial

from benchmark.families.examples import tiny_transformer
from benchmark.families.targets import Family

__all__ = ["FAMILIES", "PIXART_ROLES"]

_MODULATION = ("adaptive-norm modulation: reads the timestep/pooled-text embedding, one vector "
               "per sample, not a token sequence (PixArt keeps its adaLN-single outside the blocks)")


def _example(name: str):
    return tiny_transformer(name)


_TIME_EMBEDDING = ("reads the timestep embedding: one vector per sample, not pixels (a per-pixel grid "
                   "and a per-sample mean are meaningless there), like the transformers' modulation")
_NORMS = "normalization (GroupNorm / LayerNorm): not a linear map of the channels, nothing to quantize"
_DEPTHWISE = ("depthwise 3x3 convolution: mixes no channels (nothing for a channel transform to fold "
              "into) and costs 9 multiply-adds per channel and pixel")

# UNet2DConditionModel (SD 1.x / 2.x). ResNet blocks: conv1 reads norm1(x) (after SiLU), conv2
# reads norm2(h) (after SiLU), conv_shortcut (1x1, where the width changes) reads x itself.
_RESNET_ROLES = {
    "resnet_conv1": ("conv1",),
    "resnet_conv2": ("conv2",),
    "resnet_shortcut": ("conv_shortcut",),
}
# Transformer2DModel around the transformer blocks: proj_in (1x1 conv in SD 1.x, a linear in
# SD 2.x) reads the group-normed pixels, proj_out the last block's output.
_PROJ_ROLES = {"proj_in": ("proj_in",), "proj_out": ("proj_out",)}


PIXART_ROLES = {
    "self_attn_qkv": ("attn1.to_q", "attn1.to_k", "attn1.to_v"),
    "self_attn_out": ("attn1.to_out.0",),
    "cross_attn_q": ("attn2.to_q",),
    "cross_attn_kv": ("attn2.to_k", "attn2.to_v"),  # from the text
    "cross_attn_out": ("attn2.to_out.0",),
    "ffn_up": ("ff.net.0.proj",),
    "ffn_down": ("ff.net.2",),
}

# MMDiT joint attention (SD3, FLUX's double-stream blocks): the image and the text tokens have
# their own projections and feed-forwards and meet only inside the attention.
_JOINT_ROLES = {
    "image_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "text_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "image_attn_out": ("attn.to_out.0",),
    "text_attn_out": ("attn.to_add_out",),
    "image_ffn_up": ("ff.net.0.proj",),
    "image_ffn_down": ("ff.net.2",),
    "text_ffn_up": ("ff_context.net.0.proj",),
    "text_ffn_down": ("ff_context.net.2",),
}

FAMILIES = {
    "pixart": Family(
        name="pixart",
        description="PixArt-Sigma and PixArt-alpha (and the embedded model): self-attention, "
                    "cross-attention to the text, GELU feed-forward",
        transformer=("PixArtTransformer2DModel",),
        blocks={"transformer_blocks": PIXART_ROLES},
        pipelines=("PixArtSigmaPipeline", "PixArtAlphaPipeline"),
        # binning maps sizes to the checkpoints' aspect buckets (we ask for supported squares);
        # caption cleaning needs bs4 + ftfy, so results would depend on them
        pipeline_kwargs={"use_resolution_binning": False, "clean_caption": False},
        example=partial(_example, "pixart"),
    ),
    "sd3": Family(
        name="sd3",
        description="Stable Diffusion 3 / 3.5 (MMDiT): joint attention over image and text "
                    "streams; 3.5's dual-attention blocks add an image-only attention (attn2)",
        transformer=("SD3Transformer2DModel",),
        blocks={"transformer_blocks": {
            **_JOINT_ROLES,
            "image_attn2_qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
            "image_attn2_out": ("attn2.to_out.0",),
        }},
        # the last block only reads the text (context_pre_only): no text output or FFN;
        # attn2 exists only in SD3.5's dual-attention blocks
        optional=("text_attn_out", "text_ffn_up", "text_ffn_down", "image_attn2_qkv",
                  "image_attn2_out"),
        exclude={"norm1.linear": _MODULATION, "norm1_context.linear": _MODULATION},
        pipelines=("StableDiffusion3Pipeline",),
        example=partial(_example, "sd3"),
    ),
    "flux": Family(
        name="flux",
        description="FLUX.1: double-stream MMDiT blocks (image and text streams), then "
                    "single-stream blocks whose attention and MLP read one normed sequence",
        transformer=("FluxTransformer2DModel",),
        blocks={
            "transformer_blocks": _JOINT_ROLES,
            "single_transformer_blocks": {
                # q, k, v and the MLP's up-projection all read the same normed tokens
                "single_qkv_mlp": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
                # reads the concatenation of the attention output and the MLP activation
                "single_out": ("proj_out",),
            },
        },
        exclude={"norm1.linear": _MODULATION, "norm1_context.linear": _MODULATION,
                 "norm.linear": _MODULATION},
        pipelines=("FluxPipeline",),
        example=partial(_example, "flux"),
    ),
    "sana": Family(
        name="sana",
        description="Sana: linear (ReLU-kernel) self-attention, cross-attention to the text, "
                    "GLUMBConv feed-forward: its 1x1 convolutions are quantized as linears over "
                    "the channels of each pixel; its depthwise 3x3 convolution mixes no channels "
                    "and stays in full precision",
        transformer=("SanaTransformer2DModel",),
        blocks={"transformer_blocks": {
            "self_attn_qkv": ("attn1.to_q", "attn1.to_k", "attn1.to_v"),
            "self_attn_out": ("attn1.to_out.0",),
            "cross_attn_q": ("attn2.to_q",),
            "cross_attn_kv": ("attn2.to_k", "attn2.to_v"),
            "cross_attn_out": ("attn2.to_out.0",),
            # 1x1 conv to value and gate (2 x 2.5 C channels), then the depthwise 3x3, then
            # the 1x1 conv back to C from the gated activation
            "ffn_up": ("ff.conv_inverted",),
            "ffn_down": ("ff.conv_point",),
        }},
        exclude={"ff.conv_depth": _DEPTHWISE},
        pipelines=("SanaPipeline",),
        pipeline_kwargs={"use_resolution_binning": False, "clean_caption": False},
        example=partial(_example, "sana"),
    ),
    "unet": Family(
        name="unet",
        description="Stable Diffusion 1.x / 2.x UNet (UNet2DConditionModel): ResNet blocks' 3x3 "
                    "convolutions and the down/up-sampling convolutions as per-pixel targets over their "
                    "input channels, transformer blocks (self-attention, cross-attention to the text, "
                    "GEGLU feed-forward) between proj_in and proj_out",
        transformer=("UNet2DConditionModel",),
        # numbered down, mid, up; within each, ResNet blocks, transformers, resamplers
        blocks={
            "down_blocks.*.resnets": _RESNET_ROLES,
            "down_blocks.*.attentions": _PROJ_ROLES,
            "down_blocks.*.attentions.*.transformer_blocks": PIXART_ROLES,
            "down_blocks.*.downsamplers": {"downsample": ("conv",)},  # 3x3, stride 2
            "mid_block.resnets": _RESNET_ROLES,
            "mid_block.attentions": _PROJ_ROLES,
            "mid_block.attentions.*.transformer_blocks": PIXART_ROLES,
            "up_blocks.*.resnets": _RESNET_ROLES,
            "up_blocks.*.attentions": _PROJ_ROLES,
            "up_blocks.*.attentions.*.transformer_blocks": PIXART_ROLES,
            "up_blocks.*.upsamplers": {"upsample": ("conv",)},  # 3x3 after nearest upsampling
        },
        # the shortcut exists where a ResNet block changes the width; the last down block and
        # the last up block have no resampler
        optional=("resnet_shortcut", "downsample", "upsample"),
        exclude={"time_emb_proj": _TIME_EMBEDDING, "norm*": _NORMS},
        pipelines=("StableDiffusionPipeline",),
        example=partial(_example, "unet"),
    ),
}
