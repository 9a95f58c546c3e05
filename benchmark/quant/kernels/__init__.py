"""Fused transform-and-quantize kernels (Triton): the online part of a transform in one pass.

    out = quantize_activation(R diag(inv_scale) (x - mu), bits)      per token (last dim)

``fused_transform_quantize`` runs it as one Triton kernel on CUDA tensors (or on CPU
tensors under Triton's interpreter, ``TRITON_INTERPRET=1`` set before triton is imported);
``torch_transform_quantize`` is the same computation with the project's torch code.

Numerics: the kernel computes in float32 from the input's values and rounds once, to the
input's dtype, at the end. For float32 inputs that is the torch path itself; for fp16/bf16
inputs the torch path rounds to the input dtype after every step (x - mu, the scaling, each
Hadamard factor, the quantizer's arithmetic), so the kernel matches
``torch_transform_quantize(..., compute_dtype=torch.float32)`` and is closer to the exact
result than the native-dtype torch path. Triton is optional: nothing here imports it until a
kernel runs.

FP4 activations (``fmt="mxfp4"`` or ``"nvfp4"``, ``quant.formats``): the torch path applies
``quantize_fp4`` to the transformed tokens (in float32, cast back once), the compiled path
compiles the transform and applies the same eager ``quantize_fp4``; the fused Triton kernel
quantizes on the INT grids only, so ``resolve_kernel`` refuses "triton" for FP4 activations
and "auto" means torch there.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import threading
from dataclasses import dataclass

import torch

from benchmark.errors import UserError
from benchmark.quant.formats import FORMATS, quantize_fp4
from benchmark.quant.grid import (
    DEFAULT_GRID,
    GRIDS,
    MAX_BITS,
    MIN_BITS,
    _check_bits,
    fake_quantize,
    grid_step,
    straight_through,
)
from benchmark.quant.hadamard import HadamardRotation, apply_factors
from benchmark.quant.kernels.compiled import compile_available
from benchmark.quant.kernels.plan import plan_layout
from benchmark.registry import Registry

__all__ = [
    "AUTO", "KERNELS", "MatchReport", "kernel_choices", "Workspace", "resolve_kernel", "compare_outputs",
    "fused_supported", "fused_transform_quantize", "interpreting", "online_function", "torch_transform_quantize",
    "triton_available",
]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
PRECISIONS = ("split3", "tf32x3", "ieee")


def triton_available() -> bool:
    """True when triton can be imported (it is an optional dependency)."""
    return importlib.util.find_spec("triton") is not None


def _check_kernel(name: str, value) -> None:
    if not callable(value):
        raise UserError(f"kernel {name!r} must be a function (x, mu, inv_scale, rotation, bits, *, grid), "
                        f"not {type(value).__name__}")


# The online part's implementations, by name (entry-point group ``hadabench.kernels``: a plugin's
# function takes the torch path's arguments and raises where it cannot run). "auto" is no kernel:
# a choice that ``resolve_kernel`` makes per device.
KERNELS = Registry("kernel", "hadabench.kernels", {
    "torch": "benchmark.quant.kernels:torch_transform_quantize",
    "triton": "benchmark.quant.kernels:fused_transform_quantize",
    "compile": "benchmark.quant.kernels.compiled:compiled_transform_quantize",
}, check=_check_kernel)
AUTO = "auto"


def kernel_choices() -> tuple[str, ...]:
    """What ``--kernel`` takes: "auto", then every registered kernel (built-in ones first)."""
    return (AUTO, *KERNELS)


def _check_format(fmt: str, bits: int | None) -> None:
    if fmt != "int" and fmt not in FORMATS:
        raise UserError(f"unknown activation format {fmt!r}: use 'int', {' or '.join(map(repr, FORMATS))}")
    if fmt != "int" and bits is not None and bits != 4:
        raise UserError(f"{fmt} is a 4-bit format: bits must be 4 (or None), got {bits!r}")


def resolve_kernel(kernel: str, device: torch.device | str, fmt: str = "int") -> str:
    """The path the online transform takes on ``device``: "torch", "triton" or "compile".

    "auto" is triton on CUDA when triton is installed, torch elsewhere; "compile" is the
    torch path under torch.compile (``kernels.compiled``). A path that cannot run on
    ``device`` is an error, never a silent fallback. ``fmt``: the activations' number format
    ("int", or an FP4 format, which the fused kernel does not implement: "triton" is refused,
    "auto" is torch)."""
    if kernel != AUTO and kernel not in KERNELS:
        raise UserError(f"unknown kernel {kernel!r}: use {', '.join(kernel_choices())}")
    _check_format(fmt, None)
    if kernel not in (AUTO, *KERNELS.builtin_names()):
        return kernel  # a plugin's kernel: it says itself where it cannot run
    if fmt != "int":
        if kernel == "triton":
            raise UserError(f"kernel 'triton' cannot quantize {fmt} activations: the fused kernel implements "
                            "the INT grids only; use kernel 'torch', 'compile' or 'auto' (torch for FP4)")
        if kernel == "auto":
            return "torch"
    device = torch.device(device)
    if kernel == "compile":
        ok, why = compile_available(device)
        if not ok:
            raise UserError(f"kernel 'compile' cannot run on {device}: {why}")
        return kernel
    runnable = triton_available() and (device.type == "cuda" or (interpreting() and device.type == "cpu"))
    if kernel == "triton" and not runnable:
        raise UserError(f"kernel 'triton' cannot run on {device}: it needs triton and a CUDA device "
                         "(or TRITON_INTERPRET=1 on the CPU)")
    if kernel == "auto":
        return "triton" if runnable and device.type == "cuda" else "torch"
    return kernel


def interpreting() -> bool:
    """True when Triton's CPU interpreter is switched on (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def fused_supported(x: torch.Tensor) -> bool:
    """Whether ``fused_transform_quantize`` can run on ``x``: triton installed, and ``x`` a
    CUDA tensor (or a CPU tensor under the interpreter), in float32, float16 or bfloat16."""
    return (triton_available() and x.dtype in DTYPES
            and (x.is_cuda or (interpreting() and x.device.type == "cpu")))


