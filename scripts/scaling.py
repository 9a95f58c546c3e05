"""Wall time of one benchmark run on 1 and on N processes of this machine, as a ratio.

    python -m scripts.scaling                                   # 1 and 2 processes, the published config
    python -m scripts.scaling --processes 1,2 --repeats 2 -- --precisions w4a4 --steps 10
    python -m scripts.scaling --estimate                        # the paper's setting, 1 and 8 H100s

Each run is a fresh ``hadabench run`` (calibration not cached, into a temporary folder), on
the CPU; N > 1 processes are launched with ``torchrun --standalone`` and share the cores
(``OMP_NUM_THREADS`` = cores // N). Repeats are interleaved (1, N, 1, N, ...) so that a change
in the machine's load hits both. The table also says whether every run's per-sample metrics
are those of the first one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmark.results.schema import read_results
from benchmark.run.distributed import BATCH_SIZE as BATCH
from benchmark.run.distributed import _cores

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FLAGS = ["--config", str(ROOT / "leaderboard" / "benchmark.toml"), "--metrics", "sqnr"]


def timed_run(processes: int, flags: list[str], folder: Path) -> tuple[float, dict]:
    """Seconds of one run from launch to exit, and its results."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    launcher = [sys.executable]
    if processes > 1:
        env["OMP_NUM_THREADS"] = str(max(1, _cores() // processes))
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    command = [*launcher, "-m", "benchmark", "run", *flags, "--device", "cpu", "--fresh",
               "--out", str(folder / "run"), "--cache-dir", str(folder / "cache")]
    tick = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - tick
    if done.returncode not in (0, 1):  # 1: a cell failed, the run itself finished
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return seconds, read_results(folder / "run")


# --estimate: the paper's setting (PixArt-Sigma 512 px, 1,000 evaluation and 64 calibration
# captions, 20 steps, 12 cells) from FLOP counts, checked against the CPU step times measured
# on this project's 2-core machines (measured here; one sample per step). The GPU figures
# are ASSUMPTIONS, not measurements: no GPU was at hand (scripts.gpu_perf measures
# them on one).
CPU_STEP_S = {256: 4.4, 512: 15.0}  # measured: 611M PixArt-Sigma-sized transformer, one sample
H100_TFLOPS = 300.0     # assumed: ~30% of the H100's 989 dense fp16 TFLOP/s at these shapes
QUANTIZED_STEP = 1.5    # assumed: a cell's step (online transform + fake quantization) / an fp step
MAIN_ONLY_S = 25.0      # assumed: per job, CLIP metrics and 1,000 PNGs, on the main process alone
LOAD_S = 120.0          # assumed: loading the pipeline (transformer, T5-XXL, VAE) from local disk


def step_tflop(resolution: int, blocks: int = 28, hidden: int = 1152, text_tokens: int = 300) -> float:
    """TFLOP of one PixArt-Sigma transformer step for one sample: the block linears (q, k, v,
    out, cross q, cross out: 6 d^2, FFN 8 d^2 per image token; cross k, v: 2 d^2 per text token)
    and attention (2 N d + 2 T d per image token); norms, embeddings and the final layer left out."""
    tokens = (resolution // 16) ** 2  # VAE / 8, patch 2
    macs = blocks * (tokens * (14 * hidden ** 2 + 2 * tokens * hidden + 2 * text_tokens * hidden)
                     + 2 * text_tokens * hidden ** 2)
    return 2 * macs / 1e12


def estimate() -> None:
    print("CPU check of the FLOP count (measured step times):")
    for resolution, seconds in CPU_STEP_S.items():
        print(f"  {resolution} px: {step_tflop(resolution):.3f} TFLOP per sample-step / {seconds} s "
              f"= {step_tflop(resolution) / seconds * 1e3:.0f} GFLOP/s")
    batch_step_s = 2 * BATCH * step_tflop(512) / H100_TFLOPS  # 16 captions, guidance doubles them
    evaluation, calibration, cells, steps = -(-1000 // BATCH), -(-64 // BATCH), 12, 20
    print(f"\nESTIMATE (assumed {H100_TFLOPS:.0f} TFLOP/s effective): one step of a batch of {BATCH} "
          f"captions at 512 px = {batch_step_s:.3f} s on an H100")
    print("| H100s | batches per process | generation min | main-only min | load min | total min |")
    print("|---|---|---|---|---|---|")
    for gpus in (1, 8):
        per_process = lambda batches: -(-batches // gpus)  # the slowest process of a job
        generation = steps * batch_step_s * (per_process(evaluation) * (1 + cells * QUANTIZED_STEP)
                                             + per_process(calibration))
        main_only = (1 + cells) * MAIN_ONLY_S
        total = generation + main_only + LOAD_S
        print(f"| {gpus} | {per_process(evaluation)} of {evaluation} | {generation / 60:.1f} | "
              f"{main_only / 60:.1f} | {LOAD_S / 60:.1f} | {total / 60:.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.scaling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts (default 1,2)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--estimate", action="store_true",
                        help="print the paper-setting estimate for 1 and 8 H100s instead (no run)")
    parser.add_argument("flags", nargs="*", help="after --: flags for hadabench run "
                        "(default: --config leaderboard/benchmark.toml --metrics sqnr)")
    args = parser.parse_args(argv)
    if args.estimate:
        estimate()
        return 0
    counts = [int(n) for n in args.processes.split(",")]
    flags = args.flags or DEFAULT_FLAGS
    seconds: dict[int, list[float]] = {n: [] for n in counts}
    threads, same, first = {}, True, None
    with tempfile.TemporaryDirectory(prefix="hadabench-scaling-") as tmp:
        for repeat in range(args.repeats):
            for n in counts:
                wall, results = timed_run(n, flags, Path(tmp) / f"{n}-{repeat}")
                seconds[n].append(wall)
                threads[n] = results["environment"].get("torch_threads")
                per_sample = {k: c["per_sample"] for k, c in results["cells"].items()}
                first = per_sample if first is None else first
                same &= per_sample == first
                print(f"processes {n}, repeat {repeat + 1}: {wall:.1f} s", file=sys.stderr, flush=True)
    base = statistics.median(seconds[counts[0]])
    print(f"hadabench run {' '.join(flags)} on {_cores()} cores\n")
    print("| processes | threads each | wall s (median) | runs | speed-up vs "
          f"{counts[0]} process{'es' if counts[0] > 1 else ''} |\n|---|---|---|---|---|")
    for n in counts:
        median = statistics.median(seconds[n])
        print(f"| {n} | {threads[n]} | {median:.1f} | {', '.join(f'{s:.1f}' for s in seconds[n])} "
              f"| {base / median:.2f} |")
    print(f"\nper-sample metrics identical in every run: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
