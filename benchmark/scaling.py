"""Wall time of one benchmark run on 1 and on N processes of this machine, as a ratio.

    python -m benchmark.scaling                                   # 1 and 2 processes, the published config
    python -m benchmark.scaling --processes 1,2 --repeats 2 -- --precisions w4a4 --steps 10

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

from .distributed import _cores
from .results import read_results

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.scaling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts (default 1,2)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("flags", nargs="*", help="after --: flags for hadabench run "
                        "(default: --config leaderboard/benchmark.toml --metrics sqnr)")
    args = parser.parse_args(argv)
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