def _check(x, mu, inv_scale, rotation, bits):
    if x.dtype not in DTYPES:
        raise TypeError(f"fused kernels take float32, float16 or bfloat16, got {x.dtype}")
    if bits is not None and not (isinstance(bits, int) and MIN_BITS <= bits <= MAX_BITS):
        raise UserError(f"bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}")
    channels = x.shape[-1]
    if inv_scale is not None and inv_scale.shape != (channels,):
        raise UserError(f"inv_scale must have shape ({channels},), got {tuple(inv_scale.shape)}")
    if rotation is not None and not isinstance(rotation, HadamardRotation):
        raise TypeError(f"rotation must be a HadamardRotation, got {type(rotation).__name__}")


def fused_transform_quantize(
    x: torch.Tensor,
    mu: torch.Tensor | None = None,
    inv_scale: torch.Tensor | None = None,
    rotation: HadamardRotation | None = None,
    bits: int | None = None,
    *,
    out: torch.Tensor | None = None,
    precision: str | None = None,
    rows_per_prog: int | None = None,
    grid: str = DEFAULT_GRID,
) -> torch.Tensor:
    """quantize(R diag(inv_scale) (x - mu)) over the last dimension, in one kernel.

    x:         (..., tokens, C) in float32 / float16 / bfloat16; the result has its dtype.
    mu:        per-sample channel means, broadcastable to (..., 1, C) (``x.mean(-2, keepdim=True)``).
    inv_scale: (C,) or None.   rotation: a ``HadamardRotation`` of size C, or None.
    bits:      2..8 for per-token asymmetric fake quantization, None for none.
    out:       optional contiguous output buffer, same shape, dtype and device as ``x``.
    precision: how the rotation's dots keep fp32 accuracy: "split3" (default: the
               data split exactly into three tf32 parts, the +-1 matrix exact in tf32),
               "tf32x3" or "ieee" (no tensor cores). Plain "tf32" would lose bits.
    grid:      the quantization grid, one of ``quant.GRIDS``.
    """
    _check(x, mu, inv_scale, rotation, bits)
    if grid not in GRIDS:
        raise UserError(f"unknown grid {grid!r}: use {' or '.join(GRIDS)}")
    if not triton_available():
        raise RuntimeError("triton is not installed; use torch_transform_quantize (backend='torch')")
    if not (x.is_cuda or (interpreting() and x.device.type == "cpu")):
        raise RuntimeError("the triton kernels need a CUDA tensor, or TRITON_INTERPRET=1 "
                           f"(set before importing triton) for CPU tensors; got device {x.device}")
    from benchmark.quant.kernels import triton_kernels  # after TRITON_INTERPRET is set: triton reads it at @jit

    if x.device.type == "cpu" and type(triton_kernels.transform_quantize_kernel).__name__ != "InterpretedFunction":
        raise RuntimeError("TRITON_INTERPRET was switched on after the kernels were compiled for "
                           "the GPU; set it before the first fused call (or before importing)")
    if precision is None:
        precision = "split3"
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    channels = x.shape[-1]
    layout = plan_layout(channels, rotation)
    x2 = x.reshape(-1, channels)
    x2 = x2 if x2.is_contiguous() else x2.contiguous()
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    elif out.shape != x.shape or out.dtype != x.dtype or out.device != x.device or not out.is_contiguous():
        raise UserError("out must be contiguous with the shape, dtype and device of x")
    if x2.shape[0] == 0:
        return out
    rows_per_sample = x.shape[-2] if x.dim() >= 2 else 1
    mu2 = None
    if mu is not None:
        lead = x.shape[:-2] if x.dim() >= 2 else ()
        mu2 = mu.to(x.device).expand(*lead, 1, channels).reshape(-1, channels)
        mu2 = mu2 if mu2.is_contiguous() else mu2.contiguous()
    scale = None
    if inv_scale is not None:
        scale = inv_scale.to(x.device)
        scale = scale if scale.is_contiguous() else scale.contiguous()
    # Triton launches on the current CUDA device, not on its arguments' one: make it x's
    # (--device cuda:1, or accelerate's processes, each on its own GPU)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        triton_kernels.launch(x2, out.view(-1, channels), mu2, scale, layout, rows_per_sample,
                              bits, precision, rows_per_prog, grid)
    return out


