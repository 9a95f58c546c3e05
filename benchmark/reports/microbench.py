"""Layer-level micro-benchmarks (``hadabench microbench``).

Two tables on PixArt-shaped linears (4096 image tokens, 1152 -> 1152 and 1152 -> 4608):
the forward time of each transform at W4A4 next to the plain layer, and the output SQNR
of each transform and bias-correction mode on inputs whose channel means dominate, where
quantizing the appended mean token on a 4-bit grid costs about as much as centering saves.
"""

from __future__ import annotations

import statistics
import time

import torch
from tabulate import tabulate
from torch import nn

from benchmark.captions import embedded_captions_dir
from benchmark.metrics import sqnr_db
from benchmark.models import load_model
from benchmark.quant.grid import Precision
from benchmark.quant.hadamard import HadamardRotation
from benchmark.quant.kernels import Workspace, online_function, torch_transform_quantize
from benchmark.run.calibration import DEFAULT_SAMPLE_TOKENS, calibrate, caption_seeds, read_captions
from benchmark.transform.base import CORRECTIONS, CalibrationStats
from benchmark.transform.registry import BASELINES, create_transform
from benchmark.transform.validate import synthetic_activations

SHAPES = [(1152, 1152), (1152, 4608)]
CENTERING = ("dyncenter", "hadanorm")


