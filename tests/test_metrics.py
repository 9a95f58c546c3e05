import json
import logging
import math
import time
import warnings

import numpy as np
import pytest
import torch

from benchmark.metrics import ClipIQA, ClipScore, MetricResult, Sqnr, image_batch, sqnr_db

# --- SQNR -------------------------------------------------------------------------------


def test_sqnr_of_identical_outputs_is_infinite_and_reported_as_such():
    x = torch.randn(3, 4, 8, 8)
    assert torch.equal(sqnr_db(x, x.clone()), torch.full((3,), math.inf, dtype=torch.float64))
    metric = Sqnr("latent")
    metric.update(x, x.clone())
    mean, pooled = metric.result()
    assert mean.value == math.inf and pooled.value == math.inf
    record = json.loads(json.dumps(mean.to_dict(), allow_nan=False))  # valid JSON, no Infinity
    assert record["value"] == "inf" and record["per_sample"] == ["inf"] * 3
    assert MetricResult.from_dict(record) == mean


@pytest.mark.parametrize("shape", [(4, 4, 16, 16), (2, 3, 32, 24)])  # latents, decoded images
def test_sqnr_of_added_noise_matches_the_closed_form(shape):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator)
    noise = 0.1 * torch.randn(shape, generator=generator)
    xs, ns = x.numpy().reshape(shape[0], -1), noise.numpy().reshape(shape[0], -1)
    expected = 10 * np.log10((xs.astype(np.float64) ** 2).sum(1) / (ns.astype(np.float64) ** 2).sum(1))
    np.testing.assert_allclose(sqnr_db(x, x + noise).numpy(), expected, rtol=1e-5)

    metric = Sqnr("image")
    metric.update(x[:1], (x + noise)[:1])  # two batches give the same as one
    metric.update(x[1:], (x + noise)[1:])
    mean, pooled = metric.result()
    assert (mean.name, pooled.name) == ("sqnr_mean_db", "sqnr_pooled_db")
    assert mean.value == pytest.approx(expected.mean(), rel=1e-5)
    assert mean.per_sample == pytest.approx(list(expected), rel=1e-5)
    pooled_expected = 10 * math.log10((xs.astype(np.float64) ** 2).sum() / (ns.astype(np.float64) ** 2).sum())
    assert pooled.value == pytest.approx(pooled_expected, rel=1e-5)
    assert mean.details["what"] == "image" and mean.details["samples"] == shape[0]


def test_sqnr_exact_values_and_the_two_aggregates():
    x = torch.stack([torch.full((2, 5), 2.0), torch.full((2, 5), 20.0)])
    test = x + 0.2  # sample 0: ratio 100 (20 dB), sample 1: 10000 (40 dB)
    assert sqnr_db(x, test).tolist() == pytest.approx([20.0, 40.0])
    metric = Sqnr()
    metric.update(x, test)
    mean, pooled = metric.result()
    assert mean.value == pytest.approx(30.0)
    assert pooled.value == pytest.approx(10 * math.log10((4 + 400) / (0.04 * 2)))  # energy-weighted


def test_sqnr_of_a_sign_flip_is_minus_6_db():
    x = torch.randn(5, 3, 8, 8)
    assert sqnr_db(x, -x).tolist() == pytest.approx([-20 * math.log10(2)] * 5)  # -6.0206 dB
    assert sqnr_db(x, -x).max() < -6.02


def test_sqnr_bad_input():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="differ in shape"):
        sqnr_db(x, torch.randn(2, 4))
    with pytest.raises(ValueError, match="test contains NaN"):
        sqnr_db(x, torch.full_like(x, math.nan))
    mean, pooled = Sqnr().result()
    assert not mean.computed and mean.reason == "no samples" and not pooled.computed


# --- images -----------------------------------------------------------------------------


def test_image_batch_accepts_tensors_and_pil_and_rejects_unmapped_output():
    from PIL import Image

    u8 = torch.randint(0, 256, (2, 3, 8, 6), dtype=torch.uint8)
    pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in u8]
    assert torch.equal(image_batch(pil, "m"), u8.float() / 255)
    assert torch.equal(image_batch(u8, "m"), u8.float() / 255)
    with pytest.raises(ValueError, match=r"m: float images must lie in \[0, 1\]"):
        image_batch(u8.float() / 127.5 - 1, "m")
    with pytest.raises(ValueError, match="expected images"):
        image_batch(torch.rand(2, 8, 8), "m")


# --- CLIP score -------------------------------------------------------------------------

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
CAPTIONS = ["a cat on a sofa", "two dogs playing in the snow", "a red car", "a bowl of fruit", "the sea"]


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    """A randomly initialised small open_clip model, saved as a local open_clip folder."""
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP).eval()
    folder = tmp_path_factory.mktemp("tiny-open-clip")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return model, folder


def _images(n, seed=0):
    return torch.rand(n, 3, 40, 48, generator=torch.Generator().manual_seed(seed))


def _direct_clip_score(model, preprocess, tokenizer, images, captions):
    from torchvision.transforms.functional import to_pil_image

    with torch.no_grad():
        pixels = torch.stack([preprocess(to_pil_image((x * 255).round().to(torch.uint8))) for x in images])
        image_emb = model.encode_image(pixels)
        text_emb = model.encode_text(tokenizer(captions))
    image_emb = image_emb / image_emb.norm(dim=-1, keepdim=True)
    text_emb = text_emb / text_emb.norm(dim=-1, keepdim=True)
    return [100 * max((i * t).sum().item(), 0.0) for i, t in zip(image_emb, text_emb, strict=False)]


