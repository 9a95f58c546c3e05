"""k x k convolutions as targets (benchmark/transform/conv.py), nested block lists in a family
declaration, the UNet family on its tiny SD 1.5 pipeline, and the ``hqdm`` transform."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may come from the hub

import collections
import json

import pytest
import torch
from torch import nn

from benchmark import AffineTransform, HadaNormConfig, calibrate, quantize_
from benchmark.cli import main
from benchmark.errors import UserError
from benchmark.families.examples import save_tiny
from benchmark.families.registry import families
from benchmark.families.targets import Family, discover_targets
from benchmark.models import load_model
from benchmark.transform.base import CalibrationStats, Transform
from benchmark.transform.conv import ConvTaps, quantize_conv
from benchmark.transform.registry import BASELINES, create_transform

CAPTIONS = ["a red cat sitting on the table", "two dogs in a field"]
SEEDS = [11, 12]


def _rel(out, ref) -> float:
    return ((out - ref).norm() / ref.norm()).item()


def _images(seed, channels=16, size=(6, 7), batch=2):
    """Strong per-channel means (what centering removes), so border handling matters."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, *size, generator=gen) + 4 * torch.randn(channels, 1, 1, generator=gen)


def _stats(conv_input):
    return CalibrationStats.from_activations(conv_input.flatten(2).transpose(1, 2))


# -- a module of convolutions that no family declares -------------------------------------
def test_hadanorm_on_a_conv_module_exact_at_fp_quantized_at_w4a4_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.GELU(), nn.Conv2d(32, 16, 1)).eval()
    x = _images(1)
    with torch.no_grad():
        reference = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modules = list(model)
    groups = discover_targets(model)
    assert [(g.name, g.role, g.conv, g.channels_first) for g in groups] == [
        ("0", "conv", True, True), ("2", "conv", False, True)]  # 3x3: ConvTaps; 1x1: a linear view
    stats = calibrate(model, lambda: [model(_images(s)) for s in (2, 3)])
    assert stats["0"].tokens == 2 * 2 * 6 * 7  # every pixel of every sample, channels last
    with quantize_(model, HadaNormConfig(), "fp", calibration=stats) as handle:
        assert type(model[0]).__name__ == "QuantizedMember"
        with torch.no_grad():
            fp = model(x)
        described = handle.described["0"]
    assert _rel(fp, reference) < 1e-5
    assert described["layer"] == "conv2d" and described["correction"] == "exact"
    assert described["requested_correction"] == "quantized_token"
    with quantize_(model, HadaNormConfig(), "w4a4", calibration=stats):
        with torch.no_grad():
            quantized = model(x)
    error = _rel(quantized, reference)
    assert torch.isfinite(quantized).all() and 0 < error < 0.5, error
    # restored bit for bit: the same module objects, the same weights
    assert list(model) == modules and all(a is b for a, b in zip(model, modules, strict=True))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(x), reference)


CONVS = {
    "3x3-pad1": dict(in_channels=16, out_channels=32, kernel_size=3, padding=1),
    "3x3-stride2": dict(in_channels=16, out_channels=24, kernel_size=3, stride=2, padding=1),
    "3x5-dilated-nobias": dict(in_channels=16, out_channels=8, kernel_size=(3, 5), padding=(2, 1),
                               dilation=(2, 1), bias=False),
    "3x3-reflect": dict(in_channels=16, out_channels=8, kernel_size=3, padding=1, padding_mode="reflect"),
}
POINTS = [*BASELINES, "hqdm"]


@pytest.mark.parametrize("conv", CONVS)
def test_every_baseline_exact_at_fp_on_a_padded_conv(conv):
    torch.manual_seed(0)
    layer = nn.Conv2d(**CONVS[conv])
    x = _images(5)
    stats = _stats(_images(6))
    with torch.no_grad():
        reference = layer(x)
        transforms = [create_transform(name) for name in POINTS] + [
            AffineTransform(center=True, correction=c) for c in ("fp_token", "exact")] + [
            AffineTransform(center=True, alpha="auto", rotation="block", block_size=8)]
        for transform in transforms:
            (out,) = quantize_conv(transform, layer, "fp", stats)(x)
            assert _rel(out, reference) < 1e-5, transform
            (q,) = quantize_conv(transform, layer, "w4a4", stats)(x)
            assert torch.isfinite(q).all() and _rel(q, reference) > 0


