"""The weight-bound image metrics, LPIPS and FID, offline: without their weights each is "not
computed" with the reason and how to fetch them; with stand-in weights (random weights of the
real architecture, saved where and how the real loaders read them) each loads through the real
path, and its value equals an independent reference implementation's on the same stand-in;
LPIPS's per-caption values and FID's set-level numbers flow into results, the leaderboard,
``compare``, ``power`` and the gate."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from benchmark import _compat
from benchmark.cli import main
from benchmark.errors import UserError
from benchmark.fileio import write_json
from benchmark.metrics import fid as fid_module
from benchmark.metrics.base import PerSampleScorer
from benchmark.metrics.fid import FidFeatures, FidScorer, clean_resize, frechet_distance
from benchmark.metrics.image_reward import ImageReward
from benchmark.metrics.perceptual import ALEXNET_URL, Lpips, LpipsScorer
from benchmark.metrics.registry import metric_spec
from benchmark.reports.check import compare
from benchmark.reports.leaderboard import render
from benchmark.results.compare import compare_runs, power_rows, rank_cells
from benchmark.results.schema import SCHEMA
from benchmark.run.config import RunConfig, parse_transforms
from benchmark.run.scoring import Scorers

_compat.ensure_torchvision()
import torchvision  # noqa: E402  (after the CPU-torch shim)


def _use_hub(monkeypatch, hub: Path) -> Path:
    """Point torch's hub directory (torchvision's cache) and pyiqa's cache (<hub>/pyiqa) at ``hub``."""
    from pyiqa.utils import download_util

    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))
    monkeypatch.setattr(download_util, "DEFAULT_CACHE_DIR", str(hub / "pyiqa"))
    return hub


@pytest.fixture(scope="module")
def standin_hub(tmp_path_factory):
    """A torch hub directory holding stand-ins in the real layout: a random-weight AlexNet as
    torchvision's ``checkpoints/alexnet-owt-7be5be79.pth``, and a random-weight FID Inception (the
    architecture pyiqa / pytorch-fid build, its state dict as in the real file) as
    ``pyiqa/pt_inception-2015-12-05-6726825d.pth``."""
    import pyiqa.archs.inception as inception

    hub = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)
    alexnet = hub / "checkpoints" / os.path.basename(ALEXNET_URL)
    alexnet.parent.mkdir(parents=True)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), alexnet)

    captured = {}
    real = inception.load_pretrained_network
    inception.load_pretrained_network = lambda net, path, *args, **kwargs: captured.setdefault("net", net)
    try:
        inception.fid_inception_v3()  # the FID architecture, without its weights
    finally:
        inception.load_pretrained_network = real
    net = captured["net"]
    for module in net.modules():  # variance-preserving weights: features neither vanish nor explode
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        elif isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
    weights = hub / "pyiqa" / fid_module.WEIGHTS_FILE
    weights.parent.mkdir()
    torch.save(net.state_dict(), weights)
    return hub


def _images(n, seed, size=32):
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, size, size, generator=generator)
    return base, (base + 0.15 * torch.randn(base.shape, generator=generator)).clamp(0, 1)


def _save_pngs(images, folder: Path) -> Path:
    from torchvision.transforms.functional import to_pil_image

    from benchmark.metrics.fidelity import to_uint8

    folder.mkdir(parents=True)
    for i, image in enumerate(to_uint8(images)):
        to_pil_image(image).save(folder / f"{i:03d}.png")
    return folder


# -- without weights --------------------------------------------------------------------------------------

