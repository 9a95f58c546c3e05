"""Activation statistics per target role: what makes a model's activations hard to quantize.

    python -m scripts.activation_stats            # the embedded model and the random tiny PixArt

For every target group, over all tokens of all denoising steps of a generation:

- mean spread: std over channels of the per-channel means, divided by the mean over channels
  of the per-channel stds (large: channels sit at very different offsets, what centering fixes);
- outlier ratio: the largest channel absmax over the median channel absmax (large: a few
  channels dominate one per-token grid, what rotation and scaling fix).

Each role's row is the mean over the blocks (and the largest block value in brackets).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence

import torch

from benchmark.models.base import ROLES

__all__ = ["activation_statistics", "format_table"]


@torch.no_grad()
def activation_statistics(model, captions: Sequence[str], seeds: Sequence[int], steps: int = 20,
                          batch_size: int = 16) -> dict[str, dict[str, list[float]]]:
    """Per role, the per-block values of ``mean_spread`` and ``outlier_ratio``."""
    sums: dict[str, list] = {}

    def record(group, x):
        x = x.double().flatten(0, -2)
        s = sums.setdefault(group.name, [0, 0.0, 0.0, torch.zeros(x.shape[-1], dtype=torch.float64,
                                                               device=x.device)])
        s[0] += x.shape[0]
        s[1] = s[1] + x.sum(0)
        s[2] = s[2] + (x * x).sum(0)
        s[3] = torch.maximum(s[3], x.abs().amax(0))

    with model.watching_inputs(record):
        model.generate(captions, seeds, steps=steps, batch_size=batch_size)
    out = {role: {"mean_spread": [], "outlier_ratio": []} for role in ROLES}
    for g in model.targets():
        n, total, squares, absmax = sums[g.name]
        mean = total / n
        std = (squares / n - mean * mean).clamp(min=0).sqrt()
        out[g.role]["mean_spread"].append((mean.std() / std.mean()).item())
        out[g.role]["outlier_ratio"].append((absmax.max() / absmax.median()).item())
    return out


def format_table(columns: dict[str, dict]) -> str:
    """A markdown table: one row per role, two columns (spread, outliers) per model."""
    from tabulate import tabulate

    headers = ["role"] + [f"{name}: {metric}" for name in columns for metric in ("mean spread", "outlier ratio")]
    rows = []
    for role in ROLES:
        row = [role]
        for stats in columns.values():
            for metric in ("mean_spread", "outlier_ratio"):
                values = stats[role][metric]
                row.append(f"{sum(values) / len(values):.2f} ({max(values):.2f})")
        rows.append(row)
    return tabulate(rows, headers, tablefmt="github")


def main(argv=None):
    from benchmark.captions import embedded_captions_dir
    from benchmark.families.examples import save_tiny_pixart
    from benchmark.models import load_model
    from benchmark.run.calibration import caption_seeds, read_captions

    parser = argparse.ArgumentParser(description="Activation statistics per target role")
    parser.add_argument("--captions", type=int, default=16, help="how many evaluation captions")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    captions = read_captions(embedded_captions_dir() / "evaluation.txt")[: args.captions]
    seeds = caption_seeds(len(captions))
    columns = {"embedded": activation_statistics(load_model("embedded"), captions, seeds, args.steps)}
    with tempfile.TemporaryDirectory() as folder:
        tiny = load_model(str(save_tiny_pixart(folder + "/tiny")))
        columns["tiny PixArt (random)"] = activation_statistics(tiny, captions, seeds, args.steps)
    print(f"{len(captions)} evaluation captions x {args.steps} steps; mean over blocks (max over blocks)")
    print(format_table(columns))


if __name__ == "__main__":
    main()