class Workspace:
    """Two buffers the torch path reuses from call to call, per dtype, device and thread,
    grown to the largest input seen. On the CPU a fresh buffer of a few MB per call costs
    page faults that can take as long as the arithmetic (2,048 tokens x 768: 6.4 ms a call
    with new buffers, 2.8 in these). A result computed in it lives until the next call that
    uses it."""

    def __init__(self):
        self._held: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def pair(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two contiguous tensors of ``like``'s shape, dtype and device (uninitialized)."""
        key, size = (like.dtype, like.device, threading.get_ident()), like.numel()
        held = self._held.get(key)
        if held is None or held[0].numel() < size:
            held = self._held[key] = tuple(torch.empty(size, dtype=like.dtype, device=like.device)
                                           for _ in range(2))
        return tuple(buffer[:size].view(like.shape) for buffer in held)

    def clear(self) -> None:
        self._held.clear()


def torch_transform_quantize(
    x: torch.Tensor,
    mu: torch.Tensor | None = None,
    inv_scale: torch.Tensor | None = None,
    rotation: HadamardRotation | None = None,
    bits: int | None = None,
    *,
    grid: str = DEFAULT_GRID,
    compute_dtype: torch.dtype | None = torch.float32,
    workspace: Workspace | None = None,
    fmt: str = "int",
) -> torch.Tensor:
    """The reference, and ``TransformedLinear``'s torch path: centre, scale, rotate, then
    quantize per token on ``grid``, with the project's torch code. ``fmt``: "int" (the
    ``grid``), or an FP4 block format, "mxfp4" or "nvfp4" (``quantize_fp4``; ``bits`` 4).

    Computes in ``compute_dtype`` (float32 by default: x, mu and inv_scale are upcast, the
    result is cast back to x's dtype once, the fused kernel's numerics); None computes in
    x's own dtype, rounding after every step (the project's earlier bf16/fp16 path).
    After the first step every operation works in place on one buffer of its own: the
    ``workspace``'s when given (then the result may be one of its buffers, valid until its
    next use), else new ones. The same operations either way, so the same bits."""
    _check_format(fmt, bits)
    dtype = x.dtype
    if compute_dtype is not None and dtype != compute_dtype:
        x = x.to(compute_dtype)
        mu = None if mu is None else mu.to(compute_dtype)
        inv_scale = None if inv_scale is None else inv_scale.to(compute_dtype)
    factors = signs = None
    if rotation is not None:
        rotation.check_width(x.shape[-1])
        factors, signs = rotation._cast_like(x)
    # The random signs join the per-channel scale: one pass (times +-1 is exact, so the
    # bits are those of scaling, then the signs, then the factors).
    multiplier = inv_scale if signs is None else signs if inv_scale is None else inv_scale * signs
    # Autograd refuses out= arguments and in-place updates: while it records, each step makes
    # a new tensor (the same values).
    recording = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, mu, inv_scale))
    first, spare = (workspace.pair(x) if workspace is not None and not recording and x.is_contiguous()
                    else (None, None))
    h = torch.sub(x, mu, out=first) if mu is not None else x
    if multiplier is not None:
        h = torch.mul(h, multiplier, out=first) if h is x or recording else h.mul_(multiplier)
    if factors is not None:
        h = apply_factors(h, factors, None, rotation.block, spare=spare,
                          inplace=h is not x and not recording and h.is_contiguous())
    if bits is not None and fmt != "int":
        q = quantize_fp4(h, fmt)  # in the compute dtype, like the INT grids; a new tensor
        h = straight_through(h, q) if recording else q
    elif bits is not None:
        _check_bits(bits)
        h = fake_quantize(h, bits, grid, inplace=h is not x)  # new tensors while autograd records
    return h.to(dtype)


