"""The kernels' correctness checks, natively on a GPU: ``python -m scripts.gpu_check``.

One verdict line per case (size, rotation, dtype, bits, grid, dot precision or "compile" for
the torch.compile path): PASS/FAIL with the
mismatch count against the torch reference computed in float32 (the kernel's numerics; see
``benchmark.quant.kernels``), and, for information, against the native-dtype torch path. Output
buffers are filled with NaN first, so an element the kernel never writes shows up. Exit
status 1 when any case fails, 2 when there is no CUDA device or no triton.

``--device cpu`` runs the same script under Triton's interpreter (``TRITON_INTERPRET=1``):
the script's CPU twin, which the tests run on a few small cases.
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmark.quant.grid import GRIDS, grid_step
from benchmark.quant.hadamard import HadamardRotation
from benchmark.quant.kernels import (
    PRECISIONS,
    compare_outputs,
    fused_transform_quantize,
    interpreting,
    torch_transform_quantize,
    triton_available,
)
from benchmark.quant.kernels.compiled import compiled_transform_quantize

# name: (channels, rotation block (None: full, 0: none), random signs, center, scale)
CASES = {
    "64-full": (64, None, False, True, True),
    "128-full-signs": (128, None, True, False, False),
    "1152-full": (1152, None, False, True, True),
    "1152-full-signs": (1152, None, True, True, True),
    "4608-full": (4608, None, False, True, True),
    "4608-full-signs": (4608, None, True, False, False),
    "1152-block128": (1152, 128, False, True, True),
    "4608-block128-signs": (4608, 128, True, True, True),
    "1152-none": (1152, 0, False, True, True),
    "4608-quant-only": (4608, 0, False, False, False),
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BITS = (2, 3, 4, 5, 6, 7, 8, None)


def require_gpu(device: str = "cuda") -> None:
    """Exit with status 2 and a clear message when the GPU scripts cannot run on ``device``."""
    why = None
    if device == "cpu":
        if not interpreting():
            why = "--device cpu runs the kernels under Triton's interpreter: set TRITON_INTERPRET=1"
    elif not torch.cuda.is_available():
        why = ("no CUDA device: the GPU scripts need one (CI runs the same kernels under "
               "TRITON_INTERPRET=1 in tests/test_kernels.py)")
    elif not triton_available():
        why = "triton is not installed: pip install triton"
    if why:
        print(why, file=sys.stderr)
        raise SystemExit(2)


def inputs(channels, dtype, center, scale, samples, tokens, seed=0, device="cuda"):
    gen = torch.Generator(device=device).manual_seed(seed)
    kw = dict(generator=gen, device=device)
    x = (torch.randn(samples, tokens, channels, **kw)
         * (0.1 + 4 * torch.rand(channels, **kw) ** 4) + 2 * torch.randn(channels, **kw)).to(dtype)
    mu = x.mean(dim=-2, keepdim=True) if center else None
    inv_scale = (0.25 + torch.rand(channels, **kw)).to(dtype) if scale else None
    return x, mu, inv_scale


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cpu: the interpreter twin (needs TRITON_INTERPRET=1)")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=1024, help="tokens per sample")
    parser.add_argument("--paths", nargs="+", default=[*PRECISIONS, "compile"],
                        choices=[*PRECISIONS, "compile"],
                        help="the fused kernel at these tl.dot precisions, and/or the "
                             "torch.compile path (--kernel compile)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--bits", nargs="+", default=[str(b) for b in BITS],
                        choices=[str(b) for b in BITS], help="activation bits; None: no quantization")
    parser.add_argument("--grid", nargs="+", default=list(GRIDS), choices=GRIDS,
                        help="quantization grids to check")
    parser.add_argument("--max-fraction", type=float, default=2e-3,
                        help="largest allowed fraction of one-step mismatches")
    args = parser.parse_args(argv)
    require_gpu(args.device)
    where = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (Triton interpreter)"
    print(f"device: {where}, torch {torch.__version__}, "
          f"{args.samples}x{args.tokens} tokens per case", flush=True)
    failures = 0
    bit_list = [None if b == "None" else int(b) for b in args.bits]
    for name in args.cases:
        channels, block, signs, center, scale = CASES[name]
        rotation = None if block == 0 else HadamardRotation(channels, block, signs, seed=3).to(args.device)
        # without a rotation there is no dot: one precision stands for all
        precisions = [p for p in args.paths if p != "compile"][:None if rotation is not None else 1]
        paths = precisions + (["compile"] if "compile" in args.paths else [])
        for dname in args.dtypes:
            dtype = DTYPES[dname]
            x, mu, inv_scale = inputs(channels, dtype, center, scale, args.samples, args.tokens,
                                      device=args.device)
            for bits, grid in [(b, g) for b in bit_list for g in args.grid]:
                ref = torch_transform_quantize(x, mu, inv_scale, rotation, bits, grid=grid)
                step = None
                if bits is not None:  # the true grid step, from the unquantized float32 rows
                    h = torch_transform_quantize(x.float(), mu, inv_scale, rotation, None).reshape(-1, channels)
                    step = grid_step(h.amin(-1, keepdim=True), h.amax(-1, keepdim=True), bits, grid)
                native = torch_transform_quantize(x, mu, inv_scale, rotation, bits, grid=grid,
                                                  compute_dtype=None)
                for path in paths:
                    out = torch.full_like(x, float("nan"))
                    try:
                        if path == "compile":
                            out = compiled_transform_quantize(x, mu, inv_scale, rotation, bits, grid=grid)
                        else:
                            fused_transform_quantize(x, mu, inv_scale, rotation, bits, out=out,
                                                     precision=path, grid=grid)
                        if x.is_cuda:
                            torch.cuda.synchronize()
                        report = compare_outputs(out, ref, bits, step)
                        verdict = "PASS" if report.ok(args.max_fraction) else "FAIL"
                        detail = f"{report} | vs native {dname} torch: {compare_outputs(out, native, bits, step)}"
                    except Exception as error:  # one broken case must not hide the others
                        verdict, detail = "FAIL", f"{type(error).__name__}: {error}"
                    failures += verdict == "FAIL"
                    label = f"a{bits}" if bits is not None else "no-quant"
                    print(f"{verdict} {name:20s} {dname} {label:8s} {grid[:4]} {path:7s} {detail}", flush=True)
    print(f"{'ALL PASS' if not failures else f'{failures} FAILED'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