def test_clip_score_equals_a_direct_computation_from_the_embeddings(tiny_open_clip):
    import open_clip

    model, _ = tiny_open_clip
    preprocess = open_clip.image_transform(32, is_train=False)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")  # the OpenAI BPE, bundled with open_clip
    metric = ClipScore(model, preprocess, tokenizer, model_name="tiny", pretrained="random", batch_size=2)
    images = _images(5)
    metric.update(images[:3], CAPTIONS[:3])  # batches of 3 and 2, chunks of 2 inside
    metric.update(images[3:], CAPTIONS[3:])
    result = metric.result()
    expected = _direct_clip_score(model, preprocess, tokenizer, images, CAPTIONS)
    assert min(expected) == 0 < max(expected)  # both sides of max(cos, 0) are exercised
    assert result.per_sample == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert result.value == pytest.approx(sum(expected) / 5, rel=1e-4, abs=1e-4)
    assert result.details["backbone"] == "tiny" and result.details["pretrained"] == "random"


def test_clip_score_through_the_open_clip_loader(tiny_open_clip):
    model, folder = tiny_open_clip
    metric = ClipScore.load(f"local-dir:{folder}", pretrained="", batch_size=4)
    assert metric.available, metric.reason
    import open_clip

    images = _images(3, seed=1)
    expected = _direct_clip_score(model, open_clip.image_transform(32, is_train=False),
                                  open_clip.get_tokenizer("ViT-B-32"), images, CAPTIONS[:3])
    assert metric.scores(images, CAPTIONS[:3]).tolist() == pytest.approx(expected, rel=1e-4, abs=1e-4)
    with pytest.raises(ValueError, match="3 images but 2 captions"):
        metric.scores(images, CAPTIONS[:2])


def test_clip_score_without_weights_is_not_computed_fast(tmp_path, caplog):
    pytest.importorskip("open_clip")
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="benchmark.metrics"):
        metric = ClipScore.load("ViT-L-14", "openai", cache_dir=str(tmp_path))  # an empty cache
    assert time.monotonic() - start < 5  # no network attempt
    assert not metric.available and "not in the local Hugging Face cache" in metric.reason
    assert metric.update(_images(1), ["a cat"]) is None
    result = metric.result()
    assert result.value is None and result.per_sample is None and result.reason == metric.reason
    assert result.details["backbone"] == "ViT-L-14" and result.details["pretrained"] == "openai"
    assert json.loads(json.dumps(result.to_dict()))["value"] is None
    assert [r.getMessage() for r in caplog.records] == [f"clip_score not computed: {metric.reason}"]
    assert "no pretrained weights 'nope'" in ClipScore.load("ViT-B-32", "nope").reason


# --- CLIP-IQA through pyiqa -------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_rn_clip(tmp_path_factory):
    """A randomly initialised small ResNet CLIP, saved as a TorchScript archive like RN50.pt."""
    pytest.importorskip("pyiqa", reason="pyiqa is not installed (recipe in benchmark/metrics/clip_iqa.py)")
    from pyiqa.archs.clip_imports import clip
    from pyiqa.archs.clip_model import CLIP

    torch.manual_seed(0)
    model = CLIP(embed_dim=32, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=16,
                 vision_patch_size=None, context_length=77, vocab_size=49408, transformer_width=64,
                 transformer_heads=1, transformer_layers=1).eval()
    path = tmp_path_factory.mktemp("clip") / "tiny-rn.pt"
    with warnings.catch_warnings():  # tracing only serves to write the archive format; its warnings are noise
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace_module(model, {"encode_text": (clip.tokenize(["a photo"]),)}), path)
    return path


def test_clip_iqa_runs_end_to_end_through_pyiqa(tiny_rn_clip):
    metric = ClipIQA.load(tiny_rn_clip, batch_size=2)
    assert metric.available, metric.reason
    gray, white = torch.full((1, 3, 64, 64), 0.5), torch.ones(1, 3, 64, 64)
    images = torch.cat([gray, white, _images(1, seed=3)[:, :, :32, :32].repeat(1, 1, 2, 2)])
    scores = metric.update(images)
    assert scores.shape == (3,) and ((scores >= 0) & (scores <= 1)).all()
    assert len(set(scores.tolist())) == 3  # different images, different scores
    assert torch.equal(metric.scores(images), scores)  # deterministic
    result = metric.result()
    assert result.name == "clip_iqa" and result.per_sample == scores.double().tolist()
    assert result.value == pytest.approx(scores.double().mean().item())
    assert result.details["weights"] == str(tiny_rn_clip) and result.details["official_rn50"] is False


def test_clip_iqa_without_weights_is_not_computed_fast(tmp_path, caplog):
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="benchmark.metrics"):
        metric = ClipIQA.load(tmp_path / "clip" / "RN50.pt")
    assert time.monotonic() - start < 5
    assert not metric.available and metric.update(_images(1)) is None
    result = metric.result()
    assert result.value is None and result.reason == metric.reason
    assert ("not found at" in result.reason and "RN50.pt" in result.reason) or "not installed" in result.reason
    assert len(caplog.records) == 1


def test_clip_iqa_on_a_corrupt_file_is_not_computed(tmp_path):
    pytest.importorskip("pyiqa", reason="pyiqa is not installed (recipe in benchmark/metrics/clip_iqa.py)")
    path = tmp_path / "RN50.pt"
    path.write_bytes(b"not a model")
    metric = ClipIQA.load(path)
    assert not metric.available and "pyiqa cannot build clipiqa" in metric.reason
    assert metric.details["official_rn50"] is False
