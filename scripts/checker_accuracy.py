"""How often the caption checker (``benchmark.metrics.caption_accuracy``) is right.

    python -m scripts.checker_accuracy [--random 400] [--seed 0] [--model] [--steps 20]

On images drawn by the embedded data set's own renderer (``data.render``), whose captions
are true by construction, for the 64 + 64 captions of ``benchmark/data/embedded/*.txt`` and
``--random`` captions drawn from the grammar: the fraction judged right (and per attribute).
With ``--model``: the same on the full-precision embedded model's images for the 64
evaluation captions (seeds 0..63, as a run draws them), which is the metric's FP value.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from benchmark.metrics.caption_accuracy import CaptionAccuracy, analyse, caption_attributes
from benchmark.models.embedded.data import all_captions, render

ROOT = Path(__file__).resolve().parents[1]


def dataset_captions(name: str) -> list[str]:
    return [line.strip() for line in (ROOT / "datasets" / "embedded" / f"{name}.txt").read_text().splitlines()
            if line.strip()]


def score(images: torch.Tensor, captions: list[str], label: str, show_failures: int = 10) -> float:
    metric = CaptionAccuracy()
    start = time.perf_counter()
    scores = metric.update(images, captions)
    seconds = time.perf_counter() - start
    result = metric.result()
    rates = ", ".join(f"{k} {v:.1%}" for k, v in result.details["attribute_rates"].items() if v is not None)
    print(f"{label}: {result.value:.1%} right ({int(sum(result.per_sample))}/{len(captions)}); {rates}; "
          f"{1000 * seconds / len(captions):.2f} ms per image")
    for image, caption, ok in zip(images, captions, scores.tolist(), strict=False):
        if not ok and show_failures:
            show_failures -= 1
            seen = analyse(image)
            print(f"  wrong: {caption!r}: wanted {caption_attributes(caption)}, saw "
                  f"{ {k: seen[k] for k in ('background', 'colors', 'count', 'position', 'centroid')} }")
    return result.value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--random", type=int, default=400, help="random grammar captions besides the data sets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", action="store_true", help="also the FP embedded model's evaluation images")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    captions = dataset_captions("calibration") + dataset_captions("evaluation")
    captions += [rng.choice(all_captions()) for _ in range(args.random)]
    images = torch.from_numpy(__import__("numpy").stack([render(c, rng) for c in captions]))
    score(images, captions, f"renderer images ({len(captions)} captions)")

    if args.model:
        from benchmark.models import load_model

        evaluation = dataset_captions("evaluation")
        model = load_model("embedded")
        start = time.perf_counter()
        generation = model.generate(evaluation, seeds=list(range(len(evaluation))), steps=args.steps)
        print(f"generated {len(evaluation)} images in {time.perf_counter() - start:.0f} s")
        score(generation.images, evaluation, f"FP embedded model, {args.steps} steps ({len(evaluation)} captions)")


if __name__ == "__main__":
    main()