def online_function(kernel: str, workspace: Workspace | None = None):
    """The function that runs the online part for a resolved kernel name; the torch path
    computing in ``workspace`` when one is given (the other paths allocate their own)."""
    if kernel == "torch" and workspace is not None:
        return functools.partial(torch_transform_quantize, workspace=workspace)
    return KERNELS.get(kernel)


@dataclass
class MatchReport:
    """How a kernel's output differs from the reference, element by element.

    An element matches when it is within one unit of the output dtype's precision (eps
    times the larger magnitude) of the reference, plus fp32 noise (1e-5 of the row's largest
    magnitude). A mismatch is what a value on a rounding boundary of the grid does under a
    different fp32 rounding: it must be at most one grid step beyond that tolerance
    (``max_steps`` <= 1) and rare (``fraction``);
    without quantization there is no boundary and no mismatch is allowed. ``nonfinite``
    counts NaN/Inf where the reference is finite (e.g. a poisoned element never written).
    """

    bits: int | None
    elements: int
    mismatches: int
    max_steps: float
    nonfinite: int

    @property
    def fraction(self) -> float:
        return self.mismatches / max(1, self.elements)

    def ok(self, max_fraction: float = 2e-3) -> bool:
        if self.nonfinite:
            return False
        if self.bits is None:
            return self.mismatches == 0
        return self.max_steps <= 1.0 and self.fraction <= max_fraction

    def __str__(self) -> str:
        return (f"{self.mismatches}/{self.elements} mismatches ({self.fraction:.1e}), "
                f"max {self.max_steps:.3f} steps, {self.nonfinite} non-finite")


def compare_outputs(out: torch.Tensor, ref: torch.Tensor, bits: int | None,
                    step: torch.Tensor | None = None) -> MatchReport:
    """Compare a kernel's output with the reference (same shape and dtype).

    ``step``: each row's grid step, (rows, 1) or broadcastable (``quant.grid_step`` of the
    unquantized rows). Without it the step is estimated as the reference row's range over
    2**bits - 1, which on the zero-point grid can be one step short of the true range and
    then overstates ``max_steps`` by up to levels / (levels - 1)."""
    eps = torch.finfo(ref.dtype).eps
    a, b = out.float().reshape(-1, out.shape[-1]), ref.float().reshape(-1, ref.shape[-1])
    finite_b, finite_a = torch.isfinite(b), torch.isfinite(a)
    # NaN where the reference has NaN (a NaN input row) is agreement.
    nonfinite = int((finite_b & ~finite_a).sum() + (torch.isnan(b) & ~torch.isnan(a)).sum())
    diff = (a - b).abs()
    rowmax = torch.where(finite_b, b.abs(), 0.0).amax(dim=-1, keepdim=True)
    # Each side is one rounding to the output dtype away from its fp32 value: <= eps*|v|/2.
    tol = eps * torch.maximum(a.abs(), b.abs()).nan_to_num(posinf=0.0) + 1e-5 * rowmax
    bad = finite_a & finite_b & (diff > tol)
    max_steps = 0.0
    if bits is not None and bad.any():
        if step is None:  # the reference row's range over the levels
            step = grid_step(b.amin(dim=-1, keepdim=True), b.amax(dim=-1, keepdim=True), bits, "min_anchored")
        step = step.float().reshape(-1, 1).expand_as(b)
        max_steps = float(((diff - tol)[bad] / step[bad]).max())
    elif bad.any():
        max_steps = float("inf")
    return MatchReport(bits, a.numel(), int(bad.sum()), max_steps, nonfinite)
