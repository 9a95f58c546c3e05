"""Pinned numerics: the same bits from the same run on any x86-64 CPU with AVX2.

A 4- or 6-bit rounding that flips on the last bit of a matmul changes a caption's whole
denoising trajectory (up to 10 dB per caption between an Intel and an AMD machine), so a
published leaderboard reproduces only if every floating-point path is the same everywhere.
``numerics = "pinned"`` (the published configuration) fixes what chooses those paths:

- ``MKL_CBWR=COMPATIBLE,STRICT``: MKL's conditional numerical reproducibility. MKL picks
  its kernels by CPU (on AMD it takes its AVX2 path, on Intel its AVX-512 one, and it ignores
  a request for one ISA branch on a non-Intel CPU); COMPATIBLE is the one branch it honours
  on both, and STRICT makes it independent of the thread count.
- ``ATEN_CPU_CAPABILITY=avx2``: ATen's own vectorized kernels at one SIMD width.
- oneDNN off (``torch.backends.mkldnn``): its JIT kernels depend on the CPU and its caches;
  without it convolutions go through MKL too.
- 2 intra-op threads (the CI machine's cores), whatever the machine has.
- The generation batch: captions are generated in batches of fixed composition
  (``GENERATION_BATCH`` captions, in order), never regrouped by split size or process count.

Both variables must be set before torch is imported: ``hadabench run`` restarts itself with
them when the configuration asks for pinned numerics and they are missing. GPU runs are not
pinned (kernels and their reduction orders differ between GPU models); the gate then falls
back to a paired statistical test.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from pathlib import Path

from benchmark.errors import UserError

__all__ = ["GENERATION_BATCH", "MODES", "PINNED_ENV", "PINNED_THREADS", "describe", "ieee_float32", "pinned",
           "require", "restart_pinned"]

MODES = ("native", "pinned")
PINNED_ENV = {"MKL_CBWR": "COMPATIBLE,STRICT", "ATEN_CPU_CAPABILITY": "avx2"}
PINNED_THREADS = 2
GENERATION_BATCH = 16
_RESTARTED = "HADABENCH_PINNED_RESTART"
# MKL's branch codes (mkl_cbwr_get), for the record of what was in effect.
_MKL_BRANCHES = {0: "OFF", 1: "BRANCH_OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1",
                 8: "SSE4_2", 9: "AVX", 10: "AVX2", 12: "AVX512", 14: "AVX512_E1"}
_MKL_STRICT = 0x10000


def _mkl_cbwr() -> str | None:
    """MKL's reproducibility branch as in effect in this process, None without MKL."""
    import torch

    library = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        get = ctypes.CDLL(str(library)).mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    code = get(-1) & 0xFFFFFFFF  # MKL_CBWR_ALL
    name = _MKL_BRANCHES.get(code & 0xFFFF, str(code & 0xFFFF))
    return name + (",STRICT" if code & _MKL_STRICT else "")


def describe(mode: str) -> dict:
    """What decided the floating-point paths of this run (recorded in results.json)."""
    import torch

    return {"mode": mode, "env": {k: os.environ.get(k) for k in PINNED_ENV},
            "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkl_cbwr": _mkl_cbwr(), "mkldnn": torch.backends.mkldnn.enabled,
            "threads": torch.get_num_threads(), "generation_batch": GENERATION_BATCH}


def _missing() -> list[str]:
    return [f"{k}={v}" for k, v in PINNED_ENV.items() if os.environ.get(k) != v]


def restart_pinned(argv: list[str]) -> None:
    """Replace this process by ``python -m benchmark ARGV`` with the pinned environment, if it
    is not set yet (once: a second start that still lacks it goes on and fails in ``require``)."""
    if not _missing() or os.environ.get(_RESTARTED):
        return
    env = {**os.environ, **PINNED_ENV, _RESTARTED: "1"}
    sys.stdout.flush(), sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "benchmark", *argv], env)


def require(mode: str, device: str) -> None:
    """Refuse a pinned CPU run whose process cannot be pinned (ValueError: bad input)."""
    if mode not in MODES:
        raise UserError(f"unknown numerics {mode!r}: use {' or '.join(MODES)}")
    if mode != "pinned" or device != "cpu":
        return
    import torch

    if _missing():
        raise UserError(f"numerics = pinned needs {' '.join(_missing())} in the environment before "
                         "Python starts (the hadabench command sets them itself)")
    if torch.backends.cpu.get_cpu_capability() != "AVX2":
        raise UserError(f"numerics = pinned needs a CPU with AVX2 (ATen runs "
                         f"{torch.backends.cpu.get_cpu_capability()} here)")
    if _mkl_cbwr() != PINNED_ENV["MKL_CBWR"]:
        raise UserError(f"numerics = pinned needs torch's MKL build with MKL_CBWR in effect "
                         f"(found {_mkl_cbwr()})")


# torch >= 2.9 sets the precision of float32 per backend and operation; once a program has
# used that API, reading the legacy flags raises (and after the legacy setters, the new getters
# disagree with them). So the settings are changed through the API the process already uses.
_FP32_OPERATIONS = ("cuda.matmul", "cudnn.conv", "cudnn.rnn", "mkldnn.matmul", "mkldnn.conv", "mkldnn.rnn")


def _legacy_flags_readable() -> bool:
    import torch

    try:
        _ = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32  # raises if mixed
        torch.get_float32_matmul_precision()
    except RuntimeError:  # "... you have used mix of the legacy and new APIs ..."
        return False
    return True


@contextlib.contextmanager
def ieee_float32():
    """Inside: float32 matmuls and convolutions compute in float32 (no TF32 on a GPU, no
    reduced precision in oneDNN), with the precision API the program already uses; the
    previous settings are restored after."""
    import functools

    import torch

    if _legacy_flags_readable():
        before = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32,
                  torch.backends.cuda.matmul.allow_tf32)
        torch.set_float32_matmul_precision("highest")
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(before[0])
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before[1:]
        return
    operations = [functools.reduce(getattr, name.split("."), torch.backends) for name in _FP32_OPERATIONS]
    before = [op.fp32_precision for op in operations]
    for op in operations:
        op.fp32_precision = "ieee"
    try:
        yield
    finally:
        for op, precision in zip(operations, before, strict=False):
            op.fp32_precision = precision


@contextlib.contextmanager
def pinned(mode: str, device: str):
    """Inside: the process-wide settings of ``mode`` (threads, oneDNN) on the CPU, and no TF32
    on a GPU; restored after."""
    import torch

    if torch.device(device).type == "cuda":
        # float32 is float32 in every op: TF32 convolutions (cuDNN's default) in the reference
        # against float32 linears in the cells would differ even at "fp" (Sana's 1x1 convs)
        with ieee_float32():
            yield {**describe(f"{mode} (not applied on {device})"), "tf32": False}
        return
    if mode != "pinned" or device != "cpu":
        yield describe(mode if device == "cpu" else f"{mode} (not applied on {device})")
        return
    threads, mkldnn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    torch.set_num_threads(PINNED_THREADS)
    torch.backends.mkldnn.enabled = False
    try:
        yield describe(mode)
    finally:
        torch.set_num_threads(threads)
        torch.backends.mkldnn.enabled = mkldnn