def test_without_weights_each_is_not_computed_with_the_reason_and_how_to_fetch(tmp_path, monkeypatch, caplog):
    _use_hub(monkeypatch, tmp_path / "empty")
    lpips = Lpips.load()
    assert not lpips.available and lpips.update(*_images(2, 0)) is None
    assert "AlexNet weights not found" in lpips.reason and ALEXNET_URL in lpips.reason
    assert "--download-weights" in lpips.reason
    result = LpipsScorer(lpips).cell(SimpleNamespace(images=_images(2, 0)[0]), SimpleNamespace(images=_images(2, 0)[1]),
                                     None)["lpips"]
    assert result.value is None and result.per_sample is None and result.reason == lpips.reason

    features = FidFeatures.load()
    assert not features.available and "FID Inception weights not found" in features.reason
    assert "--download-weights" in features.reason and fid_module.PYTORCH_FID_URL in features.reason
    scorer = FidScorer(features, None)
    assert scorer.setup()["status"] == "not computed"
    cell = scorer.cell(SimpleNamespace(images=_images(2, 0)[0]), SimpleNamespace(images=_images(2, 0)[1]), None)
    assert {key: r.value for key, r in cell.items()} == {"fid": None, "fid_reference": None}
    assert all(r.reason == features.reason for r in cell.values())
    assert f"lpips not computed: {lpips.reason}" in [r.getMessage() for r in caplog.records]
    assert not any(tmp_path.rglob("*.pth"))  # nothing was downloaded


# -- LPIPS ------------------------------------------------------------------------------------------------

def test_lpips_loads_the_standin_and_equals_pyiqas_independent_port(standin_hub, monkeypatch):
    _use_hub(monkeypatch, standin_hub)
    metric = Lpips.load(batch_size=3)
    assert metric.available and metric.details["official_alexnet"] is False
    # the real loader read the stand-in trunk, and torchmetrics' v0.1 linear layers (strict check:
    # torchmetrics itself loads them with strict=False)
    net = metric.metric.net
    trunk = torch.load(standin_hub / "checkpoints" / os.path.basename(ALEXNET_URL))
    assert torch.equal(net.net.slice1[0].weight, trunk["features.0.weight"])
    import torchmetrics.functional.image.lpips as tm_lpips
    lin_file = Path(tm_lpips.__file__).parent / "lpips_models" / "alex.pth"
    lins = torch.load(lin_file, map_location="cpu")
    assert set(lins) == {f"lin{i}.model.1.weight" for i in range(5)}
    assert all(torch.equal(net.state_dict()[key], value) for key, value in lins.items())

    reference, images = _images(5, 1, size=48)
    ours = metric.scores(reference, images)
    assert ours.dtype == torch.float64 and ours.shape == (5,) and (ours > 0).all()

    from pyiqa.archs.lpips_arch import LPIPS

    from benchmark.metrics.fidelity import to_uint8
    theirs = LPIPS(pretrained_model_path=str(lin_file)).eval()  # its own AlexNet: the same stand-in file
    with torch.no_grad():
        expected = theirs(to_uint8(images).float() / 255, to_uint8(reference).float() / 255, normalize=True)
    assert ours.numpy() == pytest.approx(expected.reshape(-1).double().numpy(), rel=1e-5, abs=1e-7)
    assert metric.scores(reference, reference).tolist() == [0.0] * 5
    with pytest.raises(UserError, match="at least 32 pixels"):
        metric.scores(*_images(2, 0, size=16))


# -- FID ----------------------------------------------------------------------------------------------------

def _independent_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance by symmetric eigendecompositions: Tr sqrt(S_a S_b) = Tr sqrt(S_a^1/2 S_b S_a^1/2).
    Eigenvalues that are zero up to rounding (rank-deficient covariances) are zeroed before the
    square root, which would turn their rounding noise into visible terms."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)

    def clean(w):
        return np.where(w > 1e-12 * np.abs(w).max(), w, 0.0)

    w, v = np.linalg.eigh(s_a)
    root = (v * np.sqrt(clean(w))) @ v.T
    inner = root @ s_b @ root
    eigen = clean(np.linalg.eigvalsh((inner + inner.T) / 2))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.sqrt(eigen).sum())


