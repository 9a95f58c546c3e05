"""k x k convolutions under the affine transforms (HQ-DM's setting: a UNet's ResNet convolutions).

A convolution ``nn.Conv2d(C_in, C_out, (kh, kw), groups=1)`` is, at every tap ``(ky, kx)``, a
linear map of the input channels of one pixel. Every transform acts along the input channels,
per pixel (each pixel is a token), and folds into every tap of the kernel::

    x~[:, p] = R diag(s)^-1 (x[:, p] - mu)              online, per pixel p (mu: this sample's
                                                        channel means over its pixels)
    W~[:, :, ky, kx] = W[:, :, ky, kx] diag(s) R^T       offline, for every tap, then quantized
    y = conv(x~, W~) + conv(mu_map, W) + b               exact at full precision

**Weight blocks.** The kernel is quantized as its *tap linear*
``W.permute(0, 2, 3, 1).reshape(C_out * kh * kw, C_in)``: one row per (output channel, ky, kx),
quantized row-wise in blocks of ``precision.weight_block`` (128) input channels, exactly as a
linear's rows are. That keeps the reduction-dimension blocking: each block of 128 input
channels of each (out, ky, kx) has its own grid, and the activation grid (per pixel, over all
its input channels) meets it along the same dimension.

**Centering.** With zero padding, ``conv(x - mu_map)`` is not ``conv(x) - const`` near the
borders (the padded pixels are 0, not mu). The correction ``conv(mu_map, W)``, with ``mu_map``
this sample's channel means broadcast over the image (a constant map) and the *original*
kernel, zero padded like the convolution, is exactly what was removed, borders included: the
conv analogue of ``correction="exact"``. It is computed in the activations' precision as
``sum_tap (W_tap mu) * inside_tap``, where ``inside_tap`` says whether the tap reads a pixel
inside the image (the convolution of an all-ones image with the one-hot kernel of the tap, so
stride, padding, dilation and padding mode follow the convolution's). The token corrections
(``"quantized_token"``, ``"fp_token"``) have no border-correct conv analogue; a centering
transform asking for one gets ``"exact"`` on a convolution, and ``describe()`` records both.

The online part and the folded, quantized weights are the transform's own: ``quantize_conv``
asks the ``AffineTransform`` to quantize the tap linear (``ConvTaps``, so scales, the alpha
search, the Hadamard rotation, weight grids, GPTQ and FP4 formats all come from
``benchmark.transform.base``), and ``ConvTransformed`` runs its online part on the pixels and
convolves with the tap weights reshaped back into a kernel. Only the ``AffineTransform``
design space does this; another transform (a plugin's own module) is refused.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import UserError
from benchmark.quant.grid import Precision
from benchmark.transform.base import AffineTransform, CalibrationStats, QuantizedGroup, Transform, TransformedLinear

__all__ = ["ConvTaps", "ConvTransformed", "conv_refusal", "quantize_conv"]


def conv_refusal(conv: nn.Module) -> str | None:
    """Why a ``nn.Conv2d`` cannot be a target (None: it can)."""
    if conv.groups != 1:
        kind = "depthwise" if conv.groups == conv.in_channels else f"grouped ({conv.groups} groups)"
        return (f"{kind} convolution: each output reads only its own group of input channels, so a "
                "transform that mixes the input channels cannot fold into its kernel")
    return None


class ConvTaps(nn.Module):
    """The tap linear of a ``nn.Conv2d``: ``(C_out * kh * kw, C_in)``, the kernel's rows per
    (output channel, ky, kx) over the input channels, without the bias. Its output at a pixel
    is every tap's contribution of that pixel; the convolution sums them at shifted positions.

    It stands for a k x k convolution in a ``TargetGroup`` (``linears``), so that everything
    that sees a group's members as linears over the channels of a token (calibration, the
    exactness check, ``validate``) sees the convolution's algebra. ``weight`` is computed from
    the convolution on each access (no copy kept)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        reason = conv_refusal(conv)
        if reason is not None:
            raise UserError(f"cannot quantize a {type(conv).__name__}: {reason}")
        self.conv = conv
        kh, kw = conv.kernel_size
        self.in_features, self.out_features = conv.in_channels, conv.out_channels * kh * kw
        self.bias = None

    @property
    def weight(self) -> torch.Tensor:
        return self.conv.weight.detach().permute(0, 2, 3, 1).reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"taps of {self.conv.kernel_size}: in_features={self.in_features}, out_features={self.out_features}"


