import hashlib
import json
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path

import pytest

from benchmark import captions
from benchmark.captions import Caption, load_captions, make_splits

DATA = Path(__file__).resolve().parent / "data"
SYNTHETIC_FILE = DATA / "synthetic_captions.json"  # written by data/make_synthetic_coco.py
REAL_FILE = Path(__file__).resolve().parents[2] / "shared" / "coco" / "captions_val2017.json"
# Every COCO test runs on the synthetic file, and on the real COCO 2017 validation captions
# too where ../shared/coco has them: a clean clone skips none of them.
COCO_FILES = {"synthetic": SYNTHETIC_FILE} | ({"real": REAL_FILE} if REAL_FILE.is_file() else {})
# (images, captions) of each file; the real one's are COCO's published counts.
COUNTS = {SYNTHETIC_FILE: (200, 1049), REAL_FILE: (5000, 25014)}


def _sha(texts):
    # The manifest's definition, written out independently.
    return hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode("utf-8")).hexdigest()


def _one_line_error(excinfo, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.fixture(scope="module", params=list(COCO_FILES))
def coco_file(request):
    return COCO_FILES[request.param]


@pytest.fixture(scope="module")
def coco(coco_file):
    return load_captions("coco", coco_file)


# --- COCO caption files: the synthetic one, and the real one where present ----------------

@pytest.mark.slow  # end to end
def test_synthetic_file_is_what_its_script_writes(tmp_path):
    out = tmp_path / "synthetic.json"
    subprocess.run([sys.executable, str(DATA / "make_synthetic_coco.py"), str(out)], check=True,
                   capture_output=True)
    assert out.read_bytes() == SYNTHETIC_FILE.read_bytes()


def test_coco_file_loads_every_caption(coco_file, coco):
    raw = json.loads(coco_file.read_text(encoding="utf-8"))["annotations"]
    images, count = COUNTS[coco_file]
    assert len(coco) == len(raw) == count
    assert len({c.image_id for c in coco}) == images
    assert len({c.id for c in coco}) == count
    assert [(c.id, c.image_id) for c in coco] == [(str(a["id"]), a["image_id"]) for a in raw]
    assert coco.source == "coco" and coco.path == str(coco_file)


def test_coco_captions_are_whitespace_normalised(coco_file, coco):
    raw = [a["caption"] for a in json.loads(coco_file.read_text(encoding="utf-8"))["annotations"]]
    assert [c.text for c in coco] == [" ".join(text.split()) for text in raw]
    assert all(c.text and c.text == " ".join(c.text.split()) for c in coco)
    # the file has what normalisation is for: trailing spaces, newlines, double spaces
    assert any(text.endswith(" ") for text in raw) and any("\n" in text for text in raw)
    assert any("  " in text.strip() for text in raw)


def test_splits_have_the_sizes_asked_and_share_no_image(coco):
    splits = make_splits(coco, calib_size=64, eval_size=100, seed=0)
    assert len(splits.calibration) == 64 and len(splits.evaluation) == 100
    calib_images = {c.image_id for c in splits.calibration}
    eval_images = {c.image_id for c in splits.evaluation}
    assert len(calib_images) == 64 and len(eval_images) == 100  # one caption per image
    assert not calib_images & eval_images


def test_several_captions_per_image(coco):
    splits = make_splits(coco, calib_size=10, eval_size=20, seed=3, captions_per_image=3)
    assert len(splits.calibration) == 30 and len(splits.evaluation) == 60
    for split in (splits.calibration, splits.evaluation):
        per_image = {}
        for c in split:
            per_image.setdefault(c.image_id, set()).add(c.id)
        assert all(len(ids) == 3 for ids in per_image.values())
    assert not {c.image_id for c in splits.calibration} & {c.image_id for c in splits.evaluation}
    # only images with enough captions are eligible (most have 5, a few 6 or 7)
    with_six = {image for image, n in Counter(c.image_id for c in coco).items() if n >= 6}
    assert 0 < len(with_six) < len({c.image_id for c in coco})
    six = make_splits(coco, calib_size=0, eval_size=len(with_six), captions_per_image=6)
    assert {c.image_id for c in six.evaluation} == with_six and len(six.evaluation) == 6 * len(with_six)
    with pytest.raises(ValueError, match=rf"\({len(with_six)} images with >= 6 captions left for evaluation\)"):
        make_splits(coco, calib_size=0, eval_size=len(with_six) + 1, captions_per_image=6)


def test_same_seed_same_split_other_seed_other_split(coco):
    a = make_splits(coco, 32, 32, seed=7)
    b = make_splits(coco, 32, 32, seed=7)
    c = make_splits(coco, 32, 32, seed=8)
    assert a == b
    assert [x.id for x in a.evaluation] != [x.id for x in c.evaluation]
    assert a.manifest["evaluation"]["sha256"] != c.manifest["evaluation"]["sha256"]


def test_each_split_depends_only_on_its_own_size(coco):
    base = make_splits(coco, calib_size=20, eval_size=30, seed=2)
    assert make_splits(coco, calib_size=50, eval_size=30, seed=2).evaluation == base.evaluation
    assert make_splits(coco, calib_size=20, eval_size=60, seed=2).calibration == base.calibration
    assert make_splits(coco, calib_size=20, eval_size=60, seed=2).evaluation[:30] == base.evaluation


def test_the_same_image_set_in_another_order_gives_the_same_split(coco):
    shuffled = list(reversed(coco))
    assert make_splits(shuffled, 16, 16, seed=1).evaluation == make_splits(coco, 16, 16, seed=1).evaluation


def test_manifest_records_the_captions(coco_file, coco):
    splits = make_splits(coco, calib_size=8, eval_size=12, seed=5)
    manifest = json.loads(json.dumps(splits.manifest))  # JSON-able as it is
    assert manifest == splits.manifest
    assert manifest["source"] == "coco" and manifest["path"] == str(coco_file)
    assert manifest["seed"] == 5 and manifest["captions_per_image"] == 1
    assert manifest["source_sha256"] == _sha([c.text for c in coco])
    for name, split in (("calibration", splits.calibration), ("evaluation", splits.evaluation)):
        entry = manifest[name]
        assert entry["images"] == len(split) and entry["captions"] == len(split)
        assert entry["ids"] == [c.id for c in split]
        assert entry["image_ids"] == [c.image_id for c in split]
        assert entry["sha256"] == _sha([c.text for c in split])


def test_split_larger_than_the_source_is_an_error(coco_file, coco):
    images = len({c.image_id for c in coco})
    evaluation = images // 5 + 1           # 1001 of the real file's 5000 images
    calibration = images - evaluation + 1  # one more than is left: 4000
    with pytest.raises(ValueError) as excinfo:
        make_splits(coco, calib_size=calibration, eval_size=evaluation)
    _one_line_error(excinfo, str(coco_file), f"calibration split of {calibration} images",
                    f"({images - evaluation} images left for calibration)")
    with pytest.raises(ValueError) as excinfo:
        make_splits(coco, calib_size=10, eval_size=10, captions_per_image=8)  # images have 5 to 7
    _one_line_error(excinfo, "evaluation split of 10 images", "(0 images with >= 8 captions left")


# --- bad input ------------------------------------------------------------------------

@pytest.mark.parametrize("content, fragment", [
    (b'{"annotations": [', "invalid JSON"),
    (b"[1, 2]", "not a COCO annotations file"),
    (b'{"images": []}', "no 'annotations' list"),
    (b'{"annotations": [{"id": 1, "image_id": 2, "bbox": [0, 0, 1, 1]}]}', "not a COCO captions file"),
    (b'{"images": [], "annotations": []}', "no captions"),
    (b'{"annotations": [{"caption": "a cat"}]}', "not a COCO annotations file (an entry lacks 'image_id')"),
    (b'{"annotations": [{"id": 1, "image_id": 2, "caption": null}]}', "not a COCO captions file"),
    ('{"annotations": [{"id": 1, "image_id": 2, "caption": "caf\u00e9"}]}'.encode("latin-1"), "not UTF-8"),
])
def test_bad_coco_files(tmp_path, content, fragment):
    path = tmp_path / "captions_bad.json"
    path.write_bytes(content)
    with pytest.raises(ValueError) as excinfo:
        load_captions("coco", path)
    _one_line_error(excinfo, "captions_bad.json", fragment)


@pytest.mark.parametrize("source", ["coco", "file"])
def test_missing_file(tmp_path, source):
    with pytest.raises(ValueError) as excinfo:
        load_captions(source, tmp_path / "nowhere.txt")
    _one_line_error(excinfo, "nowhere.txt", "not found")


@pytest.mark.parametrize("content, fragment", [
    (b"\n  \n\t\n", "no captions"),
    (b"a cat\n\xff\xfe a dog\n", "not UTF-8"),
])
def test_bad_text_files(tmp_path, content, fragment):
    path = tmp_path / "prompts.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError) as excinfo:
        load_captions("file", path)
    _one_line_error(excinfo, "prompts.txt", fragment)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown caption source 'flickr'"):
        load_captions("flickr")
    with pytest.raises(ValueError, match="needs a path"):
        load_captions("file")
    few = [Caption(str(i), i, f"caption {i}") for i in range(3)]
    with pytest.raises(ValueError, match="calib_size must be a non-negative integer"):
        make_splits(few, -1, 1)
    with pytest.raises(ValueError, match="captions_per_image"):
        make_splits(few, 1, 1, captions_per_image=0)


# --- text files -----------------------------------------------------------------------

def test_file_source_one_image_per_line(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red  car\n\n  a blue boat \nthe moon\r\na dog\n", encoding="utf-8")
    loaded = load_captions("file", path)
    assert [c.text for c in loaded] == ["a red car", "a blue boat", "the moon", "a dog"]
    assert [c.id for c in loaded] == ["1", "3", "4", "5"]  # line numbers; blank lines skipped
    assert len({c.image_id for c in loaded}) == 4
    splits = make_splits(loaded, 1, 3, seed=0)
    assert sorted(c.text for c in splits.calibration + splits.evaluation) == sorted(c.text for c in loaded)
    assert splits.manifest["source"] == "file" and splits.manifest["path"] == str(path)
    with pytest.raises(ValueError, match=r"prompts.txt: calibration split of 1 images .*\(0 images left"):
        make_splits(loaded, 1, 4)


# --- the embedded model's captions ------------------------------------------------------

@pytest.fixture
def datasets_folder(tmp_path, monkeypatch):
    folder = tmp_path / "datasets"
    (folder / "embedded").mkdir(parents=True)
    (folder / "embedded" / "calibration.txt").write_text("c one\nc two\nc three\n", encoding="utf-8")
    (folder / "embedded" / "evaluation.txt").write_text("e one\ne two\n\ne three\ne four\n", encoding="utf-8")
    monkeypatch.setattr(captions, "datasets_dir", lambda: folder)
    return folder


def test_embedded_source_keeps_each_file_in_its_split(datasets_folder):
    loaded = load_captions("embedded")
    assert len(loaded) == 7 and loaded.path == "datasets/embedded"
    for seed in range(5):
        splits = make_splits(loaded, 2, 3, seed=seed)
        assert {c.text[0] for c in splits.calibration} == {"c"}
        assert {c.text[0] for c in splits.evaluation} == {"e"}
    assert {c.id for c in make_splits(loaded, 3, 4).evaluation} == {"evaluation:1", "evaluation:2",
                                                                   "evaluation:4", "evaluation:5"}
    too_many = r"datasets/embedded: calibration split of 4 images .*\(3 images left for calibration\)"
    with pytest.raises(ValueError, match=too_many):
        make_splits(loaded, 4, 1)


def test_embedded_errors(datasets_folder):
    with pytest.raises(ValueError, match="embedded caption folder not found"):
        load_captions("embedded", "other-model")
    (datasets_folder / "embedded" / "evaluation.txt").unlink()
    with pytest.raises(ValueError) as excinfo:
        load_captions("embedded")
    _one_line_error(excinfo, "evaluation.txt", "not found")


def test_the_caption_files_are_package_data():
    assert captions.datasets_dir() == Path(captions.__file__).resolve().parent / "data"
    assert (captions.datasets_dir() / "embedded" / "evaluation.txt").is_file()


# --- COCO through the hub (the `datasets` library, faked: no network here) --------------

def test_coco_without_file_or_datasets_library_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ValueError) as excinfo:
        load_captions("coco")
    _one_line_error(excinfo, "`datasets` library is not installed", "captions_val2017.json")


def test_coco_from_the_hub_rows(monkeypatch):
    rows = [{"image_id": 9, "ids": [1, 2], "captions": ["a cat ", "a\ncat sleeping"]},
            {"image_id": 4, "ids": [3], "captions": ["a dog"]}]
    calls = []
    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda *args, **kwargs: calls.append((args, kwargs)) or rows
    monkeypatch.setitem(sys.modules, "datasets", fake)
    loaded = load_captions("coco")
    assert [(c.id, c.image_id, c.text) for c in loaded] == [("1", 9, "a cat"), ("2", 9, "a cat sleeping"),
                                                           ("3", 4, "a dog")]
    assert calls[0][1]["revision"] == captions.HF_COCO_REVISION and calls[0][1]["split"] == "validation"

    def offline(*args, **kwargs):
        raise ConnectionError("hub unreachable")
    fake.load_dataset = offline
    with pytest.raises(ValueError, match="cannot load COCO captions from the hub"):
        load_captions("coco")