def test_centering_correction_is_border_correct():
    # conv(mu_map, W) differs between border and interior pixels with zero padding: a per-output
    # constant (W mu summed over all taps) would be wrong on the border, right inside
    torch.manual_seed(0)
    layer = nn.Conv2d(16, 8, 3, padding=1)
    x = _images(7)
    module = quantize_conv(create_transform("dyncenter"), layer, "fp", _stats(x))
    mu = x.flatten(2).mean(-1)[:, None]  # (N, 1, C)
    term = module.mean_term(mu, x.shape[2:])
    with torch.no_grad():
        direct = nn.functional.conv2d(mu[:, 0, :, None, None].expand_as(x), layer.weight, padding=1)
        assert torch.allclose(term, direct, atol=1e-4)
        assert not torch.allclose(term[..., 0, 0], term[..., 3, 3], atol=1e-2)  # corner vs interior
        (out,) = module(x)
        assert _rel(out, layer(x)) < 1e-5


def test_grouped_and_depthwise_convolutions_are_skipped_or_refused():
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Conv2d(16, 32, 3, groups=4),
                          nn.Conv2d(32, 8, 3))
    with quantize_(model, "quarot", "w4a4") as handle:
        assert list(handle.described) == ["2"]
        assert set(handle.skipped) == {"0", "1"}
        assert handle.skipped["0"].startswith("depthwise") and handle.skipped["1"].startswith("grouped (4 groups)")
    with pytest.raises(UserError, match="depthwise convolution"):
        ConvTaps(model[0])
    declared = Family(name="dw", description="", transformer=("Sequential",),
                      blocks={"blocks": {"depth": ("0",)}})
    holder = nn.Module()
    holder.blocks = nn.ModuleList([model])
    with pytest.raises(UserError, match="blocks.0.0 cannot be a target: depthwise"):
        discover_targets(holder, declared)


def test_transforms_outside_the_affine_space_refuse_convolutions():
    class Mine(Transform):
        name = "mine"

        def quantize(self, linears, precision, stats=None):
            raise AssertionError("never called for a convolution")

    model = nn.Sequential(nn.Conv2d(16, 8, 3))
    for transform in (Mine(), create_transform("svdquant", rank=4)):
        with pytest.raises(UserError, match="does not support convolutions"):
            quantize_(model, transform, "w4a4", calibration=calibrate(model, lambda: model(_images(1))))
    assert isinstance(model[0], nn.Conv2d)


# -- nested block lists ------------------------------------------------------------------
class _Unit(nn.Module):
    def __init__(self, inner: bool):
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        if inner:
            self.inner = nn.ModuleList([_Unit(False)])


class _Level(nn.Module):
    def __init__(self, sampler: bool):
        super().__init__()
        self.units = nn.ModuleList([_Unit(True), _Unit(True)])
        self.samplers = nn.ModuleList([nn.Sequential(nn.Conv2d(8, 8, 3, stride=2))]) if sampler else None


class _Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.levels = nn.ModuleList([_Level(True), _Level(False)])


def test_nested_block_lists_with_wildcards():
    family = Family(name="nested", description="", transformer=("_Nested",), blocks={
        "levels.*.units": {"proj": ("proj",), "conv": ("conv",)},
        "levels.*.units.*.inner": {"inner_proj": ("proj",), "inner_conv": ("conv",)},
        "levels.*.samplers": {"sample": ("0",)},
    }, optional=("sample",))
    groups = discover_targets(_Nested(), family)
    names = [(g.name, g.block_index) for g in groups]
    assert names[:4] == [("levels.0.units.0.proj", 0), ("levels.0.units.0.conv", 0),
                         ("levels.0.units.1.proj", 1), ("levels.0.units.1.conv", 1)]
    assert ("levels.1.units.1.inner.0.inner_conv", 7) in names and names[-1] == ("levels.0.samplers.0.sample", 8)
    assert len(groups) == 4 * 2 + 4 * 2 + 1  # the inner units are the inner list's, not the outer's
    without_inner = Family(name="x", description="", transformer=("_Nested",),
                           blocks={"levels.*.units": {"proj": ("proj",), "conv": ("conv",)}})
    with pytest.raises(UserError, match=r"no role of x covers.*'inner.0.proj', 'inner.0.conv'"):
        discover_targets(_Nested(), without_inner)
    with pytest.raises(UserError, match="has no levels.\\*.missing"):
        discover_targets(_Nested(), Family(name="y", description="", transformer=("_Nested",),
                                           blocks={"levels.*.missing": {"r": ("proj",)}}))


def test_hqdm_is_the_full_hadamard_point():
    hqdm = create_transform("hqdm")
    assert hqdm.name == "hqdm"
    assert hqdm.config() == create_transform("affine", rotation="full").config()
    quarot, sdcb = create_transform("quarot").config(), create_transform("sdcb").config()
    assert quarot["random_signs"] and not hqdm.config()["random_signs"]
    assert sdcb["alpha"] == 0.5 and hqdm.config()["alpha"] is None


