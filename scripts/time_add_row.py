"""How long adding one plugin row to the published leaderboard takes, against a full rerun.

    python scripts/time_add_row.py [--config leaderboard/benchmark.toml] [--plugin tests/plugins/lowrank.py]
                                 [--transform lowrank] [run flags, e.g. --eval-size 8]

In a scratch folder, one after the other in this process:

1. full:       ``hadabench run --config C --fresh`` (every transform of the configuration),
               with an empty calibration cache, as the CI gate runs it;
2. add, cold:  a copy of that run folder as it is published (without reference.safetensors,
               which is not committed) and an empty calibration cache, as a contributor's
               first run: ``hadabench run --config C --plugin P --transforms T --out COPY``;
3. add, warm:  the same into a second copy that keeps the reference, with the calibration
               cache of step 1 (a contributor's second try).

Prints the wall-clock seconds of each and their ratios to the full run, and checks that the
added runs kept every earlier cell as it was. Timings depend on the machine's load: say so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(flags: list[str]) -> float:
    tick = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "benchmark", "run", *flags], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - tick
    if done.returncode != 0:
        sys.exit(f"hadabench run {' '.join(flags)} exited {done.returncode}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="leaderboard/benchmark.toml")
    parser.add_argument("--plugin", default="tests/plugins/lowrank.py")
    parser.add_argument("--transform", default="lowrank")
    args, extra = parser.parse_known_args()

    scratch = Path(tempfile.mkdtemp(prefix="hadabench-add-row-"))
    try:
        full, cold, warm = scratch / "full", scratch / "cold", scratch / "warm"
        common = ["--config", args.config, *extra]
        seconds = {"full rerun": _run([*common, "--out", str(full), "--fresh",
                                       "--cache-dir", str(scratch / "cache-full")])}
        shutil.copytree(full, cold, ignore=shutil.ignore_patterns("reference.safetensors"))
        shutil.copytree(full, warm)
        add = [*common, "--plugin", args.plugin, "--transforms", args.transform]
        seconds["add one row, cold"] = _run([*add, "--out", str(cold), "--cache-dir", str(scratch / "cache-cold")])
        seconds["add one row, warm"] = _run([*add, "--out", str(warm), "--cache-dir", str(scratch / "cache-full")])

        before = json.loads((full / "results.json").read_text())["cells"]
        for folder in (cold, warm):
            after = json.loads((folder / "results.json").read_text())["cells"]
            assert all(after[key] == cell for key, cell in before.items()), "an earlier cell changed"
            added = sorted(set(after) - set(before))
        checks = {c["label"]: c["exactness"]["check_s"] for c in before.values()}  # once per transform
        print(f"\n{len(before)} cells in the full run; adding {args.transform!r} added {added}")
        print(f"the full run's exactness checks took {sum(checks.values()):.1f} s in all")
        print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
        print("| run | seconds | / full rerun |\n|---|---|---|")
        for name, value in seconds.items():
            print(f"| {name} | {value:.1f} | {value / seconds['full rerun']:.2f} |")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
