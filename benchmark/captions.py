"""Caption sources and the calibration / evaluation splits drawn from them.

Sources (``load_captions``):

- ``coco``: COCO caption annotations. ``path`` is a local ``captions_val2017.json`` /
  ``captions_val2014.json`` read with pycocotools; without a path, the COCO 2017 validation
  captions come from the Hugging Face hub through the optional ``datasets`` library.
- ``embedded``: the caption files shipped in the repo's ``datasets/<name>/`` folder
  (``calibration.txt`` and ``evaluation.txt``, already disjoint); ``path`` is the folder
  name, ``embedded`` by default. Each caption keeps the split of the file it came from.
- ``file``: a UTF-8 text file, one caption per line, blank lines skipped.

Every caption is whitespace-normalised (runs of spaces and newlines become one space), so
the same caption hashes the same whichever source it came from. For ``file`` and
``embedded`` each line is its own image.

``make_splits`` draws the two splits disjoint by image. The draw uses no random number
generator: images (and the captions of an image) are ordered by ``sha256(seed, id)``, which
gives the same split for a seed on every machine, Python and numpy version. The evaluation
split is the head of that order and the calibration split its tail. The manifest
records the source, the seed, the sizes, the ids and the sha256 of each split's caption
texts: two results are comparable only when those hashes agree.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmark.errors import UserError
from benchmark.fileio import parse_bounded

SOURCES = ("coco", "embedded", "file")
SPLITS = ("calibration", "evaluation")

# The hub copy of the COCO 2017 captions, pinned so that the captions cannot change under us.
HF_COCO_DATASET = "phiyodr/coco2017"
HF_COCO_REVISION = "036f3f8291db64d17faad9b09e59dd30bb65c4d7"


@dataclass(frozen=True)
class Caption:
    id: str                   # unique within its source (COCO annotation id, or "file:line")
    image_id: int | str       # captions of one image never go to both splits
    text: str
    split: str | None = None  # set when the source fixes the split (embedded files)


@dataclass(frozen=True)
class CaptionSet(Sequence):
    """The captions of one source, in source order, with where they came from."""

    source: str
    path: str | None
    captions: tuple[Caption, ...]

    def __getitem__(self, index):
        return self.captions[index]

    def __len__(self) -> int:
        return len(self.captions)

    def __iter__(self) -> Iterator[Caption]:
        return iter(self.captions)


@dataclass(frozen=True)
class Splits:
    calibration: list[Caption]
    evaluation: list[Caption]
    manifest: dict


def captions_sha256(captions: Sequence[Caption]) -> str:
    """sha256 of the caption texts in order (JSON list, UTF-8): what two runs must share."""
    texts = json.dumps([c.text for c in captions], ensure_ascii=False)
    return hashlib.sha256(texts.encode("utf-8")).hexdigest()


def load_captions(source: str, path: str | Path | None = None) -> CaptionSet:
    """Load every caption of a source (see the module docstring)."""
    if source == "coco":
        captions = _load_coco_file(Path(path)) if path is not None else _load_coco_hub()
        where = str(path) if path is not None else f"hf://datasets/{HF_COCO_DATASET}@{HF_COCO_REVISION}"
    elif source == "embedded":
        folder = datasets_dir() / (str(path) if path is not None else "embedded")
        if not folder.is_dir():
            raise UserError(f"{folder}: embedded caption folder not found")
        captions = []
        for split in SPLITS:
            captions += _load_lines(folder / f"{split}.txt", prefix=f"{split}:", split=split)
        where = f"datasets/{folder.name}"
    elif source == "file":
        if path is None:
            raise UserError("source 'file' needs a path to a text file, one caption per line")
        captions, where = _load_lines(Path(path), prefix=""), str(path)
    else:
        raise UserError(f"unknown caption source {source!r}; choose one of {', '.join(SOURCES)}")
    if not captions:
        raise UserError(f"{where}: no captions in this source")
    return CaptionSet(source, where, tuple(captions))


def datasets_dir() -> Path:
    """The caption files shipped with the package (``benchmark/data/``, package data of the
    wheel too): one folder per embedded caption set. Results name the set ``datasets/<name>``."""
    folder = Path(__file__).resolve().parent / "data"
    if not folder.is_dir():
        raise UserError(f"{folder}: the package's caption data folder is missing (a broken install?)")
    return folder


def embedded_captions_dir() -> Path:
    """The embedded model's caption files (calibration.txt, evaluation.txt)."""
    return datasets_dir() / "embedded"


