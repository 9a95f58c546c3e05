"""Activation transforms: the plugin API and the one design space the baselines live in.

Every shipped transform is an invertible affine map of a linear layer's input, folded into
its weights so that the full-precision output does not change (docs/transforms.md)::

    x~ = R diag(s)^-1 (x - mu)      online, per token (mu: this sample's channel means)
    W~ = W diag(s) R^T              offline, folded once, then quantized
    y  = W~ x~ + W mu + b           exact, since W~ x~ = W (x - mu)

``AffineTransform`` is that map with its three switches (center, scale, rotate); each
baseline in ``baselines/`` is one point of it. A plugin that does something else entirely
subclasses ``Transform`` and returns its own module from ``quantize``.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.errors import UserError
from benchmark.quant.formats import quantize_fp4
from benchmark.quant.gptq import gptq_quantize_weight
from benchmark.quant.grid import Precision, quantize_weight, straight_through
from benchmark.quant.hadamard import HadamardRotation
from benchmark.quant.kernels import Workspace, online_function, resolve_kernel

__all__ = [
    "AffineTransform", "CalibrationStats", "CORRECTIONS", "QuantizedGroup", "Transform",
    "TransformedLinear",
]

# How the per-sample bias correction W mu reaches the output (only for centering transforms).
CORRECTIONS = {
    "quantized_token": "m~ = R diag(s)^-1 mu appended as one more token: quantized per token "
                       "and multiplied by the quantized W~, like every other token (the paper)",
    "fp_token": "m~ kept in full precision, multiplied by the quantized W~",
    "exact": "W mu with the original full-precision weights",
}
# When each AffineTransform parameter has an effect (others are refused away from their default).
_NEEDS = {"block_size": "only the rotation 'block' uses it", "seed": "it draws random signs, "
          "and random_signs is off", "correction": "only a centering transform adds W mu back"}
AUTO_ALPHA_GRID = tuple(round(0.1 * i, 1) for i in range(11))
_HESSIAN_CHUNK = 8192  # tokens per float64 matmul when accumulating X^T X: bounded extra memory
# The torch path's buffers, shared by every group: in a thread, one group's input is
# transformed at a time, and that group's matmul consumes the result before the next
# (emptied when a quantization is restored).
WORKSPACE = Workspace()
_EPS = 1e-5


@dataclass
class CalibrationStats:
    """What a transform may learn about one input from calibration data.

    Statistics are over all calibration tokens of all samples; "centered" means each
    token minus the mean of its own sample (what a centering transform quantizes).
    ``sample`` is a bounded subsample of raw activations, (samples, tokens, channels),
    for searches such as ``alpha="auto"``. They live on the CPU, wherever the activations
    were (as when read back from the calibration cache); a transform moves what it uses.

    ``hessian`` and ``centered_hessian`` (only when asked for: ``hessian=True``; each one
    channels x channels, float64, however many tokens): GPTQ's Hessian ``2 X^T X / tokens`` over
    ALL calibration tokens, of the raw tokens and of the centred ones. GPTQ weight rounding
    (``weight_rounding="gptq"``) needs them.
    """

    absmax: torch.Tensor
    centered_absmax: torch.Tensor
    mean: torch.Tensor
    tokens: int
    sample: torch.Tensor | None = None
    hessian: torch.Tensor | None = None
    centered_hessian: torch.Tensor | None = None

    @classmethod
    def from_activations(cls, x: torch.Tensor, max_sample_tokens: int = 4096,
                         seed: int = 0, hessian: bool = False) -> CalibrationStats:
        """Statistics of ``x``: (samples, tokens, channels), or (tokens, channels) for one.
        ``hessian``: also the two Hessians, from every token of ``x``."""
        x = x.detach().float()
        if x.dim() == 2:
            x = x[None]
        if x.dim() != 3 or x.shape[1] == 0:
            raise UserError(f"calibration activations must be (samples, tokens, channels), "
                             f"got shape {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise UserError("calibration activations contain NaN or Inf")
        centered = x - x.mean(dim=1, keepdim=True)
        per_sample = max(1, max_sample_tokens // x.shape[0])
        if x.shape[1] > per_sample:
            gen = torch.Generator().manual_seed(seed)
            keep = torch.randperm(x.shape[1], generator=gen)[:per_sample].sort().values
            sample = x[:, keep]
        else:
            sample = x
        tokens = x.shape[0] * x.shape[1]
        return cls(
            absmax=x.abs().amax(dim=(0, 1)).cpu(),
            centered_absmax=centered.abs().amax(dim=(0, 1)).cpu(),
            mean=x.mean(dim=(0, 1)).cpu(),
            tokens=tokens,
            sample=sample.cpu().clone(),
            hessian=_hessian(x, tokens) if hessian else None,
            centered_hessian=_hessian(centered, tokens) if hessian else None,
        )

    def merge(self, other: CalibrationStats, max_sample_tokens: int = 4096) -> CalibrationStats:
        """Combine the statistics of two disjoint sets of samples."""
        total = self.tokens + other.tokens
        samples = [s for s in (self.sample, other.sample) if s is not None]
        sample = None
        if samples:
            tokens = min(s.shape[1] for s in samples)
            sample = torch.cat([s[:, :tokens] for s in samples])
            keep = max(1, max_sample_tokens // tokens)
            sample = sample[-keep:] if sample.shape[0] > keep else sample
        def weighted(a, b):  # a mean over each part's tokens, over all of them (None unless both have it)
            return None if a is None or b is None else (a * self.tokens + b * other.tokens) / total

        return CalibrationStats(
            absmax=torch.maximum(self.absmax, other.absmax),
            centered_absmax=torch.maximum(self.centered_absmax, other.centered_absmax),
            mean=(self.mean * self.tokens + other.mean * other.tokens) / total,
            tokens=total,
            sample=sample,
            hessian=weighted(self.hessian, other.hessian),
            centered_hessian=weighted(self.centered_hessian, other.centered_hessian),
        )


def _hessian(x: torch.Tensor, tokens: int) -> torch.Tensor:
    """``2 X^T X / tokens`` of the tokens of ``x`` (..., channels), in float64 on the CPU,
    accumulated in chunks (bounded extra memory) on ``x``'s device."""
    rows = x.reshape(-1, x.shape[-1])
    xtx = torch.zeros(rows.shape[1], rows.shape[1], dtype=torch.float64, device=x.device)
    for chunk in rows.split(_HESSIAN_CHUNK):
        chunk = chunk.double()
        xtx.addmm_(chunk.T, chunk)
    return xtx.mul_(2.0 / tokens).cpu()


