"""Draw a grid of the embedded model's images for a dozen captions: samples.png.

    python -m scripts.embedded_samples [--out benchmark/models/embedded/samples.png]
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import torch

from benchmark.models import load_model
from benchmark.models.embedded.adapter import EMBEDDED_DIR
from benchmark.run.calibration import caption_seeds

CAPTIONS = [
    "a red circle in the top left on a black background",
    "a blue square in the bottom right on a gray background",
    "a yellow triangle in the center on a brown background",
    "a white cross in the top right on a light blue background",
    "a green circle in the bottom left on a brown background",
    "a purple square in the center on a black background",
    "two red triangles on a gray background",
    "three yellow circles on a black background",
    "two white squares on a brown background",
    "three blue crosses on a light blue background",
    "a green triangle in the top left on a gray background",
    "a yellow square in the bottom left on a light blue background",
]


def grid(images: torch.Tensor, captions: list[str], columns: int = 4, scale: int = 4):
    from PIL import Image, ImageDraw

    size = images.shape[-1] * scale
    cell_w, text_h = size + 40, 52
    rows = (len(captions) + columns - 1) // columns
    canvas = Image.new("RGB", (columns * cell_w, rows * (size + text_h)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (image, caption) in enumerate(zip(images, captions, strict=False)):
        x, y = (i % columns) * cell_w, (i // columns) * (size + text_h)
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        canvas.paste(Image.fromarray(pixels).resize((size, size), Image.NEAREST), (x + 20, y + 4))
        for j, line in enumerate(textwrap.wrap(caption, 28)):
            draw.text((x + 4, y + size + 8 + 12 * j), line, fill="black")
    return canvas


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=EMBEDDED_DIR / "samples.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    model = load_model("embedded")
    out = model.generate(CAPTIONS, caption_seeds(len(CAPTIONS), args.seed), steps=20)
    grid(out.images, CAPTIONS).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