def make_splits(captions: Sequence[Caption], calib_size: int, eval_size: int, seed: int = 0,
                captions_per_image: int = 1) -> Splits:
    """Draw calibration and evaluation splits, disjoint by image.

    ``calib_size`` and ``eval_size`` count images; each image brings ``captions_per_image``
    captions, chosen by the seed. Captions with a fixed ``split`` only go to that split.
    The evaluation split does not depend on ``calib_size``, nor the calibration split on
    ``eval_size`` (as long as both fit).
    """
    where = getattr(captions, "path", None) or "captions"
    for name, value in (("calib_size", calib_size), ("eval_size", eval_size)):
        if not isinstance(value, int) or value < 0:
            raise UserError(f"{name} must be a non-negative integer, got {value!r}")
    if not isinstance(captions_per_image, int) or captions_per_image < 1:
        raise UserError(f"captions_per_image must be a positive integer, got {captions_per_image!r}")

    by_image: dict[int | str, list[Caption]] = {}
    for caption in captions:
        by_image.setdefault(caption.image_id, []).append(caption)
    eligible = [i for i, group in by_image.items() if len(group) >= captions_per_image]
    order = sorted(eligible, key=lambda image_id: _rank(seed, image_id))

    # Evaluation draws from the front of the order, calibration from the back: each split
    # depends only on its own size (a larger size extends it), never on the other's.
    chosen: dict[str, list[int | str]] = {}
    taken: set[int | str] = set()
    for split, size, ordered in (("evaluation", eval_size, order), ("calibration", calib_size, order[::-1])):
        pool = [i for i in ordered if i not in taken and _split_of(by_image[i]) in (None, split)]
        if size > len(pool):
            having = f" with >= {captions_per_image} captions" if captions_per_image > 1 else ""
            raise UserError(f"{where}: {split} split of {size} images is larger than the source "
                             f"({len(pool)} images{having} left for {split})")
        chosen[split] = pool[:size]
        taken.update(pool[:size])

    manifest = {
        "source": getattr(captions, "source", "custom"),
        "path": getattr(captions, "path", None),
        "source_sha256": captions_sha256(captions),
        "seed": seed,
        "captions_per_image": captions_per_image,
    }
    picked = {}
    for split in SPLITS:
        picked[split] = [c for i in chosen[split]
                         for c in sorted(by_image[i], key=lambda c: _rank(seed, c.id))[:captions_per_image]]
        manifest[split] = {
            "images": len(chosen[split]),
            "captions": len(picked[split]),
            "image_ids": chosen[split],
            "ids": [c.id for c in picked[split]],
            "sha256": captions_sha256(picked[split]),
        }
    return Splits(picked["calibration"], picked["evaluation"], manifest)


def _rank(seed: int, key: int | str) -> str:
    # A seeded, platform-independent order: no RNG whose stream could change between versions.
    return hashlib.sha256(f"{seed}\x00{key}".encode()).hexdigest()


def _split_of(group: list[Caption]) -> str | None:
    splits = {c.split for c in group}
    if len(splits) > 1:
        raise UserError(f"image {group[0].image_id!r} has captions fixed to different splits: "
                         f"{sorted(map(str, splits))}")
    return splits.pop()


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _load_lines(path: Path, prefix: str, split: str | None = None) -> list[Caption]:
    text = parse_bounded(path, "caption file", str)
    captions = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            # One image per line: the id names the line, so it survives edits elsewhere in the file.
            captions.append(Caption(f"{prefix}{number}", f"{prefix}{number}", _normalise(line), split))
    if not captions:
        raise UserError(f"{path}: no captions in this file")
    return captions


def _load_coco_file(path: Path) -> list[Caption]:
    from pycocotools.coco import COCO

    document = parse_bounded(path, "COCO annotations file", json.loads, syntax="JSON",
                             errors=(json.JSONDecodeError,))
    if not isinstance(document, dict):
        raise UserError(f"{path}: not a COCO annotations file (top level is not a JSON object)")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            coco = COCO()
            coco.dataset = document
            coco.createIndex()
    except (KeyError, TypeError) as error:  # pycocotools indexes entries without checking them
        raise UserError(f"{path}: not a COCO annotations file (an entry lacks {error})") from None
    annotations = coco.dataset.get("annotations")
    if not isinstance(annotations, list):
        raise UserError(f"{path}: not a COCO annotations file (no 'annotations' list)")
    captions = []
    for ann in annotations:
        if not isinstance(ann, dict) or not {"id", "image_id", "caption"} <= ann.keys() \
                or not isinstance(ann["caption"], str):
            raise UserError(f"{path}: not a COCO captions file (an annotation lacks id, image_id or caption)")
        captions.append(Caption(str(ann["id"]), ann["image_id"], _normalise(ann["caption"])))
    if not captions:
        raise UserError(f"{path}: no captions in this file")
    return captions


def _load_coco_hub() -> list[Caption]:
    where = f"hf://datasets/{HF_COCO_DATASET}"
    try:
        import datasets
    except ImportError:
        raise UserError(f"{where}: no COCO annotations file given and the `datasets` library is not "
                         "installed; pass path=.../captions_val2017.json") from None
    try:
        rows = datasets.load_dataset(HF_COCO_DATASET, split="validation", revision=HF_COCO_REVISION)
    except Exception as error:  # offline, hub unreachable, dataset moved: all mean "not available"
        raise UserError(f"{where}: cannot load COCO captions from the hub ({type(error).__name__}); "
                         "pass path=.../captions_val2017.json") from None
    # One row per image: its annotation ids and captions, the same ids as the annotation file.
    return [Caption(str(ann_id), row["image_id"], _normalise(text))
            for row in rows for ann_id, text in zip(row["ids"], row["captions"], strict=False)]