def _time(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations and casts
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _layer(channels, out, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(channels, out)


@torch.no_grad()
def timing_table(precision: str = "w4a4", tokens: int = 4096, repeats: int = 5,
                 transforms=BASELINES) -> str:
    rows = []
    for channels, out in SHAPES:
        layer = _layer(channels, out)
        x = synthetic_activations(channels, samples=1, tokens=tokens)
        stats = CalibrationStats.from_activations(x)
        plain = _time(lambda: layer(x), repeats)
        rows.append([f"{channels}->{out}", "plain nn.Linear (fp32)", f"{plain * 1e3:.1f}", "1.00"])
        for name in transforms:
            module = create_transform(name).quantize([layer], Precision.parse(precision), stats)
            t = _time(lambda: module(x), repeats)
            rows.append([f"{channels}->{out}", f"{name} {precision}", f"{t * 1e3:.1f}", f"{t / plain:.2f}"])
    return tabulate(rows, headers=["layer", "forward", "ms", "x plain"], tablefmt="github")


@torch.no_grad()
def correction_table(precision: str = "w4a4", tokens: int = 1024, mean_scale: float = 10.0) -> str:
    """Output SQNR (dB) per transform and correction mode, as channel means grow."""
    channels, out = SHAPES[0]
    layer = _layer(channels, out)
    rows = []
    for scale in (0.0, 1.0, mean_scale):
        x = synthetic_activations(channels, samples=2, tokens=tokens, seed=1)
        x = x + scale * torch.randn(channels, generator=torch.Generator().manual_seed(2)) * x.std()
        calibration = synthetic_activations(channels, seed=3) + (x.mean((0, 1)) if scale else 0)
        stats = CalibrationStats.from_activations(calibration)
        reference = layer(x)
        for name in BASELINES:
            modes = sorted(CORRECTIONS) if name in CENTERING else [None]
            for mode in modes:
                params = {"correction": mode} if mode else {}
                (y,) = create_transform(name, **params).quantize([layer], Precision.parse(precision), stats)(x)
                rows.append([f"{scale:g}", name, mode or "-", f"{sqnr_db(reference[None], y[None]).item():.2f}"])
    return tabulate(rows, headers=["channel-mean offset (x token std)", "transform", "correction",
                                   f"{precision} output SQNR dB"], tablefmt="github")


# --- Roofline of the online transform ---------------------------------------------------
# (label, samples, tokens per sample, channels): one call of the online part as the
# benchmark makes it. Embedded: 16 captions with CFG (batch 32) x 64 image tokens, the
# attention width 192 (H12 (x) H16) and the FFN width 768; PixArt-Sigma: CFG batch 2 x 1024
# image tokens (512 px), 1152 (H36 (x) H32) and the FFN's 4608 (H36 (x) H128).
ROOFLINE_SHAPES = [("embedded attn", 32, 64, 192), ("embedded ffn", 32, 64, 768),
                   ("PixArt attn", 2, 1024, 1152), ("PixArt ffn", 2, 1024, 4608)]


def _best(fns, repeats: int) -> list[float]:
    """Fastest of ``repeats`` calls of each function after a warm-up: the least disturbed on
    a shared machine. The functions take turns, call by call, so a slow spell of the machine
    falls on all of them rather than on one. On one thread, the thread's CPU time (time the
    scheduler gave others is not counted); on several, wall-clock time."""
    clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = clock()
            fn()
            best[i] = min(best[i], clock() - start)
    return best


def _square_matmul(size: int = 1024):
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    return 2 * size**3, lambda: torch.mm(a, b, out=out)


def online_cost(samples: int, tokens: int, channels: int, rotation) -> tuple[int, int]:
    """(bytes, flops) of one HadaNorm online call in fp32: x read once and the result written
    once (the channel vectors are negligible); flops of the Kronecker rotation's factors
    (2 per multiply-add) plus ~8 per element for centre, scale and the quantizer."""
    elements = samples * tokens * channels
    return 2 * 4 * elements, elements * (2 * sum(rotation.factor_sizes) + 8)


@torch.no_grad()
def roofline_table(kernels=("torch",), repeats: int = 20, bits: int = 4) -> str:
    """Per shape: bytes, flops, the time the measured copy bandwidth (a copy of the same
    tensor: read once, write once) and matmul throughput allow, the time taken by each
    kernel, and the ratio taken / allowed. The peak (a 1024^3 matmul) is measured just before
    each shape and the copy and the kernels take turns in every repeat, so a ratio compares
    times taken in the same spell of a shared machine."""

    # as TransformedLinear.forward runs them (the torch path in a workspace), or (label, fn)
    kernels = [(k, online_function(k, Workspace())) if isinstance(k, str) else k for k in kernels]
    square_flops, square = _square_matmul()
    rows = []
    for label, samples, tokens, channels in ROOFLINE_SHAPES:
        x = synthetic_activations(channels, samples=samples, tokens=tokens)
        mu = x.mean(dim=-2, keepdim=True)
        inv_scale = 0.5 + torch.rand(channels, generator=torch.Generator().manual_seed(1))
        rotation = HadamardRotation(channels)
        nbytes, flops = online_cost(samples, tokens, channels, rotation)
        out = torch.empty_like(x)
        peak = square_flops / _best([square], 5)[0]  # on its own: its 12 MB would flush the caches
        calls = [lambda: out.copy_(x)] + [
            (lambda run=run: run(x, mu, inv_scale, rotation, bits)) for _, run in kernels]
        copy, *taken = _best(calls, repeats)
        allowed = max(copy, flops / peak)
        for (kernel, _), t in zip(kernels, taken, strict=False):
            rows.append([label, f"{samples}x{tokens}x{channels}", f"{nbytes / 1e6:.1f}",
                         f"{flops / 1e6:.0f}", f"{nbytes / copy / 1e9:.1f}", f"{copy * 1e3:.2f}",
                         f"{peak / 1e9:.0f}", f"{flops / peak * 1e3:.2f}", kernel, f"{t * 1e3:.2f}",
                         f"{t / allowed:.1f}"])
    clock = "thread CPU time" if torch.get_num_threads() == 1 else "wall-clock time"
    header = (f"HadaNorm online part (centre, scale, full Hadamard, A{bits}), fp32, "
              f"{torch.get_num_threads()} thread(s); per shape, the peak of a 1024^3 fp32 matmul, then "
              f"the copy and each kernel taking turns, best of {repeats} by {clock}\n\n")
    return header + tabulate(rows, headers=["shape", "samples x tokens x C", "MB moved", "MFLOP",
                                            "copy GB/s", "copy ms", "peak GFLOP/s", "matmul ms",
                                            "kernel", "taken ms", "x roofline"], tablefmt="github")


@torch.no_grad()
def generation_digest(transforms=("quarot", "hadanorm"), precision: str = "w4a4",
                      captions: int = 4, steps: int = 4) -> list[list[str]]:
    """sha256 of the embedded model's latents at ``precision`` per transform (a short run
    with its own calibration): the check that a speed change left the numerics alone."""
    import hashlib

    model = load_model("embedded")
    texts = read_captions(embedded_captions_dir() / "evaluation.txt")[:captions]
    stats, _ = calibrate(model, read_captions(embedded_captions_dir() / "calibration.txt")[:8], steps=steps,
                         cache_dir=None)
    rows = []
    for name in transforms:
        with model.quantized(name, precision, stats):
            latents = model.generate(texts, caption_seeds(len(texts)), steps=steps).latents
        rows.append([name, str(Precision.parse(precision)),
                     hashlib.sha256(latents.contiguous().numpy().tobytes()).hexdigest()[:16]])
    return rows



def pixart_sample_bytes(sample_tokens: int) -> int:
    """fp32 bytes of the calibration sample at PixArt-Sigma's size: 28 blocks of 6 groups
    1152 wide (q/k/v, out, cross q, cross k/v, cross out, fc1) and one 4608 wide (fc2)."""
    return 4 * sample_tokens * 28 * (6 * 1152 + 4608)


@torch.no_grad()
def bf16_table(bits: int = 6, tokens: int = 256) -> str:
    """The online part on bf16 inputs (HadaNorm, full Hadamard), computed in bf16 throughout
    (the earlier torch path) and in fp32 with one rounding (now), against the float64
    computation on the same bf16 inputs: SQNR and the largest error in grid steps."""

    rows = []
    for channels in (192, 1152):
        x = synthetic_activations(channels, samples=2, tokens=tokens).bfloat16()
        mu = x.mean(dim=-2, keepdim=True)
        inv_scale = (0.5 + torch.rand(channels, generator=torch.Generator().manual_seed(1))).bfloat16()
        rotation = HadamardRotation(channels, random_signs=True)
        exact = torch_transform_quantize(x.double(), mu.double(), inv_scale.double(), rotation, bits,
                                         compute_dtype=None)
        step = (exact.amax(-1, keepdim=True).clamp(min=0) - exact.amin(-1, keepdim=True).clamp(max=0)) / (2**bits - 1)
        for label, dtype in (("bf16 throughout (before)", None), ("fp32, one rounding (now)", torch.float32)):
            out = torch_transform_quantize(x, mu, inv_scale, rotation, bits, compute_dtype=dtype).double()
            rows.append([channels, label, f"{sqnr_db(exact[None], out[None]).item():.2f}",
                         f"{((out - exact).abs() / step).max().item():.2f}"])
    return tabulate(rows, headers=["channels", "online part computed in", f"A{bits} SQNR dB vs fp64",
                                   "max error (grid steps)"], tablefmt="github")


def memory_table() -> str:
    """Peak resident memory of each measurement of ``benchmark.reports.memprobe``, each in a fresh
    subprocess (one thread)."""
    import json
    import subprocess
    import sys

    rows = []
    for model in ("embedded", "pixart"):
        for precision in ("fp", "w4a4"):
            probe = "import sys; from benchmark.reports.memprobe import main; main(sys.argv[1:])"
            run = subprocess.run([sys.executable, "-c", probe, model, precision], capture_output=True, text=True)
            if run.returncode:
                rows.append([model, precision, "failed", run.stderr.strip().splitlines()[-1][:80], ""])
                continue
            info = json.loads(run.stdout.strip().splitlines()[-1])
            sample = info.get("sample_bytes")
            rows.append([model, precision, f"{info['peak_rss_bytes'] / 2**30:.2f}",
                         f"{sample / 2**30:.2f}" if sample else "-", info["seconds"]])
    note = (f"calibration sample at PixArt-Sigma size (28 blocks, 1024 tokens): "
            f"{pixart_sample_bytes(DEFAULT_SAMPLE_TOKENS) / 2**30:.2f} GiB with the default "
            f"{DEFAULT_SAMPLE_TOKENS} tokens per group (was {pixart_sample_bytes(4096) / 2**30:.2f} GiB at 4096)\n\n")
    return note + tabulate(rows, headers=["model", "precision", "peak RSS GiB", "calibration sample GiB",
                                          "seconds"], tablefmt="github")


def main(precision: str = "w4a4", repeats: int = 5, roofline: bool = False, kernels=("torch",),
         bf16: bool = False, memory: bool = False, transforms=BASELINES) -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, batch 1")
    if roofline or bf16 or memory:
        if roofline:
            print("\nRoofline of the online transform:\n")
            print(roofline_table(kernels, repeats=max(repeats, 20)))
        if bf16:
            print("\nbf16 inputs, W6A6 activations: the online part's precision:\n")
            print(bf16_table())
        if memory:
            print("\nPeak resident memory (each in its own process):\n")
            print(memory_table())
        return
    print("\nForward time of one PixArt-shaped layer, 4096 tokens:\n")
    print(timing_table(precision, repeats=repeats, transforms=transforms))
    print("\nBias-correction modes on inputs with growing channel means (1024 tokens x 2 samples):\n")
    print(correction_table(precision))
