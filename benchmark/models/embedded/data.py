"""The procedural captioned image set the embedded model is trained on.

Every caption names a shape, a colour, a background and either a position (one object) or
a count (two or three objects); the image is drawn from the caption with random jitter in
size and placement, so the text decides what is drawn and cross-attention has real work.
Images are 32 x 32 RGB in [0, 1], anti-aliased by 4x supersampling.
"""

from __future__ import annotations

import itertools
import random

import numpy as np

from benchmark.errors import UserError

SIZE = 32
SHAPES = ("circle", "square", "triangle", "cross")
COLORS = {
    "red": (0.9, 0.1, 0.1), "green": (0.1, 0.75, 0.15), "blue": (0.15, 0.3, 0.95),
    "yellow": (0.95, 0.85, 0.1), "white": (0.97, 0.97, 0.97), "purple": (0.6, 0.15, 0.8),
}
BACKGROUNDS = {
    "black": (0.03, 0.03, 0.03), "gray": (0.5, 0.5, 0.5),
    "light blue": (0.6, 0.8, 0.95), "brown": (0.45, 0.28, 0.12),
}
# Centre of the object in [0, 1] coordinates (x to the right, y down).
POSITIONS = {
    "in the top left": (0.27, 0.27), "in the top right": (0.73, 0.27),
    "in the bottom left": (0.27, 0.73), "in the bottom right": (0.73, 0.73),
    "in the center": (0.5, 0.5),
}
COUNTS = {"two": 2, "three": 3}
PLURALS = {shape: shape + ("es" if shape.endswith("s") else "s") for shape in SHAPES}
_SUPER = 4  # supersampling factor for anti-aliased edges


def all_captions() -> list[str]:
    """Every caption of the set, in a fixed order."""
    out = []
    for shape, color, bg in itertools.product(SHAPES, COLORS, BACKGROUNDS):
        out += [f"a {color} {shape} {pos} on a {bg} background" for pos in POSITIONS]
        out += [f"{count} {color} {PLURALS[shape]} on a {bg} background" for count in COUNTS]
    return out


def parse(caption: str) -> dict:
    """The attributes of a caption of ``all_captions()``; a clear error for anything else."""
    words = caption.strip()
    head, sep, bg = words.partition(" on a ")
    if not sep or not bg.endswith(" background"):
        raise UserError(f"not a caption of the embedded set: {caption!r}")
    bg = bg[: -len(" background")]
    parts = head.split(" ", 3)
    singular = {plural: shape for shape, plural in PLURALS.items()}
    if len(parts) == 3 and parts[0] in COUNTS and parts[2] in singular:
        count, color, shape, rest = COUNTS[parts[0]], parts[1], singular[parts[2]], None
    elif len(parts) == 4 and parts[0] == "a":
        count, color, shape, rest = 1, parts[1], parts[2], parts[3]
    else:
        raise UserError(f"not a caption of the embedded set: {caption!r}")
    if color not in COLORS or shape not in SHAPES or bg not in BACKGROUNDS or (
            count == 1 and rest not in POSITIONS):
        raise UserError(f"not a caption of the embedded set: {caption!r}")
    return {"count": count, "color": color, "shape": shape, "background": bg, "position": rest}


def _mask(shape: str, cx: float, cy: float, r: float, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    x, y = grid
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        s = r * 0.85
        return (np.abs(dx) <= s) & (np.abs(dy) <= s)
    if shape == "triangle":  # pointing up
        top, bottom = cy - r, cy + 0.8 * r
        half = (y - top) / (bottom - top) * r
        return (y >= top) & (y <= bottom) & (np.abs(dx) <= half)
    if shape == "cross":
        w = r * 0.35
        return ((np.abs(dx) <= w) & (np.abs(dy) <= r)) | ((np.abs(dy) <= w) & (np.abs(dx) <= r))
    raise UserError(f"unknown shape {shape!r}")


def render(caption: str, rng: random.Random) -> np.ndarray:
    """Draw one image for ``caption``: (3, 32, 32) float32 in [0, 1]."""
    a = parse(caption)
    n = SIZE * _SUPER
    coords = (np.arange(n) + 0.5) / n
    grid = np.meshgrid(coords, coords)
    mask = np.zeros((n, n), dtype=bool)
    if a["count"] == 1:
        cx, cy = POSITIONS[a["position"]]
        r = rng.uniform(0.15, 0.2)
        mask |= _mask(a["shape"], cx + rng.uniform(-0.04, 0.04), cy + rng.uniform(-0.04, 0.04), r, grid)
    else:  # objects on a row or column, evenly spaced, with jitter
        k = a["count"]
        r = rng.uniform(0.09, 0.12) if k == 3 else rng.uniform(0.12, 0.15)
        along = [(i + 0.5) / k for i in range(k)]
        across = rng.uniform(0.35, 0.65)
        vertical = rng.random() < 0.5
        for t in along:
            t += rng.uniform(-0.02, 0.02)
            cx, cy = (across, t) if vertical else (t, across)
            mask |= _mask(a["shape"], cx, cy, r, grid)
    cover = mask.reshape(SIZE, _SUPER, SIZE, _SUPER).mean(axis=(1, 3))[None]
    fg = np.array(COLORS[a["color"]], dtype=np.float32)[:, None, None]
    bg = np.array(BACKGROUNDS[a["background"]], dtype=np.float32)[:, None, None]
    return (cover * fg + (1 - cover) * bg).astype(np.float32)


def caption_splits(seed: int = 0, size: int = 64) -> tuple[list[str], list[str]]:
    """Disjoint calibration and evaluation caption sets of ``size`` each, drawn with ``seed``."""
    captions = all_captions()
    random.Random(seed).shuffle(captions)
    return sorted(captions[:size]), sorted(captions[size:2 * size])