@pytest.mark.parametrize(("n", "m"), [(12, 9), (80, 100), (5, 200)])
def test_frechet_distance_equals_an_independent_computation_and_pyiqas(n, m):
    from pyiqa.archs.fid_arch import frechet_distance as pyiqa_frechet

    rng = np.random.default_rng(n)
    mixing = rng.normal(size=(32, 32))
    a = rng.normal(size=(n, 32)) @ mixing
    b = rng.normal(0.3, 1.2, size=(m, 32)) @ mixing
    ours = frechet_distance(a, b)
    assert ours == pytest.approx(_independent_fid(a, b), rel=1e-9)
    if min(n, m) >= 32:  # full-rank covariances: pyiqa's sqrtm is well posed and is what we call
        expected = pyiqa_frechet(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
        assert ours == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-9 * np.trace(np.cov(a, rowvar=False)))
    with pytest.raises(UserError, match="at least 2 images"):
        frechet_distance(a[:1], b)


def test_fid_features_equal_pyiqas_folder_pipeline_on_the_standin(standin_hub, monkeypatch, tmp_path):
    _use_hub(monkeypatch, standin_hub)
    features = FidFeatures.load(batch_size=4)
    assert features.available and features.details["set_level"] is True
    images = _images(4, 2)[1]
    ours = features.features(images)
    assert ours.shape == (4, 2048) and np.isfinite(ours).all() and ours.std() > 1e-3  # not a degenerate stand-in
    theirs = features.folder_features(_save_pngs(images, tmp_path / "pngs"))  # pyiqa's ResizeDataset("clean")
    assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-6 * np.abs(theirs).max())
    pixels = clean_resize(images)
    assert pixels.shape == (4, 3, 299, 299) and pixels.min() >= -1 and pixels.max() <= 127 / 128


def _results(cells, metrics, reference_metrics=None):
    config = RunConfig(precisions=["w4a4"], metrics=metrics,
                       transforms=parse_transforms(",".join(c["label"] for c in cells))).validate()
    return {"schema": SCHEMA, "config": config.to_json(), "config_hash": config.hash(),
            "environment": {"hadabench": "0", "device": "cpu", "torch": "2.13.0",
                            "numerics": {"mode": "pinned", "threads": 2}},
            "captions": {"evaluation": {"ids": list(range(len(next(iter(cells))["per_sample"]["lpips"])))}},
            "metric_setup": {}, "model": {"name": "x"}, "reference": {"metrics": reference_metrics or {}},
            "cells": {f"w4a4/{c['label']}": c for c in cells}, "grids": {},
            "tolerance": {"lpips": 1e-4, "fid": 0.01}}