class ConvTransformed(QuantizedGroup):
    """A k x k convolution behind an affine transform: reads and returns (N, C, H, W) (a
    1-tuple, as a group module). ``taps``: the transform's ``TransformedLinear`` of the
    convolution's tap linear (its online part and its folded, quantized weight)."""

    def __init__(self, conv: nn.Conv2d, taps: TransformedLinear, requested_correction: str | None = None):
        super().__init__()
        self.taps = taps
        kh, kw = conv.kernel_size
        self.out_channels, self.kernel_size = conv.out_channels, (kh, kw)
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.padding_mode = conv.padding_mode
        self._reversed_padding = getattr(conv, "_reversed_padding_repeated_twice", None)
        self.requested_correction = requested_correction
        self.register_buffer("conv_bias", None if conv.bias is None else conv.bias.detach().clone())
        self._inside: dict = {}  # (H, W, device, dtype) -> (kh*kw, H_out, W_out)

    @property
    def folded_kernel(self) -> torch.Tensor:
        """The folded, quantized kernel (C_out, C_in, kh, kw): a view of the tap weight."""
        kh, kw = self.kernel_size
        return self.taps.quantized_weight().view(self.out_channels, kh, kw, -1).permute(0, 3, 1, 2)

    def use_kernel(self, kernel: str) -> ConvTransformed:
        """The online part's path ("auto", "torch", "triton", "compile"), as ``TransformedLinear``."""
        self.taps.use_kernel(kernel)
        return self

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``F.conv2d`` with the convolution's stride, padding (and padding mode), dilation."""
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding, mode=self.padding_mode)
            return F.conv2d(x, weight, bias, self.stride, 0, self.dilation)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation)

    def _inside_taps(self, size, device, dtype) -> torch.Tensor:
        """(kh*kw, H_out, W_out): 1 where the tap reads a pixel of the image, 0 where padding."""
        key = (*size, device, dtype)
        if key not in self._inside:
            kh, kw = self.kernel_size
            one_hot = torch.eye(kh * kw, device=device, dtype=dtype).view(kh * kw, 1, kh, kw)
            self._inside[key] = self._conv(torch.ones(1, 1, *size, device=device, dtype=dtype), one_hot)[0]
        return self._inside[key]

    def mean_term(self, mu: torch.Tensor, size) -> torch.Tensor:
        """conv(mu_map, W) with the original kernel: mu (N, 1, C_in) -> (N, C_out, H_out, W_out)."""
        original = self.taps.original_weight.to(mu.dtype)  # (C_out * kh * kw, C_in)
        per_tap = F.linear(mu[:, 0], original).view(mu.shape[0], self.out_channels, -1)  # W_tap mu
        return torch.einsum("nok,khw->nohw", per_tap, self._inside_taps(size, mu.device, mu.dtype))

    def forward(self, x: torch.Tensor):
        if x.dim() != 4:
            raise UserError(f"a quantized convolution reads (N, C, H, W), got shape {tuple(x.shape)}")
        tokens = x.flatten(2).transpose(1, 2)  # (N, H*W, C): every pixel a token
        mu = tokens.mean(dim=-2, keepdim=True) if self.taps.center else None
        online = self.taps.online(tokens, mu, self.taps.precision.activation_bits, transient=self.taps.transient)
        y = self._conv(online.transpose(1, 2).unflatten(2, x.shape[2:]), self.folded_kernel.to(online.dtype),
                       None if self.conv_bias is None else self.conv_bias.to(online.dtype))
        if mu is not None:
            y = y + self.mean_term(mu, x.shape[2:]).to(y.dtype)
        return (y,)

    def describe(self) -> dict:
        out = {**self.taps.describe(), "layer": "conv2d", "kernel_size": list(self.kernel_size),
               "weight_rows": "(C_out, ky, kx), blocked along the input channels as a linear's rows"}
        if self.taps.center:
            out["correction"] = "exact"  # conv(mu_map, W), border-correct
            if self.requested_correction not in (None, "exact"):
                out["requested_correction"] = self.requested_correction
        return out


def quantize_conv(transform: Transform, conv: nn.Conv2d | ConvTaps, precision: Precision | str,
                  stats: CalibrationStats | None, kernel: str = "auto") -> ConvTransformed:
    """``transform`` on a k x k convolution (``groups=1``): the module that replaces it.

    ``stats``: calibration statistics of the convolution's input per pixel, (N, H*W, C_in)
    tokens (what ``benchmark.calibrate`` records for it). ``transform`` must be an
    ``AffineTransform`` whose module is the harness's ``TransformedLinear``; a centering one
    gets the exact, border-correct correction (module docstring)."""
    name = getattr(transform, "name", type(transform).__name__)
    if not isinstance(transform, AffineTransform):
        raise UserError(f"transform {name!r} does not support convolutions (only the AffineTransform design "
                        "space folds into a k x k kernel); leave the convolutions out with filter_fn")
    taps = conv if isinstance(conv, ConvTaps) else ConvTaps(conv)
    requested = transform.correction if transform.center else None
    affine = transform
    if transform.center and transform.correction != "exact":
        affine = dataclasses.replace(transform, correction="exact")  # keeps the original kernel for W mu
    module = affine.quantize([taps], precision, stats)
    if type(module) is not TransformedLinear:
        raise UserError(f"transform {name!r} does not support convolutions: it builds its own "
                        f"{type(module).__name__}, which does not fold into a k x k kernel")
    return ConvTransformed(taps.conv, module, requested).use_kernel(kernel)
