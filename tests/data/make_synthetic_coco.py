"""Write tests/data/synthetic_captions.json: a small made-up caption file in the COCO format.

It stands in for COCO's ``captions_val2017.json`` wherever that file is absent, so the split
tests never skip. It has the same layout (``info``, ``licenses``, ``images`` with ``id`` and
``file_name``, ``annotations`` with ``image_id``, ``id`` and ``caption``) and the same shape
of data, only smaller: 200 images with 5 to 7 captions each, sparse integer ids, the
annotations of one image interleaved with others, and the raw whitespace the real captions
have (trailing spaces, a newline at the end, double spaces) plus a little of what they lack
(tabs, leading spaces, non-ASCII letters), so that normalisation is exercised.

Every choice comes from sha256 of a key, not from ``random``: the file is the same byte for
byte on every machine and Python version (tests/test_captions.py regenerates and compares).

    python tests/data/make_synthetic_coco.py [OUT]
"""

import hashlib
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "synthetic_captions.json"
IMAGES = 200

SUBJECTS = ["cat", "dog", "man", "woman", "child", "horse", "bus", "train", "pizza", "bicycle",
            "giraffe", "elephant", "surfer", "skateboarder", "kite", "boat", "clock tower",
            "plate of food", "teddy bear", "motorcycle", "zebra", "laptop", "bird", "sheep",
            "fire hydrant", "tennis player", "vase of flowers", "stop sign", "café table", "piñata"]
ADJECTIVES = ["red", "small", "large", "old", "young", "white", "black", "striped", "wooden",
              "shiny", "brown", "yellow", "tall", "blue", "dirty", "colorful"]
ACTIONS = ["sitting", "standing", "parked", "lying", "waiting", "resting", "walking", "leaning",
           "riding", "perched", "displayed", "flying"]
PLACES = ["a kitchen counter", "the beach", "a busy street", "a grassy field", "the snow",
          "a wooden bench", "a city sidewalk", "the living room", "a train platform",
          "a dirt road", "the water", "a bed", "a table", "the airport", "a parking lot",
          "a fenced pen", "the garden", "a market stall"]
PREPOSITIONS = ["on", "in", "near", "next to", "beside", "in front of", "behind", "across"]
TEMPLATES = [
    "A {adj} {subject} {action} {prep} {place}.",
    "a {subject} {action} {prep} {place}",
    "The {adj} {subject} is {action} {prep} {place}.",
    "One {adj} {subject} and another {subject} {action} {prep} {place} together.",
    "There is a {subject} {action} {prep} {place}.",
    "A close up of a {adj} {subject} {prep} {place}",
    "A {subject} that is {adj}, {action} {prep} {place} on a sunny day.",
    "{adj} {subject} {action} {prep} {place} with people watching",
]


def _pick(key: str, n: int) -> int:
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16) % n


def _caption(key: str) -> str:
    def choose(name, words):
        return words[_pick(f"{key}/{name}", len(words))]

    text = choose("template", TEMPLATES).format(
        adj=choose("adj", ADJECTIVES), subject=choose("subject", SUBJECTS), action=choose("action", ACTIONS),
        prep=choose("prep", PREPOSITIONS), place=choose("place", PLACES))
    # The real file's whitespace, roughly as often: ~14% end in a space, some in a newline,
    # ~1.5% hold a double space; tabs and leading spaces are extra cases for normalisation.
    roll = _pick(f"{key}/space", 100)
    if roll < 14:
        text += " "
    elif roll < 17:
        text += "\n"
    elif roll < 20:
        words = text.split(" ")
        cut = 1 + _pick(f"{key}/cut", len(words) - 1)
        text = " ".join(words[:cut]) + "  " + " ".join(words[cut:])
    elif roll < 21:
        text = text.replace(" ", "\t", 1)
    elif roll < 22:
        text = "  " + text + " \n"
    return text


def synthetic_coco() -> dict:
    # Sparse, distinct image ids like COCO's (6 digits, unordered); 5 to 7 captions per image.
    image_ids = sorted({1 + _pick(f"image/{i}", 600_000) for i in range(IMAGES)})
    assert len(image_ids) == IMAGES, "image id collision: change the key"
    annotations = []
    for image_id in image_ids:
        count = 5 + (_pick(f"count/{image_id}", 20) >= 16) + (_pick(f"count/{image_id}", 20) >= 19)
        for k in range(count):
            annotations.append({"image_id": image_id, "caption": _caption(f"{image_id}/{k}")})
    # COCO interleaves the annotations of different images and numbers them sparsely.
    annotations.sort(key=lambda a: hashlib.sha256(f"{a['image_id']}/{a['caption']}".encode()).hexdigest())
    ann_id = 0
    for annotation in annotations:
        ann_id += 1 + _pick(f"ann/{ann_id}", 300)
        annotation["id"] = ann_id
    return {
        "info": {"description": "hadabench synthetic COCO-style captions (tests/data/make_synthetic_coco.py)",
                 "url": "", "version": "1.0", "year": 2026, "contributor": "hadabench",
                 "date_created": "2026/01/01"},
        "licenses": [{"url": "https://opensource.org/licenses/MIT", "id": 1, "name": "MIT License"}],
        "images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in image_ids],
        "annotations": [{"image_id": a["image_id"], "id": a["id"], "caption": a["caption"]} for a in annotations],
    }


def render(dataset: dict) -> str:
    """JSON with one image or annotation per line, so that a diff of the file stays readable."""
    def dump(value):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    lines = ["{", f'"info":{dump(dataset["info"])},', f'"licenses":{dump(dataset["licenses"])},']
    for key in ("images", "annotations"):
        entries = [dump(entry) for entry in dataset[key]]
        lines += [f'"{key}":[', ",\n".join(entries), "]," if key == "images" else "]"]
    return "\n".join(lines + ["}"]) + "\n"


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    out.write_bytes(render(synthetic_coco()).encode("utf-8"))  # "\n" line ends on every OS
    print(f"wrote {out}")
