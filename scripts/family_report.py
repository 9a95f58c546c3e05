"""Every built-in family on its tiny random pipeline: targets, fp exactness, time per step.

    python -m scripts.family_report [--threads 2] [--steps 4] [--repeats 3] [--roles]

For each family's tiny pipeline (``benchmark.families.examples``, built into a temporary folder and
loaded through ``load_model``, the real loading code): the number of target groups and
quantized linears, the linears left in full precision by the declaration's exclusions, the
worst relative error of the final latents over the six baselines at ``fp`` (must be under
1e-4), and the transformer's time per denoising step (the sum of its forward calls, CFG
included, over ``--steps`` steps of 2 captions) in full precision and with every target at
W4A4 under HadaNorm. Runs alternate fp and W4A4, and each time is the fastest of
``--repeats``, the least disturbed by other work on a shared machine. ``--roles`` also prints
each family's role table (role -> linears of a block) as markdown.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

CAPTIONS = ["a red cat sitting on the table", "two dogs in a field"]
SEEDS = [11, 12]


def role_table(family) -> str:
    from tabulate import tabulate

    rows = [[f"`{attr}`", f"`{role}`", ", ".join(f"`{p}`" for p in paths),
             "optional" if role in family.optional else ""]
            for attr, roles in family.blocks.items() for role, paths in roles.items()]
    rows += [["", "not quantized", f"`{pattern}`", reason] for pattern, reason in family.exclude.items()]
    return tabulate(rows, ["blocks", "role", "linears (inside a block)", "note"], tablefmt="github")


class _StepTimer:
    """Sums the wall time of the transformer's forward calls."""

    def __init__(self, transformer):
        self.total, self._start = 0.0, None
        transformer.register_forward_pre_hook(lambda *_: self._begin())
        transformer.register_forward_hook(lambda *_: self._end())

    def _begin(self):
        self._start = time.perf_counter()

    def _end(self):
        self.total += time.perf_counter() - self._start


def measure(variant: str, folder: Path, steps: int, repeats: int) -> dict:
    from benchmark.families.examples import save_tiny
    from benchmark.models import load_model
    from benchmark.run.calibration import calibrate
    from benchmark.transform.registry import BASELINES

    model = load_model(str(save_tiny(variant, folder)))
    stats, _ = calibrate(model, CAPTIONS, steps=steps, cache_dir=None)
    reference = model.generate(CAPTIONS, SEEDS, steps=steps)
    worst = 0.0
    for name in BASELINES:
        with model.quantized(name, "fp", stats):
            out = model.generate(CAPTIONS, SEEDS, steps=steps)
        worst = max(worst, ((out.latents - reference.latents).norm() / reference.latents.norm()).item())
    timer = _StepTimer(model.transformer)

    def per_step():
        timer.total = 0.0
        model.generate(CAPTIONS, SEEDS, steps=steps)
        return timer.total / steps

    fp, w4a4 = [], []
    for _ in range(repeats):
        fp.append(per_step())
        with model.quantized("hadanorm", "w4a4", stats):
            w4a4.append(per_step())
    groups = model.targets()
    covered = {name for g in groups for name, _ in g.linears}
    excluded = sum(1 for name, m in model.transformer.named_modules()
                   if isinstance(m, torch.nn.Linear) and name.split(".")[0] in model.family.blocks
                   and name not in covered)
    return {"variant": variant, "pipeline": type(model.pipe).__name__, "family": model.family.name,
            "groups": len(groups), "linears": len(covered), "excluded": excluded, "fp_error": worst,
            "fp_ms": 1000 * min(fp), "w4a4_ms": 1000 * min(w4a4)}


def main(argv=None):
    from tabulate import tabulate

    from benchmark.families.examples import VARIANTS
    from benchmark.families.registry import families

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--roles", action="store_true", help="print each family's role table too")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.roles:
        for entry in families().values():
            print(f"\n{entry.name}: {entry.value.description}\n")
            print(role_table(entry.family))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            r = measure(variant, Path(tmp) / variant, args.steps, args.repeats)
            rows.append([r["variant"], r["pipeline"], r["family"], r["groups"], r["linears"], r["excluded"],
                         f"{r['fp_error']:.1e}", f"{r['fp_ms']:.1f}", f"{r['w4a4_ms']:.1f}",
                         f"{r['w4a4_ms'] / r['fp_ms']:.2f}"])
    print(f"\ntiny random pipelines, 2 captions x {args.steps} steps, {args.threads} threads, "
          f"transformer time per step (CFG included), best of {args.repeats}")
    print(tabulate(rows, ["tiny pipeline", "pipeline", "family", "groups", "linears", "excluded",
                          "fp error (worst of 6)", "fp ms/step", "W4A4 HadaNorm ms/step", "ratio"],
                   tablefmt="github"))


if __name__ == "__main__":
    main()
