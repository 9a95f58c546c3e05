"""Caption accuracy on the embedded model: does each image show what its caption says?

Decided from the pixels alone, for captions of the embedded model's grammar
(``benchmark.models.embedded.data``): ``a <colour> <shape> <position> on a <background>
background`` or ``<two|three> <colour> <shapes> on a <background> background``. The
attributes checked are exactly those the grammar sets and the model is meant to follow:
background colour, object colour, and the position (one object) or the count (two or three).
The shape is not checked (the model draws shapes only roughly, see its model card).

Per image, on the 8-bit image as saved (``fidelity.to_uint8``), in [0, 1] units:

1. background: the per-channel median of the one-pixel border ring, named by the nearest
   ``BACKGROUNDS`` colour (Euclidean RGB);
2. objects: each pixel's distance to that median, divided by the distance of the object's own
   colour (the median of the pixels at least 60 % as far as the farthest one) — for the
   renderer's anti-aliased images, the fraction of the pixel the object covers — smoothed with
   a Gaussian (σ = ``SMOOTH_SIGMA`` px) and thresholded at ``COVER_THRESHOLD``; nothing is an
   object when no pixel is ``MIN_CONTRAST`` away. 4-connected components with at least
   ``MIN_AREA`` pixels and at least ``MIN_AREA_FRACTION`` of the largest one are the objects.
   The smoothing joins the fragments of one noisy generated object (pixels a little short of
   the threshold between them) without joining the renderer's objects (gaps of ≥ 1.7 px);
   σ 0.7–1.0 with thresholds 0.4–0.45 all count the renderer's images right, 0.8 / 0.4 is the
   middle of that range. A component holding two or more cores — 4-connected parts of it over
   ``CORE_THRESHOLD`` on the smoothed map, each of at least ``MIN_CORE_AREA`` pixels and
   ``MIN_CORE_FRACTION`` of its largest core — is that many objects: the model often draws
   two or three objects touching, joined by a thin or faint bridge that the smoothing lowers
   below the core threshold (a rendered object is one core: its cover only falls outwards);
3. object colour: per component the median of its core pixels (its farther half from the
   background), named by the nearest ``COLORS`` colour; right when every object has the
   caption's colour;
4. count: the number of objects (components, or their cores); the caption's count, and exactly
   one for a single-object caption;
5. position (single-object captions): the centroid of the largest component in [0, 1] image
   coordinates (x right, y down), named by the nearest ``POSITIONS`` centre — the renderer
   places the object at that centre with jitter, so the nearest centre is its position.

An image scores 1 when all of its caption's attributes are right, else 0; the metric is the
mean, and ``details["attribute_rates"]`` gives each attribute's rate (position over the
single-object captions only). Captions not of the grammar make the whole metric "not
computed" (a partial score would not be comparable), with the reason.

Checked (``python -m scripts.checker_accuracy``): right on 100 % of 3,128 renderer images
(the 128 captions of ``datasets/embedded`` and 3,000 random ones), and on 99.8 % with added
Gaussian noise of σ 0.08. On the full-precision model's 128 images of those captions it
disagreed with a count by eye on 2 (a fragmented triangle counted as two objects, three
objects joined by a thick bridge counted as two), and 3 more are ambiguous by eye; background,
colour and position agreed on all.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from benchmark.errors import UserError
from benchmark.metrics.base import MetricResult
from benchmark.metrics.fidelity import to_uint8
from benchmark.metrics.registry import Metric, MetricSpec
from benchmark.models.embedded.data import BACKGROUNDS, COLORS, POSITIONS, parse

__all__ = ["ATTRIBUTES", "METRIC", "CaptionAccuracy", "CaptionAccuracyScorer", "analyse", "caption_attributes", "check"]

NAME = "caption_accuracy"
ATTRIBUTES = ("background", "color", "count", "position")
MIN_CONTRAST = 0.15      # below this distance from the background nothing is an object
MIN_AREA = 4             # pixels, at 32 x 32 (the smallest rendered object covers ~12)
MIN_AREA_FRACTION = 0.2  # of the largest component: smaller ones are specks, not objects
SMOOTH_SIGMA = 0.8       # px, Gaussian smoothing of the cover map before thresholding
COVER_THRESHOLD = 0.4    # on the smoothed cover map
CORE_THRESHOLD = 0.7     # cores within a component: touching objects
MIN_CORE_AREA = 5        # pixels
MIN_CORE_FRACTION = 0.35  # of the component's largest core

_BG_NAMES, _BG_RGB = list(BACKGROUNDS), np.array(list(BACKGROUNDS.values()), dtype=np.float64)
_FG_NAMES, _FG_RGB = list(COLORS), np.array(list(COLORS.values()), dtype=np.float64)
_POS_NAMES, _POS_XY = list(POSITIONS), np.array(list(POSITIONS.values()), dtype=np.float64)


def caption_attributes(caption: str) -> dict:
    """What the caption asks for: background, color, count and position (None for two or three
    objects). ValueError for a caption that is not of the embedded grammar."""
    a = parse(caption)
    return {"background": a["background"], "color": a["color"], "count": a["count"], "position": a["position"]}


def _nearest(names: list[str], palette: np.ndarray, rgb: np.ndarray) -> str:
    return names[int(np.argmin(((palette - rgb) ** 2).sum(1)))]


def _smooth(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian smoothing of an (H, W) map, truncated at 3 σ, edges repeated."""
    radius = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    h, w = a.shape
    p = np.pad(a, radius, mode="edge")
    p = sum(k[j] * p[j:j + h] for j in range(len(k)))
    return sum(k[j] * p[:, j:j + w] for j in range(len(k)))


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean (H, W) mask, each an (n, 2) array of (row, col)."""
    h, w = mask.shape
    seen = np.zeros_like(mask)
    out = []
    for r0, c0 in zip(*np.nonzero(mask), strict=False):
        if seen[r0, c0]:
            continue
        seen[r0, c0] = True
        stack, pixels = [(r0, c0)], []
        while stack:
            r, c = stack.pop()
            pixels.append((r, c))
            for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= rr < h and 0 <= cc < w and mask[rr, cc] and not seen[rr, cc]:
                    seen[rr, cc] = True
                    stack.append((rr, cc))
        out.append(np.array(pixels))
    return out


def _large(parts: list[np.ndarray], min_area: int, min_fraction: float) -> list[np.ndarray]:
    """The components of at least ``min_area`` pixels and ``min_fraction`` of the largest, largest first."""
    parts = sorted(parts, key=len, reverse=True)
    if not parts:
        return []
    keep = max(min_area, min_fraction * len(parts[0]))
    return [p for p in parts if len(p) >= keep]


def analyse(image) -> dict:
    """What one image shows: background, objects' colours, count, position of the largest.

    ``image``: (3, H, W) float in [0, 1] or uint8, a tensor or numpy array, or one PIL image.
    Returns {"background", "colors" (one per component, largest first: touching objects share
    one), "count", "position" (of the largest component; None without objects), "centroid"
    (x, y in [0, 1] or None)}.
    """
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image)
    pixels = to_uint8(image[None] if isinstance(image, torch.Tensor) else [image], NAME)[0]
    x = pixels.numpy().astype(np.float64).transpose(1, 2, 0) / 255  # (H, W, 3)
    h, w, _ = x.shape
    border = np.concatenate([x[0], x[-1], x[1:-1, 0], x[1:-1, -1]])
    bg = np.median(border, axis=0)
    out = {"background": _nearest(_BG_NAMES, _BG_RGB, bg), "colors": [], "count": 0,
           "position": None, "centroid": None}
    dist = np.sqrt(((x - bg) ** 2).sum(-1))
    far = dist.max()
    if far < MIN_CONTRAST:
        return out
    fg = np.median(x[dist >= 0.6 * far], axis=0)
    cover = dist / max(np.sqrt(((fg - bg) ** 2).sum()), MIN_CONTRAST)
    smooth = _smooth(cover, SMOOTH_SIGMA)
    parts = _large(_components(smooth > COVER_THRESHOLD), MIN_AREA, MIN_AREA_FRACTION)
    for part in parts:
        d = dist[part[:, 0], part[:, 1]]
        core = part[d >= np.median(d)]
        out["colors"].append(_nearest(_FG_NAMES, _FG_RGB, np.median(x[core[:, 0], core[:, 1]], axis=0)))
        inside = np.zeros((h, w), dtype=bool)
        inside[part[:, 0], part[:, 1]] = True
        cores = _large(_components(inside & (smooth > CORE_THRESHOLD)), MIN_CORE_AREA, MIN_CORE_FRACTION)
        out["count"] += max(1, len(cores))
    if parts:
        rows, cols = parts[0][:, 0], parts[0][:, 1]
        centroid = np.array([(cols.mean() + 0.5) / w, (rows.mean() + 0.5) / h])
        out["centroid"] = (float(centroid[0]), float(centroid[1]))
        out["position"] = _pos_name(centroid)
    return out


def _pos_name(centroid: np.ndarray) -> str:
    return _POS_NAMES[int(np.argmin(((_POS_XY - centroid) ** 2).sum(1)))]


def check(image, caption: str) -> dict[str, bool]:
    """Which of the caption's attributes the image gets right: {"background", "color", "count"}
    and "position" for a single-object caption. ValueError for a caption not of the grammar."""
    want = caption_attributes(caption)
    seen = analyse(image)
    right = {"background": seen["background"] == want["background"],
             "color": bool(seen["colors"]) and all(c == want["color"] for c in seen["colors"]),
             "count": seen["count"] == want["count"]}
    if want["count"] == 1:
        right["position"] = seen["position"] == want["position"]
    return right


DETAILS = {
    "definition": "per caption 1 if background colour, object colour and position (one object) or count "
                  "(two/three objects) all match the caption, else 0; mean over captions",
    "method": "border median -> nearest background; cover = distance from it / the object's distance, "
              "Gaussian-smoothed (sigma 0.8 px), > 0.4, 4-connected components (area >= 4 px and >= 0.2 of the "
              "largest), split at cores > 0.7 (>= 5 px, >= 0.35 of the largest) -> count; core median -> nearest "
              "colour; centroid -> nearest position centre of data.POSITIONS",
    "images": "uint8 as saved to PNG: round(clamp(x, 0, 1) * 255)",
    "captions": "the embedded model's grammar (benchmark.models.embedded.data)",
}


class CaptionAccuracy:
    """Accumulates caption accuracy over batches: ``update(images, captions)``, then ``result()``."""

    NAME = NAME
    details: ClassVar[dict] = DETAILS

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._scores: list[float] = []
        self._attributes: dict[str, list[bool]] = {name: [] for name in ATTRIBUTES}
        self._foreign: list[str] = []

    def update(self, images, captions) -> torch.Tensor | None:
        """Check one batch; per-caption 1/0 scores (B,), or None (nothing kept) when a caption is
        not of the embedded grammar (then ``result()`` is not computed)."""
        pixels = to_uint8(images, NAME)
        captions = list(captions)
        if len(captions) != len(pixels):
            raise UserError(f"{NAME}: {len(pixels)} images but {len(captions)} captions")
        foreign = []
        for caption in captions:
            try:
                parse(caption)
            except ValueError:
                foreign.append(caption)
        if foreign:
            self._foreign += foreign
            return None
        scores = []
        for image, caption in zip(pixels, captions, strict=False):
            right = check(image, caption)
            for name, ok in right.items():
                self._attributes[name].append(ok)
            scores.append(float(all(right.values())))
        self._scores += scores
        return torch.tensor(scores, dtype=torch.float64)

    def result(self) -> MetricResult:
        if self._foreign:
            return MetricResult.not_computed(
                NAME, f"{len(self._foreign)} caption(s) are not of the embedded model's caption grammar "
                      f"(e.g. {self._foreign[0]!r}); caption accuracy checks only that grammar's captions",
                self.details)
        if not self._scores:
            return MetricResult.not_computed(NAME, "no samples", self.details)
        rates = {name: (sum(oks) / len(oks) if oks else None) for name, oks in self._attributes.items()}
        return MetricResult(NAME, sum(self._scores) / len(self._scores), list(self._scores), None,
                            {**self.details, "attribute_rates": rates, "samples": len(self._scores),
                             "single_object_samples": len(self._attributes["position"])})


class CaptionAccuracyScorer:
    """Caption accuracy of the full-precision row and of each cell: on the embedded model's
    captions only (another caption source: not computed, with the reason)."""

    def __init__(self, captions: str):
        self.reason = None if captions == "embedded" else \
            f"caption accuracy checks the embedded model's caption grammar; this run's captions are {captions!r}"

    def setup(self) -> dict:
        return {"status": "not computed" if self.reason else "computed", "reason": self.reason, **DETAILS}

    def reference(self, images, captions) -> dict[str, MetricResult]:
        if self.reason:
            return {NAME: MetricResult.not_computed(NAME, self.reason, DETAILS)}
        metric = CaptionAccuracy()
        metric.update(images, captions)
        return {NAME: metric.result()}

    def cell(self, reference, generation, captions) -> dict[str, MetricResult]:
        return self.reference(generation.images, captions)


METRIC = Metric(NAME, "share of images whose background, object colour and position or count match their "
                      "caption, checked from the pixels (embedded captions only)",
                (MetricSpec(NAME, NAME, "caption accuracy", "{:.3f}", True, 0.001, True),),
                lambda config, device: CaptionAccuracyScorer(config.captions))
