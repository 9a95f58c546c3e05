"""PSNR / SSIM against independent computations, and the embedded caption checker (issue 26)."""

import json
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.metrics import MetricResult
from benchmark.metrics.caption_accuracy import CaptionAccuracy, analyse, check
from benchmark.metrics.fidelity import Psnr, Ssim, psnr_db, ssim, to_uint8
from benchmark.models.embedded.data import BACKGROUNDS, COLORS, POSITIONS, SIZE, all_captions, render


def _uint8_exact(generator, shape):
    """Float images in [0, 1] that are exactly k / 255, and their uint8 values."""
    k = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    return k.float() / 255, k


def _perturbed(images, generator, scale=0.02):
    return (images + scale * torch.randn(images.shape, generator=generator)).clamp(0, 1)


def _numpy_uint8(images: torch.Tensor) -> np.ndarray:
    """The PNG quantization, written independently in numpy: (B, H, W, 3) uint8."""
    return np.round(np.clip(images.numpy(), 0, 1) * 255).astype(np.uint8).transpose(0, 2, 3, 1)


def _numpy_psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(255.0 ** 2 / mse)


# --- the 8-bit images ---------------------------------------------------------------------


def test_to_uint8_is_what_the_run_writes_to_png(tmp_path):
    from benchmark.run.folder import save_images

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 16, 12, generator=generator)
    images[0, 0, 0, :4] = torch.tensor([0.5 / 255, 1.5 / 255, 254.5 / 255, 1.0])  # rounding ties and the top
    save_images(images, tmp_path)
    saved = np.stack([np.asarray(Image.open(tmp_path / f"{i:02d}.png")) for i in range(3)])
    assert np.array_equal(to_uint8(images).permute(0, 2, 3, 1).numpy(), saved)
    assert np.array_equal(_numpy_uint8(images), saved)
    # uint8 and PIL inputs are taken as they are
    assert torch.equal(to_uint8(torch.from_numpy(saved).permute(0, 3, 1, 2)), to_uint8(images))
    assert torch.equal(to_uint8([Image.fromarray(a) for a in saved]), to_uint8(images))


@pytest.mark.parametrize("bad", [torch.full((1, 3, 8, 8), 1.5), torch.full((1, 3, 8, 8), -0.5),
                                 torch.full((1, 3, 8, 8), float("nan")), torch.zeros(1, 4, 8, 8)])
def test_images_outside_the_contract_are_an_error(bad):
    with pytest.raises(ValueError):
        psnr_db(bad, bad)


def test_reference_and_images_must_match_in_shape():
    with pytest.raises(ValueError, match="differ in shape"):
        Psnr().update(torch.zeros(2, 3, 16, 16), torch.zeros(2, 3, 16, 15))
    with pytest.raises(ValueError, match="at least 11 pixels"):
        ssim(torch.zeros(1, 3, 10, 16), torch.zeros(1, 3, 10, 16))


# --- PSNR ---------------------------------------------------------------------------------


@pytest.mark.parametrize("perturb", [None, 0.003, 0.02, 0.2])
def test_psnr_equals_an_independent_numpy_computation(perturb):
    generator = torch.Generator().manual_seed(1)
    reference, _ = _uint8_exact(generator, (6, 3, SIZE, SIZE))
    images = (_uint8_exact(generator, reference.shape)[0] if perturb is None
              else _perturbed(reference, generator, perturb))
    expected = _numpy_psnr(_numpy_uint8(reference), _numpy_uint8(images))
    got = psnr_db(reference, images)
    assert got.dtype == torch.float64 and got.shape == (6,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-4)
    if perturb == 0.003:  # below half a level most pixels round back: some images identical, some not
        assert np.isfinite(expected).any()


def test_psnr_of_identical_images_is_infinite_and_survives_json():
    generator = torch.Generator().manual_seed(2)
    images, k = _uint8_exact(generator, (3, 3, SIZE, SIZE))
    metric = Psnr()
    assert torch.equal(metric.update(images, k), torch.full((3,), math.inf, dtype=torch.float64))
    result = metric.result()
    assert result.name == "psnr_db" and result.value == math.inf and result.per_sample == [math.inf] * 3
    record = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert MetricResult.from_dict(record) == result