# -- the UNet family on the tiny SD 1.5 pipeline ------------------------------------------
EXPECTED_ROLES = {"resnet_conv1": 8, "resnet_conv2": 8, "resnet_shortcut": 5, "proj_in": 4, "proj_out": 4,
                  "self_attn_qkv": 4, "self_attn_out": 4, "cross_attn_q": 4, "cross_attn_kv": 4,
                  "cross_attn_out": 4, "ffn_up": 4, "ffn_down": 4, "downsample": 1, "upsample": 1}


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    folder = save_tiny("sd15", tmp_path_factory.mktemp("sd15") / "pipeline")
    return folder, load_model(str(folder))


def test_unet_targets_cover_every_block_conv_and_linear(sd15, capsys):
    _, model = sd15
    assert model.family is families()["unet"].value and type(model.transformer).__name__ == "UNet2DConditionModel"
    groups = model.targets()
    covered = {name: g.role for g in groups for name, _ in g.linears}
    assert len(covered) == sum(len(g.linears) for g in groups)  # each module in one group
    in_blocks = {name for name, m in model.transformer.named_modules()
                 if isinstance(m, (nn.Linear, nn.Conv2d)) and name.split(".")[0] in ("down_blocks", "mid_block",
                                                                                       "up_blocks")}
    assert set(covered) | set(groups.skipped) == in_blocks and not set(covered) & set(groups.skipped)
    assert {name.rsplit(".", 1)[1] for name in groups.skipped} == {"time_emb_proj"}
    # per role: groups, modules and their kinds; printed as the coverage table
    rows = collections.defaultdict(lambda: [0, 0, set()])
    for g in groups:
        rows[g.role][0] += 1
        rows[g.role][1] += len(g.linears)
        rows[g.role][2].add("kxk conv" if g.conv else "1x1 conv" if g.channels_first else "linear")
    with capsys.disabled():
        print(f"\n{'role':<16} {'groups':>6} {'modules':>7}  kind")
        for role, (count, members, kinds) in rows.items():
            print(f"{role:<16} {count:>6} {members:>7}  {', '.join(sorted(kinds))}")
        print(f"{'not quantized':<16} {'':>6} {len(groups.skipped):>7}  time_emb_proj (one vector per sample)")
    assert {role: count for role, (count, _, _) in rows.items()} == EXPECTED_ROLES
    assert list(rows) == list(model.family.roles)  # the tiny model uses every role
    assert sum(g.conv for g in groups) == 8 + 8 + 1 + 1  # the 3x3 convolutions
    assert all(len({lin.in_features for _, lin in g.linears}) == 1 for g in groups)


def test_unet_every_baseline_exact_at_fp(sd15):
    _, model = sd15
    from benchmark.run.calibration import calibrate as calibrate_model

    stats, _ = calibrate_model(model, CAPTIONS, steps=2, cache_dir=None)
    reference = model.generate(CAPTIONS, SEEDS, steps=2)
    for name in POINTS:
        with model.quantized(name, "fp", stats):
            out = model.generate(CAPTIONS, SEEDS, steps=2)
        assert _rel(out.latents, reference.latents) < 1e-4, name
    with model.quantized("hadanorm", "w4a4", stats):
        assert all(type(model.transformer.get_submodule(name)).__name__ == "QuantizedMember"
                   for g in model.targets() for name, _ in g.linears)
        quantized = model.generate(CAPTIONS, SEEDS, steps=2)
    assert torch.isfinite(quantized.latents).all() and not torch.equal(quantized.latents, reference.latents)
    assert torch.equal(model.generate(CAPTIONS, SEEDS, steps=2).latents, reference.latents)


@pytest.mark.slow  # end to end
def test_unet_run_through_the_cli(sd15, tmp_path):
    folder, model = sd15
    out = tmp_path / "run"
    assert main(["run", "--model", str(folder), "--steps", "2", "--eval-size", "2", "--calib-size", "2",
                 "--metrics", "sqnr", "--precisions", "w4a4", "--transforms", "hadanorm,quarot,none",
                 "--device", "cpu", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["model"]["family"] == "unet"
    for transform in ("hadanorm", "quarot", "none"):
        cell = results["cells"][f"w4a4/{transform}"]
        assert cell["status"] == "ok" and isinstance(cell["metrics"]["sqnr_db"]["value"], float)
        assert len(cell["groups"]) == len(model.targets())
    assert results["cells"]["w4a4/hadanorm"]["groups"]["down_blocks.0.resnets.0.resnet_conv1"]["layer"] == "conv2d"
