"""Compile the fused kernel for a GPU target without a GPU: ``python -m scripts.compile_check``.

Triton compiles ahead of time for a named target (default sm_90, H100/H200) with the ptxas
that ships in its wheel. For every variant the benchmark uses this prints the shared memory,
registers and spills, how many programs fit on one multiprocessor (occupancy), and fails
when the shared memory exceeds the target's limit: checks that the interpreter cannot
make. It must run without TRITON_INTERPRET.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# Per compute capability: shared memory per block (the opt-in maximum) and per
# multiprocessor, in bytes, and warps per multiprocessor; each has 65,536 registers.
ARCH = {90: (232448, 233472, 64), 80: (166912, 167936, 64), 89: (101376, 102400, 48)}


def programs_per_sm(arch: int, shared: int, registers: int, warps: int) -> int | None:
    """How many programs of the kernel fit on one multiprocessor at once (its occupancy):
    the least of what shared memory (1 KB reserved per block), registers (allocated per
    warp in 256s) and warp slots allow."""
    if arch not in ARCH:
        return None
    _, sm_shared, sm_warps = ARCH[arch]
    per_warp = -(-registers * 32 // 256) * 256
    return min(sm_shared // (shared + 1024), 65536 // (per_warp * warps), sm_warps // warps)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 or 80")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: this compiles the real kernel", file=sys.stderr)
        return 2
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from benchmark.quant.hadamard import HadamardRotation
    from benchmark.quant.kernels.plan import plan_layout
    from benchmark.quant.kernels.triton_kernels import launch_options, transform_quantize_kernel

    ptxas_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    target = GPUTarget("cuda", args.arch, 32)
    failures = 0
    variants = [(c, b, s) for c in (1152, 4608) for b, s in ((0, False), (None, True), (128, False))]
    variants.append((64, None, False))
    for channels, block, signs in variants:
        layout = plan_layout(channels, None if block == 0 else HadamardRotation(channels, block, signs))
        for dtype in ("bf16", "fp32"):
            sig = {"x_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", "mu_ptr": f"*{dtype}",
                   "scale_ptr": f"*{dtype}", "signs_ptr": "*fp32", "left_ptr": "*fp32",
                   "right_ptr": "*fp32", "n_rows": "i32", "rows_per_sample": "i32",
                   "channels": "i32", "norm": "fp32", "levels": "fp32"}
            const = dict(R=layout.rows, M=layout.cols, RP=layout.rows_p, MP=layout.cols_p,
                         ROWS_PER_PROG=8, HAS_MU=True, HAS_SCALE=True, HAS_SIGNS=signs,
                         HAS_LEFT=layout.left is not None, HAS_RIGHT=layout.right is not None,
                         QUANT=True, OUT_BF16=dtype == "bf16", PRECISION="split3", ZERO_POINT=True)
            name = f"{channels} {'none' if block == 0 else block or 'full'} {dtype}"
            try:
                kernel = triton.compile(ASTSource(transform_quantize_kernel, sig, const),
                                        target=target, options=launch_options(layout))
            except Exception as error:  # report every variant
                failures += 1
                print(f"FAIL {name}: {type(error).__name__}: {str(error)[:300]}")
                continue
            shared = kernel.metadata.shared
            usage = ""
            with tempfile.NamedTemporaryFile("w", suffix=".ptx") as ptx:
                ptx.write(kernel.asm["ptx"])
                ptx.flush()
                for tool in ("ptxas-blackwell", "ptxas"):
                    if (ptxas_dir / tool).exists():
                        run = subprocess.run([str(ptxas_dir / tool), "-v", f"-arch=sm_{args.arch}a"
                                              if args.arch >= 90 else f"-arch=sm_{args.arch}",
                                              ptx.name, "-o", os.devnull], capture_output=True, text=True)
                        text = run.stdout + run.stderr
                        regs = re.search(r"Used (\d+) registers", text)
                        spill = re.search(r"(\d+) bytes spill stores", text)
                        if regs:
                            warps = launch_options(layout)["num_warps"]
                            fit = programs_per_sm(args.arch, shared, int(regs[1]), warps)
                            usage = (f", {regs[1]} registers, {spill[1] if spill else '?'} B spilled"
                                     + (f", {fit} program(s) of {warps} warps per SM" if fit is not None else ""))
                            break
            limit = ARCH[args.arch][0] if args.arch in ARCH else None
            ok = limit is None or shared <= limit
            failures += not ok
            print(f"{'PASS' if ok else 'FAIL'} {name}: shared {shared} B"
                  f"{f' (limit {limit})' if limit else ''}{usage}", flush=True)
    print("ALL PASS" if not failures else f"{failures} FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