def test_lpips_and_fid_flow_through_scoring_into_results_leaderboard_compare_power_and_the_gate(
        standin_hub, monkeypatch, tmp_path, capsys):
    _use_hub(monkeypatch, standin_hub)
    reference_dir = _save_pngs(_images(3, 7)[0], tmp_path / "coco")
    config = RunConfig(precisions=["w4a4"], metrics=["lpips", "fid"], fid_reference=str(reference_dir)).validate()
    scorers = Scorers(config, "cpu")
    setup = scorers.setup()
    assert setup["lpips"]["status"] == "computed" and setup["fid"]["status"] == "computed"
    assert "not_computed" not in setup["fid"]
    full_precision = SimpleNamespace(images=_images(4, 3)[0])
    fp_row = scorers.reference(full_precision.images, None)
    assert set(fp_row) == {"fid_reference"} and fp_row["fid_reference"]["details"]["reference_images"] == 3

    cells = []
    for label, noise in (("none", 0.3), ("quarot", 0.1)):
        generator = torch.Generator().manual_seed(len(label))
        images = (full_precision.images + noise * torch.randn(full_precision.images.shape, generator=generator))
        metrics, per_sample = scorers.cell(full_precision, SimpleNamespace(images=images.clamp(0, 1)), None)
        assert set(metrics) == {"lpips", "fid", "fid_reference"}
        assert len(per_sample["lpips"]) == 4 and "fid" not in per_sample  # FID is set-level
        assert metrics["lpips"]["interval"]["low"] is not None and "interval" not in metrics["fid"]
        assert metrics["fid"]["details"]["set_level"] and "none" in metrics["fid"]["details"]["interval"]
        assert metrics["fid"]["value"] > 0
        cells.append({"precision": "w4a4", "transform": label, "label": label, "params": {}, "status": "ok",
                      "reason": None, "metrics": metrics, "per_sample": per_sample, "groups": {}, "timings": {}})
    doc = _results(cells, ["lpips", "fid"], fp_row)
    doc["metric_setup"] = setup
    lpips, fid = metric_spec("lpips"), metric_spec("fid")
    assert not lpips.higher_is_better and not fid.higher_is_better and not fid.per_sample

    # per-caption LPIPS: intervals, ranks, power and compare work on it
    ranked = rank_cells(cells, lpips)
    assert all(r.interval is not None for r in ranked) and ranked[1].tied_with_best
    assert any("−" in row["comparison"] for row in power_rows(doc, lpips, 0.01))
    assert len(compare_runs(doc, doc, lpips)) == 2
    # set-level FID: ranked by nothing, no interval; the leaderboard marks it and never bolds it
    assert all(r.interval is None for r in rank_cells(cells, fid))
    write_json(tmp_path / "run" / "results.json", doc)
    text = render([tmp_path / "run"], tmp_path / "README.md")
    table = text.split("<details>")[0]
    assert "FID vs full precision (set-level)" in table and "FID vs reference (set-level)" in table
    rows = {line.split("|")[1].strip(): line.split("|") for line in table.splitlines() if line.startswith("| ")}
    header = [c.strip() for c in next(line for line in table.splitlines() if line.startswith("| transform")).split("|")]
    fid_column = header.index("FID vs full precision (set-level)")
    assert "**" not in rows["none"][fid_column] and "±" not in rows["none"][fid_column]
    assert rows["Original (full precision)"][header.index("FID vs reference (set-level)")].strip() != "–"
    # compare and power refuse a set-level metric with one line; the gate compares it without a test
    for argv in (["compare", str(tmp_path / "run"), str(tmp_path / "run"), "--metric", "fid"],
                 ["power", str(tmp_path / "run"), "--metric", "fid"]):
        assert main(argv) == 2
        assert "set-level metric" in capsys.readouterr().err
    # the exact gate (pinned numerics): each metric within its tolerance, FID's direction is "lower is better"
    regressions, _ = compare(doc, doc)
    assert regressions == []
    worse = copy.deepcopy(doc)
    worse["cells"]["w4a4/quarot"]["metrics"]["fid"]["value"] += 1.0
    worse["cells"]["w4a4/none"]["metrics"]["fid"]["value"] -= 1.0  # better: no regression
    regressions, _ = compare(worse, doc)
    assert len(regressions) == 1 and regressions[0].startswith("w4a4/quarot fid")


def test_fid_reference_without_a_folder_is_listed_as_not_computed(standin_hub, monkeypatch, tmp_path):
    _use_hub(monkeypatch, standin_hub)
    scorer = FidScorer(FidFeatures.load(), None)
    setup = scorer.setup()
    assert setup["status"] == "computed" and "--fid-reference" in setup["not_computed"]["fid_reference"]
    assert scorer.reference(_images(2, 0)[0], None)["fid_reference"].value is None
    cells = [{"precision": "w4a4", "transform": "none", "label": "none", "params": {}, "status": "ok", "reason": None,
              "metrics": {"lpips": {"value": 0.1}, "fid": {"value": 3.0}}, "per_sample": {"lpips": [0.1, 0.1]},
              "groups": {}, "timings": {}}]
    doc = _results(cells, ["lpips", "fid"])
    doc["metric_setup"] = {"fid": setup, "lpips": {"status": "computed"}}
    write_json(tmp_path / "run" / "results.json", doc)
    text = render([tmp_path / "run"], tmp_path / "README.md")
    from benchmark.reports import markdown as md
    reason = setup["not_computed"]["fid_reference"]
    assert f"- **fid\\_reference** not computed: {md.text(reason)}" in text.splitlines()
    assert "FID vs full precision (set-level)" in text and "FID vs reference" not in text  # no column of n/a
    with pytest.raises(UserError, match="not a folder"):
        FidScorer(FidFeatures.load(), str(tmp_path / "missing"))


