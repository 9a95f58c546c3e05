"""Generation time of the embedded model, full precision vs every target at W4A4 with HadaNorm.

    python -m scripts.speed [--threads 2] [--repeats 3] [--kernel compile]

16 evaluation captions x 20 steps with classifier-free guidance (one batch of 32). The runs
alternate FP and W4A4 and each time is the fastest of ``--repeats``, which is the least
disturbed by other work on a shared machine.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmark.captions import embedded_captions_dir
from benchmark.models import load_model
from benchmark.run.calibration import calibrate, caption_seeds, read_captions


def main(argv=None):
    from tabulate import tabulate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--kernel", default="auto", help="the online part's path: auto, torch, compile")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model("embedded")
    captions = read_captions(embedded_captions_dir() / "evaluation.txt")[:16]
    seeds = caption_seeds(len(captions))
    stats, _ = calibrate(model, read_captions(embedded_captions_dir() / "calibration.txt"), steps=args.steps)

    def timed():
        start = time.perf_counter()
        model.generate(captions, seeds, steps=args.steps, batch_size=16)
        return time.perf_counter() - start

    model.generate(captions[:2], seeds[:2], steps=2)  # warm-up: first-call allocations
    with model.quantized("hadanorm", "w4a4", stats, kernel=args.kernel):  # and compilation
        model.generate(captions, seeds, steps=1, batch_size=16)
    fp, w4a4 = [], []
    for _ in range(args.repeats):
        fp.append(timed())
        with model.quantized("hadanorm", "w4a4", stats, kernel=args.kernel):
            w4a4.append(timed())
    rows = [["FP32", f"{min(fp):.2f}", "1.00"],
            [f"W4A4 HadaNorm, all targets ({args.kernel})", f"{min(w4a4):.2f}", f"{min(w4a4) / min(fp):.2f}"]]
    print(f"embedded model, {len(captions)} captions x {args.steps} steps (CFG: batch {2 * len(captions)}), "
          f"{args.threads} threads, best of {args.repeats}")
    print(tabulate(rows, ["", "seconds", "ratio"], tablefmt="github"))


if __name__ == "__main__":
    main()
