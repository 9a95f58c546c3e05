"""Speed of the fused kernels on a GPU: ``python -m scripts.gpu_perf``.

Prints one table:

- kernel rows: for each transform's online part and width (1152, 4608), bf16, W4A4's 4-bit
  activations, ``--tokens`` rows: the torch path and the fused kernel (mu precomputed for
  both; the mean itself has its own row), the bytes the fused kernel must move (read x, write
  the result, plus mu, scales and the +-1 matrices) and its bandwidth as a fraction of the
  measured device-to-device copy bandwidth (``copy_`` of a large buffer: 2 x bytes / time);
- model rows: one denoising step of a PixArt-Sigma-sized transformer (random-init diffusers
  ``PixArtTransformer2DModel``: 28 blocks, hidden 1152 = 16 heads x 72, ``--latent`` 128 ->
  64 x 64 = 4096 image tokens at patch 2, 300 text tokens, batch 2, bf16) at full precision
  and at W4A4 with each transform, torch path, fused path and compiled path (``--kernel
  compile``: torch.compile, Triton from inductor), as ratios to full precision.

The W4A4 model is quantized with the model adapters' own target swapping (q/k/v share one
transform of their input, as do the cross-attention k/v); the fused path is the kernel
choice ``kernel="triton"`` that ``hadabench run --kernel`` makes. ``--device cpu`` is the
script's CPU twin under Triton's interpreter (tests, at tiny sizes; its times mean nothing).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time

import torch

from benchmark import HadamardRotation
from benchmark.quant.kernels import Workspace, fused_transform_quantize, online_function
from benchmark.quant.kernels.compiled import compiled_transform_quantize
from benchmark.quant.kernels.plan import plan_layout
from benchmark.testing.pixart import build_pixart, pixart_inputs, swap_in
from scripts.gpu_check import require_gpu

TRANSFORMS = {"none": {}, "smoothquant": {"alpha": 0.5}, "quarot": {}, "sdcb": {"alpha": 0.5},
              "dyncenter": {}, "hadanorm": {"alpha": 0.5}}
# The online part of each transform: (center, scale, rotation block: None full, 0 none, signs)
KERNELS = {"none": (False, False, 0, False), "smoothquant": (False, True, 0, False),
           "dyncenter": (True, False, 0, False), "quarot": (False, False, None, True),
           "sdcb": (False, True, None, False), "hadanorm": (True, True, None, False),
           "hadanorm-block128": (True, True, 128, False)}


# --- timing ---

def device_ms(fn, warmup: int = 3, iters: int = 10, device: str = "cuda") -> float:
    """Median milliseconds of ``fn()`` over ``iters`` runs: CUDA events on a GPU, the wall
    clock on the CPU twin."""
    cuda = device == "cuda"
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            start = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def copy_bandwidth(nbytes: int = 1 << 30, device: str = "cuda") -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = device_ms(lambda: dst.copy_(src), iters=20, device=device)
    return 2 * nbytes / (ms * 1e-3)


def kernel_rows(tokens: int, samples: int, bits: int, dtype, copy_bw: float,
                compiled: bool = True, device: str = "cuda", widths=(1152, 4608)) -> list[list]:
    rows = []
    time_ms = functools.partial(device_ms, device=device)
    torch_path = online_function("torch", Workspace())  # as TransformedLinear.forward runs it
    for channels in widths:
        gen = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(samples, tokens // samples, channels, generator=gen, device=device).to(dtype)
        mu = x.mean(dim=-2, keepdim=True)
        inv_scale = (torch.rand(channels, generator=gen, device=device) + 0.5).to(dtype)
        elt = x.element_size()
        mean_ms = time_ms(lambda: x.mean(dim=-2, keepdim=True))
        mean_bytes = x.numel() * elt
        # mu comes from torch's mean (a reduction over tokens, before the fused pass); its
        # bandwidth columns are torch's here.
        rows.append(["channel mean (torch)", channels, mean_ms, None, None, None, mean_bytes / 1e6,
                     mean_bytes / (mean_ms * 1e-3) / 1e9, 100 * mean_bytes / (mean_ms * 1e-3) / copy_bw,
                     None, None, None])
        for name, (center, scale, block, signs) in KERNELS.items():
            rot = None if block == 0 else HadamardRotation(channels, block, signs, seed=0).to(device)
            args = (x, mu if center else None, inv_scale if scale else None, rot, bits)
            out = torch.empty_like(x)
            torch_ms = time_ms(lambda: torch_path(*args))
            fused_ms = time_ms(lambda: fused_transform_quantize(*args, out=out))
            compile_ms = time_ms(lambda: compiled_transform_quantize(*args)) if compiled else None
            layout = plan_layout(channels, rot)
            moved = 2 * x.numel() * elt + (mu.numel() * elt if center else 0) \
                + (channels * elt if scale else 0) + (channels * 4 if signs else 0) \
                + 4 * ((layout.rows_p ** 2 if layout.left is not None else 0)
                       + (layout.cols_p ** 2 if layout.right is not None else 0))
            bw = moved / (fused_ms * 1e-3)
            rows.append([f"{name} a{bits}", channels, torch_ms, fused_ms, compile_ms, torch_ms / fused_ms,
                         moved / 1e6, bw / 1e9, 100 * bw / copy_bw, None, None, None])
    return rows


def model_rows(latent: int, layers: int, batch: int, text_tokens: int, dtype, iters: int,
               compiled: bool = True, device: str = "cuda", **size) -> list[list]:
    """``size``: build_pixart's heads, head_dim and caption_channels (the CPU twin's tiny model)."""
    model = build_pixart(latent, layers, **size).to(device, dtype)
    inputs = pixart_inputs(model, batch, text_tokens, device, dtype)

    def step():
        with torch.no_grad():
            model(**inputs)

    fp_ms = device_ms(step, warmup=2, iters=iters, device=device)
    rows = [["PixArt step fp", f"{(latent // 2) ** 2} tok", fp_ms, None, None, None, None, None, None,
             1.0, None, None]]
    for name, params in TRANSFORMS.items():
        times = {}
        for kernel in ("torch", "triton", "compile") if compiled else ("torch", "triton"):
            restore = swap_in(model, name, params, "w4a4", kernel=kernel)
            try:
                times[kernel] = device_ms(step, warmup=2, iters=iters, device=device)
            finally:
                restore()
                if device == "cuda":
                    torch.cuda.empty_cache()
        comp = times.get("compile")
        rows.append([f"PixArt step w4a4 {name}", f"{(latent // 2) ** 2} tok", times["torch"],
                     times["triton"], comp, times["torch"] / times["triton"], None, None, None,
                     times["torch"] / fp_ms, times["triton"] / fp_ms, comp / fp_ms if comp else None])
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cpu: the interpreter twin at tiny sizes (needs TRITON_INTERPRET=1)")
    parser.add_argument("--tokens", type=int, default=8192, help="rows of the kernel benchmark")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--latent", type=int, default=128, help="latent side (128 -> 4096 tokens)")
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--text-tokens", type=int, default=300)
    parser.add_argument("--iters", type=int, default=5, help="timed model steps per setting")
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="skip the torch.compile path (--kernel compile)")
    args = parser.parse_args(argv)
    require_gpu(args.device)
    from tabulate import tabulate

    dtype = torch.bfloat16
    gpu = args.device == "cuda"
    copy_bw = copy_bandwidth(device=args.device) if gpu else copy_bandwidth(1 << 24, "cpu")
    name = torch.cuda.get_device_name() if gpu else "cpu (Triton interpreter: times mean nothing)"
    print(f"device: {name}; torch {torch.__version__}; measured copy bandwidth "
          f"{copy_bw / 1e9:.0f} GB/s; bf16", flush=True)
    # the CPU twin: one width that takes both rotations (full, blocks of 128), a tiny PixArt
    twin = {} if gpu else dict(widths=(256,))
    rows = kernel_rows(args.tokens, args.batch, args.bits, dtype, copy_bw, args.compile, args.device,
                       **twin)
    if not args.skip_model:
        size = {} if gpu else dict(heads=2, head_dim=64, caption_channels=32)
        rows += model_rows(args.latent, args.layers, args.batch, args.text_tokens, dtype, args.iters,
                           args.compile, args.device, **size)
    headers = ["what", "size", "torch ms", "fused ms", "compile ms", "fused speed-up", "fused MB moved",
               "fused GB/s", "% of copy bw", "torch / fp", "fused / fp", "compile / fp"]
    print(tabulate(rows, headers=headers, floatfmt=".3g", missingval="-"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