class QuantizedGroup(nn.Module):
    """What a transform returns: one module standing for a group of linears that read the
    same input. ``forward(x)`` returns a tuple with one output per linear, in order.
    ``describe()`` says what was done, for the results."""

    def describe(self) -> dict:
        return {}


class Transform(abc.ABC):
    """A plugin. ``quantize`` replaces a group of linears that share their input.

    ``linears``: the group (q/k/v, cross-attention k/v, or one linear); ``precision``: the
    bit widths; ``stats``: calibration statistics of the group's input, or None when the
    caller has none (a transform that needs them raises a ValueError then).
    """

    name: str = "transform"

    @abc.abstractmethod
    def quantize(self, linears: Sequence[nn.Linear], precision: Precision,
                 stats: CalibrationStats | None) -> QuantizedGroup:
        ...

    def config(self) -> dict:
        """The transform's hyper-parameters, recorded with every result."""
        return {}


def smoothquant_scale(absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha)  (Xiao et al., 2023)."""
    w_absmax = weight.abs().amax(dim=0).clamp(min=_EPS)
    return (absmax.clamp(min=_EPS) ** alpha / w_absmax ** (1 - alpha)).clamp(min=_EPS)


class TransformedLinear(QuantizedGroup):
    """Linears sharing an input, behind one centre/scale/rotate transform and quantizers.

    The group's folded weights are stacked into one matrix, so the whole group costs one
    transform of the input and one matmul.
    """

    def __init__(self, linears: Sequence[nn.Linear], precision: Precision, *, center: bool,
                 scale: torch.Tensor | None, rotation: HadamardRotation | None,
                 correction: str = "quantized_token", info: dict | None = None,
                 stats: CalibrationStats | None = None):
        super().__init__()
        weight = torch.cat([lin.weight.detach() for lin in linears])
        dtype, device = weight.dtype, weight.device
        self.out_features = [lin.out_features for lin in linears]
        self.precision, self.center, self.correction = precision, center, correction
        self.info = dict(info or {})
        biases = [lin.bias.detach() if lin.bias is not None
                  else torch.zeros(lin.out_features, dtype=dtype, device=device) for lin in linears]
        self.register_buffer("bias", torch.cat(biases) if any(lin.bias is not None for lin in linears) else None)

        # The online part computes in float32 whatever the model's dtype (kernels.__init__), so
        # the scales and the weight quantizer do too: 1/s of a near-dead channel (up to 1e5) is
        # inf in float16, and a bfloat16 grid rounds worse than one rounding at the end.
        self.exact_dtype = torch.promote_types(dtype, torch.float32)
        # kept (one vector) so that fine-tuning can fold the original weights again (``fold``)
        self.fold_scale = None if scale is None else scale.detach()
        if scale is not None:
            self.register_buffer("inv_scale", (1.0 / scale.double()).to(dtype=self.exact_dtype, device=device))
        else:
            self.inv_scale = None
        self.rotation = rotation.to(device) if rotation is not None else None
        self.latent = None  # quantization-aware fine-tuning's weight (``train_weight``)
        folded = self.fold(weight)
        if precision.weight_bits is not None and precision.weight_format != "int":
            folded = quantize_fp4(folded, precision.weight_format)  # blocks along the input channels
        elif precision.weight_bits is not None and precision.weight_rounding == "gptq":
            folded = gptq_quantize_weight(folded, self._gptq_hessian(stats, folded.shape[1], device),
                                          precision.weight_bits, precision.weight_block,
                                          symmetric=precision.weight_symmetric, grid=precision.grid)
        elif precision.weight_bits is not None:
            folded = quantize_weight(folded, precision.weight_bits, precision.weight_block,
                                     precision.weight_symmetric, precision.grid)
        # contiguous: quantize_weight may return a strided view
        self.register_buffer("weight", folded.to(dtype).contiguous())
        # Only the exact correction needs the original weights (full precision W mu).
        keep_original = center and correction == "exact"
        self.register_buffer("original_weight", weight.clone() if keep_original else None)
        self.use_kernel("auto")

    def fold(self, weight: torch.Tensor) -> torch.Tensor:
        """The folded weight ``W diag(s) R^T`` of ``weight`` (the group's stacked original
        weights), before quantization, in float32 or wider."""
        folded = weight.double()
        if self.fold_scale is not None:
            folded = folded * self.fold_scale.double().to(weight.device)
        if self.rotation is not None:
            folded = self.rotation(folded)  # rows: (W diag(s) R^T)^T = R diag(s) W^T
        return folded.to(self.exact_dtype)

    # -- quantization-aware fine-tuning (benchmark.run.qat) --
    def train_weight(self, weight: torch.Tensor) -> nn.Parameter:
        """Make the folded full-precision weight of ``weight`` (the group's stacked original
        weights) a parameter: until ``settle``, the forward quantizes it on every call with the
        straight-through gradient. Round-to-nearest weights only (GPTQ's rounding has no STE)."""
        if self.precision.weight_rounding != "rtn":
            raise UserError(f"quantization-aware fine-tuning rounds weights to nearest, not by "
                            f"{self.precision.weight_rounding}")
        self.latent = nn.Parameter(self.fold(weight.detach()))
        return self.latent

    def settle(self) -> None:
        """End fine-tuning: the trained weight, quantized as at construction, becomes the weight."""
        if self.latent is None:
            return
        with torch.no_grad():
            self.weight = self.precision.quantize_weight(self.latent).to(self.weight.dtype).contiguous()
        self.latent = None

    def quantized_weight(self) -> torch.Tensor:
        """The quantized weight the forward multiplies: the buffer, or while fine-tuning the
        trained weight quantized now, with the straight-through gradient."""
        if self.latent is None:
            return self.weight
        quantized = self.precision.quantize_weight(self.latent.detach())
        return straight_through(self.latent, quantized).to(self.weight.dtype)

    @property
    def transient(self) -> bool:
        """Whether the online result may live in the shared workspace: not while fine-tuning,
        when autograd keeps it for the backward pass."""
        return self.latent is None

    @property
    def activation_format(self) -> str:
        """The activations' number format: "int" (also when they stay in full precision), or FP4."""
        return "int" if self.precision.activation_bits is None else self.precision.activation_format

    def _gptq_hessian(self, stats: CalibrationStats | None, channels: int, device) -> torch.Tensor:
        """GPTQ's Hessian of what the folded weight multiplies: ``A H A^T`` with the transform's
        linear part ``A = R diag(s)^-1`` (H: of the raw tokens; exactly the Hessian of the
        transformed tokens ``A x``). Centering: the mean token ``A mu`` meets the same quantized
        weight once per token of its sample (``quantized_token``, ``fp_token``), so a weight's
        error reaches each output through ``A (x - mu) + A mu = A x``: the raw tokens' Hessian
        again; only ``correction="exact"`` (W mu in full precision) leaves ``A (x - mu)``, the
        centred tokens' Hessian."""
        centred = self.center and self.correction == "exact"
        hessian = None if stats is None else stats.centered_hessian if centred else stats.hessian
        if hessian is None:
            raise UserError("weight_rounding='gptq' needs the Hessian of the layer's input: calibrate with "
                            "benchmark.calibrate(..., hessian=True), or pass quantize_linear a tensor of "
                            "calibration activations")
        if stats.tokens < channels:
            raise UserError(f"weight_rounding='gptq' over {channels} input channels needs at least {channels} "
                            f"calibration tokens, only {stats.tokens} seen")
        if hessian.shape != (channels, channels):
            raise UserError(f"the calibration Hessian is {tuple(hessian.shape)}, the layer has {channels} "
                            "input channels")
        h = hessian.to(device=device, dtype=torch.float64)
        if self.inv_scale is not None:  # the scales the online part uses
            inv = self.inv_scale.double()
            h = h * inv[:, None] * inv[None, :]
        if self.rotation is not None:  # rotation(M) = M R^T (each row rotated): (H R^T)^T = R H, then R H R^T
            h = self.rotation(self.rotation(h).T.contiguous())
        return h

    def use_kernel(self, kernel: str) -> TransformedLinear:
        """Run the online part with "torch", "triton" (the fused kernel), "compile" or "auto",
        resolved for the weights' device now, and again for the input's device once the
        module has moved (``model.to("cuda")`` after quantizing on the CPU, CPU offload)."""
        self.requested_kernel = kernel
        self.kernel = resolve_kernel(kernel, self.weight.device, self.activation_format)
        self.kernel_device = self.weight.device
        return self

    def online(self, x: torch.Tensor, mu: torch.Tensor | None, bits: int | None, *,
               transient: bool = False) -> torch.Tensor:
        """quantize(R diag(s)^-1 (x - mu)): the part of the transform that runs per input.
        ``transient``: the caller is done with the result before the next group runs, so the
        torch path may compute it in the shared ``WORKSPACE``."""
        fmt = self.activation_format
        if x.device != self.kernel_device:
            self.kernel, self.kernel_device = resolve_kernel(self.requested_kernel, x.device, fmt), x.device
        run = online_function(self.kernel, WORKSPACE if transient else None)
        if bits is not None and fmt != "int":  # the FP4 quantizer (torch and compiled paths only)
            return run(x, mu, self.inv_scale, self.rotation, bits, grid=self.precision.grid, fmt=fmt)
        return run(x, mu, self.inv_scale, self.rotation, bits, grid=self.precision.grid)

    def forward(self, x: torch.Tensor):
        mu = x.mean(dim=-2, keepdim=True) if self.center else None
        y = F.linear(self.online(x, mu, self.precision.activation_bits, transient=self.transient),
                     self.quantized_weight(), self.bias)
        if mu is not None:
            y += self.mean_term(mu)  # in place: y is ours
        return tuple(y.split(self.out_features, dim=-1))

    def mean_term(self, mu: torch.Tensor) -> torch.Tensor:
        """W mu, computed as the correction mode says. Quantizing the appended token on its
        own is the same as appending it to the sequence: the activation grid is per token."""
        if self.correction == "exact":
            return F.linear(mu, self.original_weight)
        bits = self.precision.activation_bits if self.correction == "quantized_token" else None
        return F.linear(self.online(mu, None, bits), self.quantized_weight())

    def describe(self) -> dict:
        p = self.precision
        out = {"precision": p.name, "format": p.format, "weight_rounding": p.weight_rounding,
               "center": self.center, "scale": self.inv_scale is not None,
               "rotation": None if self.rotation is None else self.rotation.describe(),
               "kernel": self.kernel}
        if p.format == "mixed":
            out.update(weight_format=p.weight_format, activation_format=p.activation_format)
        if self.center:
            out["correction"] = self.correction
        return {**out, **self.info}


def on_kernel(module: QuantizedGroup, kernel: str) -> QuantizedGroup:
    """``module``, its online part set to run on ``kernel`` when it is the harness's own
    ``TransformedLinear`` (a plugin's own module runs its own code)."""
    if isinstance(module, TransformedLinear):
        module.use_kernel(kernel)
    return module


@dataclass
class AffineTransform(Transform):
    """x~ = R diag(s)^-1 (x - mu), the design space of the six baselines.

    center:       subtract each sample's per-channel mean over its tokens (dynamic).
    alpha:        None for s = 1; a float in [0, 1] for SmoothQuant's rule on calibration
                  absmax (of centred activations when ``center``); "auto" to pick, per
                  group, the alpha of ``AUTO_ALPHA_GRID`` with the least quantized output
                  error on the calibration sample.
    rotation:     None, "full" (one Hadamard over all channels) or "block" (I (x) H_block).
    block_size:   block of the "block" rotation.
    random_signs: R = H D with random signs D (QuaRot); ``seed`` draws them.
    correction:   how W mu is added back, one of ``CORRECTIONS``.
    """

    name: str = "affine"
    center: bool = False
    alpha: float | str | None = None
    rotation: str | None = None
    block_size: int = 128
    random_signs: bool = False
    seed: int = 0
    correction: str = "quantized_token"

    def __post_init__(self):
        if self.rotation not in (None, "full", "block"):
            raise UserError(f"rotation must be None, 'full' or 'block', got {self.rotation!r}")
        if self.correction not in CORRECTIONS:
            raise UserError(f"correction must be one of {sorted(CORRECTIONS)}, got {self.correction!r}")
        if isinstance(self.alpha, str) and self.alpha != "auto":
            raise UserError(f"alpha must be a number in [0, 1], 'auto' or None, got {self.alpha!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float, str, type(None))):
            raise UserError(f"alpha must be a number in [0, 1], 'auto' or None, got {self.alpha!r}")
        if isinstance(self.alpha, (int, float)) and not 0 <= self.alpha <= 1:
            raise UserError(f"alpha must be in [0, 1], got {self.alpha}")
        for flag in ("center", "random_signs"):
            if not isinstance(getattr(self, flag), bool):
                raise UserError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        for number in ("block_size", "seed"):
            value = getattr(self, number)
            if isinstance(value, bool) or not isinstance(value, int) or (number == "block_size" and value < 1):
                raise UserError(f"{number} must be {'a positive' if number == 'block_size' else 'an'} "
                                 f"integer, got {value!r}")
        # A parameter set away from its default where it has no effect is refused: the run
        # would record (and label a row with) a setting that changed nothing.
        unused = {"block_size": self.rotation != "block", "seed": not self.random_signs,
                  "correction": not self.center}
        for key, ignored in unused.items():
            default = next(f.default for f in dataclasses.fields(self) if f.name == key)
            if ignored and getattr(self, key) != default:
                raise UserError(f"{key}={getattr(self, key)!r} has no effect here "
                                 f"({_NEEDS[key]}); leave it at its default {default!r}")

    def config(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "name"}

    def _rotation(self, channels: int) -> HadamardRotation | None:
        if self.rotation is None:
            return None
        block = None if self.rotation == "full" else self.block_size
        return HadamardRotation(channels, block, self.random_signs, self.seed)

    def quantize(self, linears, precision, stats=None) -> TransformedLinear:
        linears = list(linears)
        precision = Precision.parse(precision)
        channels = linears[0].in_features
        if any(lin.in_features != channels for lin in linears):
            raise UserError("the linears of a group must have the same in_features")
        rotation = self._rotation(channels)
        if self.alpha is None:
            return self._make(linears, precision, None, rotation, {}, stats)
        if stats is None:
            raise UserError(f"transform {self.name!r} scales channels (alpha={self.alpha!r}) "
                             "and needs calibration statistics")
        # the scales are computed on the CPU in float32, whatever device the model and the
        # statistics are on (statistics collected on a GPU and passed in by hand can be there)
        weight = torch.cat([lin.weight.detach() for lin in linears]).float().cpu()
        absmax = (stats.centered_absmax if self.center else stats.absmax).float().cpu()
        if self.alpha != "auto":
            scale = smoothquant_scale(absmax, weight, float(self.alpha))
            return self._make(linears, precision, scale, rotation, {"alpha": float(self.alpha)}, stats)
        return self._search_alpha(linears, precision, stats, absmax, weight, rotation)

    def _build(self, linears, precision, scale, rotation, info, stats=None) -> TransformedLinear:
        return TransformedLinear(linears, precision, center=self.center, scale=scale,
                                 rotation=rotation, correction=self.correction, info=info, stats=stats)

    def _make(self, linears, precision, scale, rotation, info, stats) -> QuantizedGroup:
        """``_build``, handing it the statistics (``stats=``) only for GPTQ, which needs their
        Hessian: a subclass's ``_build(linears, precision, scale, rotation, info)`` written
        without it keeps working for round-to-nearest, and is refused for GPTQ."""
        if precision.weight_rounding == "rtn":
            return self._build(linears, precision, scale, rotation, info)
        parameters = inspect.signature(self._build).parameters.values()
        if not any(p.name == "stats" or p.kind is p.VAR_KEYWORD for p in parameters):
            raise UserError(f"transform {self.name!r} builds its modules without the calibration statistics "
                            f"(its _build takes no stats=), so it cannot do weight_rounding="
                            f"{precision.weight_rounding!r}")
        return self._build(linears, precision, scale, rotation, info, stats=stats)

    @torch.no_grad()
    def _search_alpha(self, linears, precision, stats, absmax, weight, rotation):
        if stats.sample is None:
            raise UserError("alpha='auto' needs calibration activations (CalibrationStats.sample)")
        device, dtype = linears[0].weight.device, linears[0].weight.dtype
        sample = stats.sample.to(device=device, dtype=dtype)
        reference = torch.cat([lin(sample) for lin in linears], dim=-1)
        errors = {}
        for alpha in AUTO_ALPHA_GRID:
            module = self._make(linears, precision, smoothquant_scale(absmax, weight, alpha),
                                rotation, {}, stats)
            out = torch.cat(module(sample), dim=-1)
            errors[alpha] = (out - reference).double().pow(2).mean().item()
        best = min(errors, key=errors.get)
        return self._make(linears, precision, smoothquant_scale(absmax, weight, best), rotation,
                          {"alpha": best, "alpha_search": "auto", "alpha_mse": errors[best]}, stats)


def affine(center: bool = False, alpha: float | str | None = None, rotation: str | None = None,
           random_signs: bool = False, block_size: int = 128, seed: int = 0,
           correction: str = "quantized_token") -> AffineTransform:
    """Any point of the design space, e.g. affine(center=true, rotation=full): the lattice.

    center: dynamic mean; alpha: None (s = 1), a number in [0, 1] or "auto";
    rotation: None, "full" or "block"; random_signs: R = H D (needs a rotation).
    """
    if random_signs and rotation is None:
        raise UserError("affine: random_signs=true needs a rotation (rotation=full or block)")
    return AffineTransform(name="affine", center=bool(center), alpha=alpha, rotation=rotation,
                           block_size=block_size, random_signs=bool(random_signs), seed=seed,
                           correction=correction)