@pytest.mark.slow  # scipy's sqrtm of a 2048 x 2048 product: a minute or two on a small CPU
def test_fid_equals_pyiqas_whole_folder_fid_on_the_standin(standin_hub, monkeypatch, tmp_path):
    from pyiqa.archs.fid_arch import FID

    _use_hub(monkeypatch, standin_hub)
    reference, images = _images(4, 5)
    features = FidFeatures.load(batch_size=4)
    ours = frechet_distance(features.features(images), features.features(reference))
    theirs = FID()(str(_save_pngs(images, tmp_path / "a")), str(_save_pngs(reference, tmp_path / "b")), mode="clean",
                   num_workers=0, batch_size=4, device=torch.device("cpu"), verbose=False)
    assert ours == pytest.approx(float(theirs), rel=1e-4)


# -- ImageReward ----------------------------------------------------------------------------------------------

WORDS = ["a", "red", "green", "blue", "circle", "square", "##s", "on", "background", "two", "three", "in", "the",
         "top", "left", "gray"]
CAPTIONS = ["a red circle on a blue background", "two green squares on a gray background",
            "three blue circles in the top left on a red background"]


def _random(shape, generator, scale=None):
    fan_in = shape[-1] if len(shape) > 1 else 1
    return torch.randn(shape, generator=generator) * (scale if scale is not None else fan_in ** -0.5)


def image_reward_standin(folder: Path, vocab: int, width=128, depth=2, hidden=64, layers=2, inter=128) -> Path:
    """A random-weight ImageReward checkpoint in the official format: the tensor names and shapes
    of the image-reward package's BLIP_Pretrain (vit.py, med.py) and MLP, smaller; its
    med_config.json; saved as ImageReward.pt in ``folder``."""
    g = torch.Generator().manual_seed(0)
    state = {}
    v, t = "blip.visual_encoder.", "blip.text_encoder."
    norm = {"weight": lambda n: 1 + 0.1 * torch.randn(n, generator=g),
            "bias": lambda n: 0.1 * torch.randn(n, generator=g)}

    def layer_norm(prefix, n):
        state[prefix + "weight"], state[prefix + "bias"] = norm["weight"](n), norm["bias"](n)

    def linear(prefix, out, into):
        state[prefix + "weight"], state[prefix + "bias"] = _random((out, into), g), 0.02 * torch.randn(out, generator=g)

    state[v + "cls_token"] = _random((1, 1, width), g, 0.5)
    state[v + "pos_embed"] = _random((1, 197, width), g, 0.5)
    state[v + "patch_embed.proj.weight"] = _random((width, 3, 16, 16), g, (3 * 256) ** -0.5)
    state[v + "patch_embed.proj.bias"] = 0.02 * torch.randn(width, generator=g)
    for i in range(depth):
        b = f"{v}blocks.{i}."
        layer_norm(b + "norm1.", width)
        linear(b + "attn.qkv.", 3 * width, width)
        linear(b + "attn.proj.", width, width)
        layer_norm(b + "norm2.", width)
        linear(b + "mlp.fc1.", 4 * width, width)
        linear(b + "mlp.fc2.", width, 4 * width)
    layer_norm(v + "norm.", width)
    state[t + "embeddings.word_embeddings.weight"] = _random((vocab, hidden), g, 1.0)
    state[t + "embeddings.position_embeddings.weight"] = _random((512, hidden), g, 0.5)
    state[t + "embeddings.position_ids"] = torch.arange(512).unsqueeze(0)
    layer_norm(t + "embeddings.LayerNorm.", hidden)
    for i in range(layers):
        b = f"{t}encoder.layer.{i}."
        for attention, source in (("attention.", hidden), ("crossattention.", width)):
            linear(b + attention + "self.query.", hidden, hidden)
            linear(b + attention + "self.key.", hidden, source)
            linear(b + attention + "self.value.", hidden, source)
            linear(b + attention + "output.dense.", hidden, hidden)
            layer_norm(b + attention + "output.LayerNorm.", hidden)
        linear(b + "intermediate.dense.", inter, hidden)
        linear(b + "output.dense.", hidden, inter)
        layer_norm(b + "output.LayerNorm.", hidden)
    linear("blip.vision_proj.", 256, width)  # in the official checkpoint, unused by the score
    linear("blip.text_proj.", 256, hidden)
    for index, (out, into) in zip((0, 2, 4, 6, 7), ((1024, hidden), (128, 1024), (64, 128), (16, 64), (1, 16)),
                                  strict=True):
        linear(f"mlp.layers.{index}.", out, into)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "ImageReward.pt")
    (folder / "med_config.json").write_text(json.dumps({
        "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "hidden_size": hidden, "initializer_range": 0.02, "intermediate_size": inter,
        "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 2,
        "num_hidden_layers": layers, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": vocab,
        "encoder_width": width, "add_cross_attention": True}))
    return folder