def test_psnr_accumulates_per_caption_over_batches():
    generator = torch.Generator().manual_seed(3)
    reference = _uint8_exact(generator, (5, 3, SIZE, SIZE))[0]
    images = _perturbed(reference, generator)
    metric = Psnr()
    metric.update(reference[:2], images[:2])
    metric.update(reference[2:], images[2:])
    result = metric.result()
    expected = _numpy_psnr(_numpy_uint8(reference), _numpy_uint8(images))
    np.testing.assert_allclose(result.per_sample, expected, atol=1e-4)
    assert result.value == pytest.approx(expected.mean(), abs=1e-4)
    assert result.details["samples"] == 5 and "log10" in result.details["formula"]
    metric.reset()
    empty = metric.result()
    assert not empty.computed and empty.reason == "no samples"


# --- SSIM ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(SIZE, SIZE), (17, 23), (11, 40)])
@pytest.mark.parametrize("perturb", [None, 0.004, 0.03])
def test_ssim_equals_scikit_image(size, perturb):
    skimage_metrics = pytest.importorskip("skimage.metrics")
    generator = torch.Generator().manual_seed(4)
    reference = _uint8_exact(generator, (4, 3, *size))[0]
    images = (_uint8_exact(generator, reference.shape)[0] if perturb is None
              else _perturbed(reference, generator, perturb))
    images[0] = reference[0]  # one identical pair
    reference[1] = 0.5        # one flat reference
    a, b = _numpy_uint8(reference), _numpy_uint8(images)
    expected = np.array([skimage_metrics.structural_similarity(
        x, y, channel_axis=-1, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        for x, y in zip(a, b, strict=True)])
    got = ssim(reference, images)
    assert got.dtype == torch.float64 and got.shape == (4,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-4)
    assert got[0].item() == 1.0


def test_ssim_sees_small_errors_and_identical_images_give_one():
    generator = torch.Generator().manual_seed(5)
    reference = torch.from_numpy(np.stack([render(c, random.Random(0)) for c in all_captions()[:6]]))
    metric = Ssim()
    assert metric.update(reference, reference.clone()).tolist() == [1.0] * 6
    noisy = metric.update(reference, _perturbed(reference, generator, 0.05))
    assert (noisy < 0.99).all() and (noisy > 0).all()
    result = metric.result()
    assert result.name == "ssim" and result.details["samples"] == 12
    assert result.per_sample[:6] == [1.0] * 6 and result.value == pytest.approx(np.mean(result.per_sample))
    assert "sigma 1.5" in result.details["formula"]


# --- caption accuracy ---------------------------------------------------------------------


def _renderer_set(n_random=36, seed=0):
    """The 64 evaluation captions of the embedded model's split and random grammar captions,
    drawn by the data set's own renderer."""
    from benchmark.models.embedded.data import caption_splits

    rng = random.Random(seed)
    captions = caption_splits()[1] + [rng.choice(all_captions()) for _ in range(n_random)]
    return torch.from_numpy(np.stack([render(c, rng) for c in captions])), captions


def test_the_checker_is_right_on_the_renderers_images():
    images, captions = _renderer_set()
    metric = CaptionAccuracy()
    scores = metric.update(images, captions)
    result = metric.result()
    assert result.computed and len(result.per_sample) == len(captions) == 100
    assert result.value >= 0.98, [c for c, s in zip(captions, scores.tolist(), strict=True) if not s]
    rates = result.details["attribute_rates"]
    assert set(rates) == {"background", "color", "count", "position"}
    assert all(rate >= 0.98 for rate in rates.values())
    assert result.details["single_object_samples"] == sum(not c.startswith(("two", "three")) for c in captions)


def _wrong(caption: str, attribute: str) -> str:
    """The caption with one attribute changed to another value of the grammar."""
    if attribute == "color":  # the second word in both forms of the grammar
        first, old, rest = caption.split(" ", 2)
        return f"{first} {next(c for c in COLORS if c != old)} {rest}"
    if attribute == "background":
        old = next(b for b in BACKGROUNDS if caption.endswith(f"on a {b} background"))
        new = next(b for b in BACKGROUNDS if b != old)
        return caption[: -len(f"{old} background")] + f"{new} background"
    if attribute == "count":
        for old, new in (("two ", "three "), ("three ", "two ")):
            if caption.startswith(old):
                return new + caption[len(old):]
        raise AssertionError(caption)
    old = next(p for p in POSITIONS if f" {p} " in caption)
    return caption.replace(old, next(p for p in POSITIONS if p != old))


@pytest.mark.parametrize("attribute", ["color", "background", "count", "position"])
def test_a_wrong_caption_scores_zero(attribute):
    rng = random.Random(7)
    pool = [c for c in all_captions() if c.startswith(("two", "three")) == (attribute == "count")]
    captions = rng.sample(pool, 12)
    images = torch.from_numpy(np.stack([render(c, rng) for c in captions]))
    wrong = [_wrong(c, attribute) for c in captions]
    assert all(w != c for w, c in zip(wrong, captions, strict=True))
    metric = CaptionAccuracy()
    assert metric.update(images, captions).tolist() == [1.0] * 12  # the true captions pass
    metric.reset()
    assert metric.update(images, wrong).tolist() == [0.0] * 12
    result = metric.result()
    assert result.value == 0.0 and result.details["attribute_rates"][attribute] == 0.0
    for image, caption in zip(images, wrong, strict=True):
        right = check(image, caption)
        assert not right[attribute] and all(ok for name, ok in right.items() if name != attribute)


def test_an_empty_image_has_no_object():
    caption = "a red circle in the top left on a gray background"
    blank = torch.tensor(BACKGROUNDS["gray"]).reshape(1, 3, 1, 1).expand(1, 3, SIZE, SIZE).contiguous()
    seen = analyse(blank[0])
    assert seen["count"] == 0 and seen["background"] == "gray" and seen["position"] is None
    metric = CaptionAccuracy()
    assert metric.update(blank, [caption]).tolist() == [0.0]
    assert check(blank[0], caption) == {"background": True, "color": False, "count": False, "position": False}


@pytest.mark.parametrize("foreign", ["a photo of a cat", "a red circle in the middle on a black background",
                                     "four red circles on a black background", "a red circle in the top left",
                                     "a pink circle in the top left on a black background"])
def test_captions_outside_the_grammar_are_not_computed(foreign):
    images, captions = _renderer_set(n_random=0)
    metric = CaptionAccuracy()
    assert metric.update(images[:3], captions[:3]) is not None
    assert metric.update(images[3:5], [captions[3], foreign]) is None
    result = metric.result()
    assert not result.computed and result.value is None and result.per_sample is None
    assert "grammar" in result.reason and repr(foreign) in result.reason
    metric.reset()
    assert metric.result().reason == "no samples"


def test_the_caption_count_must_match_the_images():
    images, captions = _renderer_set(n_random=0)
    with pytest.raises(ValueError, match="captions"):
        CaptionAccuracy().update(images[:3], captions[:2])


def _gray_canvas():
    return np.broadcast_to(np.array(BACKGROUNDS["gray"], dtype=np.float32)[:, None, None], (3, SIZE, SIZE)).copy()


def test_touching_objects_are_counted_apart_and_specks_are_not_objects():
    red = np.array(COLORS["red"], dtype=np.float32)[:, None]
    image = _gray_canvas()
    image[:, 12:19, 5:12] = red[..., None]   # two 7 x 7 squares ...
    image[:, 12:19, 20:27] = red[..., None]
    image[:, 15, 12:20] = red                # ... joined by a one-pixel bridge, as the model draws them
    caption = "two red squares on a gray background"
    assert analyse(image)["count"] == 2 and all(check(image, caption).values())
    assert not check(image, "three red squares on a gray background")["count"]

    image = _gray_canvas()
    image[:, 4:12, 4:12] = red[..., None]    # one square in the top left ...
    image[:, 20:22, 24:26] = red[..., None]  # ... and a 2 x 2 speck
    assert analyse(image)["count"] == 1
    assert all(check(image, "a red square in the top left on a gray background").values())
