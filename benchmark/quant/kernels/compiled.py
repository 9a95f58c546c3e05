"""The online part under ``torch.compile``: ``--kernel compile``.

The torch path's own code (``torch_transform_quantize``'s steps, ``apply_factors``,
``fake_quantize``) traced once per shape and compiled by inductor: C++ with OpenMP on the
CPU, Triton on a GPU. The elementwise steps (centre, scale, signs, the quantizer) fuse into
a few passes; the Hadamard factors stay matmuls. Numerics: float32 compute whatever the
input dtype, as the torch path and the fused kernel; tests/test_kernels.py checks it
against the torch path (bit-identical in fp32 on the CPU) and ``microbench --roofline``
times it. FP4 activations (``fmt``): the transform is compiled, the FP4 quantizer
(``quant.formats.quantize_fp4``, which works on bit views in place) runs eagerly on its float32
result, so the bits are the torch path's.
"""

from __future__ import annotations

import functools
import os
import shutil

import torch

from benchmark.errors import UserError
from benchmark.quant.formats import FORMATS, quantize_fp4
from benchmark.quant.grid import DEFAULT_GRID, GRIDS, _check_bits, fake_quantize
from benchmark.quant.hadamard import HadamardRotation, apply_factors

__all__ = ["compile_available", "compiled_transform_quantize", "pin_vector_width"]


def compile_available(device: torch.device | str) -> tuple[bool, str]:
    """Whether torch.compile can build the online part on ``device``, and why not."""
    device = torch.device(device)
    if device.type == "cuda":
        import importlib.util

        return (importlib.util.find_spec("triton") is not None,
                "inductor needs triton for CUDA tensors")
    compiler = os.environ.get("CXX") or next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
    return (compiler is not None and shutil.which(compiler) is not None,
            "inductor needs a C++ compiler on the CPU (none of $CXX, c++, g++, clang++ found)")


def _online(x, mu, inv_scale, factors, signs, block: int, bits: int | None, grid: str):
    h = x.float()
    if mu is not None:
        h = h - mu.float()
    if inv_scale is not None:
        h = h * inv_scale.float()
    if factors is not None:
        h = apply_factors(h, factors, signs, block)
    if bits is not None:
        h = fake_quantize(h, bits, grid, traceable=True)
    return h.to(x.dtype)


@functools.cache
def _compiled():
    # dynamic=None: the first shape compiles static, a second shape of the same call
    # recompiles with symbolic sizes. Every (transform, width, bits) point of a run is one
    # more graph of the same function: raise dynamo's per-function limit (8), past which
    # it would fall back to eager without a word.
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), 256))
    pin_vector_width()
    return torch.compile(_online, dynamic=None)


def pin_vector_width() -> None:
    """Name the CPU vector width in inductor's config, which its on-disk graph cache keys on.

    Left unset, inductor picks the width from ATEN_CPU_CAPABILITY (pinned numerics: AVX2, 8
    lanes) or the CPU (AVX-512, 16), and the cache key does not say which: loops generated for
    8 lanes, reloaded by a process whose vectors hold 16, write past their buffers (torch
    2.13: wrong outputs, then heap corruption). A user's own setting is kept."""
    from torch._inductor import config, cpu_vec_isa

    if config.cpp.simdlen is None:
        config.cpp.simdlen = cpu_vec_isa.pick_vec_isa().bit_width()


def compiled_transform_quantize(
    x: torch.Tensor,
    mu: torch.Tensor | None = None,
    inv_scale: torch.Tensor | None = None,
    rotation: HadamardRotation | None = None,
    bits: int | None = None,
    *,
    grid: str = DEFAULT_GRID,
    fmt: str = "int",
) -> torch.Tensor:
    """quantize(R diag(inv_scale) (x - mu)) per token, compiled; arguments as
    ``torch_transform_quantize``."""
    if fmt != "int" and fmt not in FORMATS:
        raise UserError(f"unknown activation format {fmt!r}: use 'int', {' or '.join(map(repr, FORMATS))}")
    if fmt != "int" and bits is not None and bits != 4:
        raise UserError(f"{fmt} is a 4-bit format: bits must be 4 (or None), got {bits!r}")
    if bits is not None and fmt == "int":
        _check_bits(bits)
    if grid not in GRIDS:
        raise UserError(f"unknown grid {grid!r}: use {' or '.join(GRIDS)}")
    factors = signs = None
    block = 0
    if rotation is not None:
        rotation.check_width(x.shape[-1])
        # float32 copies of the factors, cast once per rotation (outside the traced code,
        # so one compiled graph serves every rotation of a shape)
        factors, signs = rotation._cast_like(torch.empty(0, dtype=torch.float32, device=x.device))
        factors, block = tuple(factors), rotation.block
    if bits is not None and fmt != "int":  # transform in float32, then the eager FP4 quantizer; cast once
        h = _compiled()(x.float(), None if mu is None else mu.float(), inv_scale, factors, signs, block, None, grid)
        return quantize_fp4(h, fmt).to(x.dtype)
    return _compiled()(x, mu, inv_scale, factors, signs, block, bits, grid)