def tokenizer_standin(folder: Path) -> Path:
    """A BERT WordPiece tokenizer (bert-base-uncased's kind) over a small vocabulary, saved as
    ``from_pretrained`` reads it."""
    from transformers import BertTokenizer

    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


def reference_image_reward(state, med, pixels, input_ids, attention_mask):
    """ImageReward.score, written out from the image-reward package (vit.py's VisionTransformer,
    med.py's BertModel in "multimodal" mode, ImageReward.py's MLP and standardisation) on the
    checkpoint's own tensor names."""
    import torch.nn.functional as F

    def p(key):
        return state[key].float()

    v, t = "blip.visual_encoder.", "blip.text_encoder."
    width, patch = state[v + "cls_token"].shape[-1], state[v + "patch_embed.proj.weight"].shape[-1]
    heads = width // 64
    x = F.conv2d(pixels, p(v + "patch_embed.proj.weight"), p(v + "patch_embed.proj.bias"), stride=patch)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([p(v + "cls_token").expand(len(x), -1, -1), x], dim=1)
    x = x + p(v + "pos_embed")[:, :x.shape[1]]
    depth = len({k.split(".")[3] for k in state if k.startswith(v + "blocks.")})
    for i in range(depth):
        b = f"{v}blocks.{i}."
        h = F.layer_norm(x, (width,), p(b + "norm1.weight"), p(b + "norm1.bias"), eps=1e-6)
        n = h.shape[1]
        qkv = F.linear(h, p(b + "attn.qkv.weight"), p(b + "attn.qkv.bias"))
        qkv = qkv.reshape(len(h), n, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        attention = ((qkv[0] @ qkv[1].transpose(-2, -1)) * (width // heads) ** -0.5).softmax(dim=-1)
        h = (attention @ qkv[2]).transpose(1, 2).reshape(len(h), n, width)
        x = x + F.linear(h, p(b + "attn.proj.weight"), p(b + "attn.proj.bias"))
        h = F.layer_norm(x, (width,), p(b + "norm2.weight"), p(b + "norm2.bias"), eps=1e-6)
        x = x + F.linear(F.gelu(F.linear(h, p(b + "mlp.fc1.weight"), p(b + "mlp.fc1.bias"))),
                         p(b + "mlp.fc2.weight"), p(b + "mlp.fc2.bias"))
    image = F.layer_norm(x, (width,), p(v + "norm.weight"), p(v + "norm.bias"), eps=1e-6)

    hidden, heads_t, eps = med["hidden_size"], med["num_attention_heads"], med["layer_norm_eps"]
    e = p(t + "embeddings.word_embeddings.weight")[input_ids]
    e = e + p(t + "embeddings.position_embeddings.weight")[: input_ids.shape[1]]
    e = F.layer_norm(e, (hidden,), p(t + "embeddings.LayerNorm.weight"), p(t + "embeddings.LayerNorm.bias"), eps=eps)
    text_mask = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0   # med.get_extended_attention_mask

    def attend(prefix, queries, keys, mask):
        def split(y):
            return y.reshape(len(y), y.shape[1], heads_t, hidden // heads_t).transpose(1, 2)
        q = split(F.linear(queries, p(prefix + "self.query.weight"), p(prefix + "self.query.bias")))
        k = split(F.linear(keys, p(prefix + "self.key.weight"), p(prefix + "self.key.bias")))
        val = split(F.linear(keys, p(prefix + "self.value.weight"), p(prefix + "self.value.bias")))
        scores = (q @ k.transpose(-1, -2)) / (hidden // heads_t) ** 0.5 + mask
        context = (scores.softmax(dim=-1) @ val).transpose(1, 2).reshape(queries.shape)
        out = F.linear(context, p(prefix + "output.dense.weight"), p(prefix + "output.dense.bias"))
        return F.layer_norm(out + queries, (hidden,), p(prefix + "output.LayerNorm.weight"),
                            p(prefix + "output.LayerNorm.bias"), eps=eps)

    for i in range(med["num_hidden_layers"]):
        b = f"{t}encoder.layer.{i}."
        h = attend(b + "attention.", e, e, text_mask)
        h = attend(b + "crossattention.", h, image, 0.0)  # all image tokens attended (mask of ones)
        inner = F.gelu(F.linear(h, p(b + "intermediate.dense.weight"), p(b + "intermediate.dense.bias")))
        e = F.layer_norm(F.linear(inner, p(b + "output.dense.weight"), p(b + "output.dense.bias")) + h, (hidden,),
                         p(b + "output.LayerNorm.weight"), p(b + "output.LayerNorm.bias"), eps=eps)
    reward = e[:, 0, :]
    for index in (0, 2, 4, 6, 7):
        reward = F.linear(reward, p(f"mlp.layers.{index}.weight"), p(f"mlp.layers.{index}.bias"))
    return ((reward - 0.16717362830052426) / 1.0333394966054072).reshape(-1)


def test_image_reward_without_its_files_is_not_computed_with_the_reason(tmp_path):
    metric = ImageReward.load(tmp_path / "empty")
    assert not metric.available and metric.update(_images(1, 0)[0], CAPTIONS[:1]) is None
    assert "ImageReward.pt, med_config.json not found" in metric.reason and "THUDM/ImageReward" in metric.reason
    assert "--download-weights" in metric.reason
    result = metric.result()
    assert result.value is None and result.reason == metric.reason
    folder = image_reward_standin(tmp_path / "ir", vocab=30)
    no_tokenizer = ImageReward.load(folder, str(tmp_path / "no-tokenizer"))
    assert not no_tokenizer.available and "tokenizer cannot be loaded" in no_tokenizer.reason


def test_image_reward_loads_the_official_format_and_equals_the_reference_formula(tmp_path):
    from benchmark.metrics.image_reward import load_tokenizer, preprocess

    tokenizer_dir = tokenizer_standin(tmp_path / "bert")
    vocab = len(load_tokenizer(str(tokenizer_dir)))
    assert vocab == 5 + len(WORDS) + 2  # BLIP's [DEC] and [ENC] added
    folder = image_reward_standin(tmp_path / "ImageReward", vocab=vocab)
    metric = ImageReward.load(folder, str(tokenizer_dir), batch_size=2)
    assert metric.available, metric.reason
    images = _images(3, 4, size=40)[1]
    ours = metric.scores(images, CAPTIONS)
    assert ours.dtype == torch.float64 and ours.shape == (3,)

    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor
    from torchvision.transforms.functional import to_pil_image

    from benchmark.metrics.fidelity import to_uint8
    transform = Compose([Resize(224, interpolation=InterpolationMode.BICUBIC), CenterCrop(224), ToTensor(),
                         Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])
    pixels = torch.stack([transform(to_pil_image(image)) for image in to_uint8(images)])
    assert torch.equal(preprocess(images), pixels)
    state = torch.load(folder / "ImageReward.pt")
    med = json.loads((folder / "med_config.json").read_text())
    text = load_tokenizer(str(tokenizer_dir))(CAPTIONS, padding="max_length", truncation=True, max_length=35,
                                               return_tensors="pt")
    assert text.input_ids.shape == (3, 35) and (text.attention_mask.sum(1) < 35).all()
    with torch.no_grad():
        expected = reference_image_reward(state, med, pixels, text.input_ids, text.attention_mask)
    assert ours.numpy() == pytest.approx(expected.double().numpy(), rel=1e-4, abs=1e-5)
    assert ours.std() > 1e-3  # the stand-in separates the captions: not a constant head

    # per caption through the run's scorer, the full-precision row included
    scorer = PerSampleScorer(metric, with_captions=True)
    assert scorer.setup()["status"] == "computed"
    row = scorer.reference(images, CAPTIONS)["image_reward"]
    assert row.per_sample == pytest.approx(ours.tolist()) and row.value == pytest.approx(float(ours.mean()))
    assert metric_spec("image_reward").higher_is_better and metric_spec("image_reward").per_sample


def test_a_bootstrap_interval_of_fid_would_not_cover_it():
    """Why FID has no interval: on features whose FID is known (two Gaussians, 16 dimensions, 64
    images a set), the estimate is biased upwards, a bootstrap over images moves it further (its
    resamples repeat images), and the 95% percentile interval almost never holds the truth."""
    rng = np.random.default_rng(0)
    dims, n, shift, scale = 16, 64, 0.25, 1.3
    true = dims * shift ** 2 + dims * (1 - scale) ** 2  # ||mu||² + Tr(I + s² I - 2 s I)
    covered, estimates, resampled = 0, [], []
    for _ in range(40):
        a, b = rng.normal(size=(n, dims)), shift + scale * rng.normal(size=(n, dims))
        estimates.append(frechet_distance(a, b))
        boots = [frechet_distance(a[rng.integers(0, n, n)], b[rng.integers(0, n, n)]) for _ in range(100)]
        low, high = np.percentile(boots, [2.5, 97.5])
        covered += low <= true <= high
        resampled.append(np.mean(boots))
    assert true < np.mean(estimates) < np.mean(resampled)
    assert covered / 40 < 0.2


def test_images_a_metric_cannot_take_make_it_not_computed_not_a_failed_run(standin_hub, monkeypatch):
    _use_hub(monkeypatch, standin_hub)
    small = _images(2, 0, size=16)
    lpips = LpipsScorer(Lpips.load()).cell(SimpleNamespace(images=small[0]), SimpleNamespace(images=small[1]), None)
    assert lpips["lpips"].value is None and "at least 32 pixels" in lpips["lpips"].reason
    one = _images(1, 0)
    fid = FidScorer(FidFeatures.load(), None).cell(SimpleNamespace(images=one[0]), SimpleNamespace(images=one[1]), None)
    assert fid["fid"].value is None and "at least 2 images" in fid["fid"].reason
