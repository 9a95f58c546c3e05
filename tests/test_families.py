"""Model families: ``quantize_`` / ``calibrate`` on a module tree no adapter knows, the family
registry (plugin file, entry point, validate, ls), and every built-in family's tiny pipeline
through the real loading code, offline: target coverage, fp exactness, a quantized run."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may come from the hub

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmark import AffineTransform, HadaNormConfig, QuaRotConfig, calibrate, quantize_
from benchmark.cli import main
from benchmark.families.examples import save_tiny
from benchmark.families.registry import families
from benchmark.families.targets import Family, discover_targets, is_pointwise_conv
from benchmark.models import load_model
from benchmark.plugins import load_plugin_file
from benchmark.run.calibration import calibrate as calibrate_model
from benchmark.transform.registry import BASELINES

PLUGINS = Path(__file__).parent / "plugins"
CAPTIONS = ["a red cat sitting on the table", "two dogs in a field"]
SEEDS = [11, 12]
VARIANTS = ("pixart-alpha", "sd3", "flux", "sana")
FAMILY = {"pixart-alpha": "pixart", "sd3": "sd3", "flux": "flux", "sana": "sana"}


# -- quantize_ on a module tree no adapter knows ----------------------------------------
def _toy():
    toy = importlib.import_module("toy_family") if str(PLUGINS) in sys.path else None
    if toy is None:
        sys.path.insert(0, str(PLUGINS))
        toy = importlib.import_module("toy_family")
    return toy


def _toy_inputs(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, 4, generator=gen) + 3 * torch.randn(4, generator=gen)
    return x, torch.randn(2, 8, generator=gen)


@pytest.mark.parametrize("declared", [False, True], ids=["every-linear", "family"])
def test_quantize_any_module_exact_at_fp_and_restores(declared):
    toy = _toy()
    torch.manual_seed(0)
    model = toy.ToyTransformer().eval()
    family = toy.FAMILIES["toy"] if declared else None
    x, cond = _toy_inputs(1)
    with torch.no_grad():
        reference = model(x, cond)
    originals = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    stats = calibrate(model, lambda: [model(*_toy_inputs(s)) for s in (2, 3)], family=family)
    # with a family: shared-input groups, the excluded modulation left alone; without: every linear
    expected = ({"blocks.0.mlp_in", "blocks.0.mlp_out"} if declared else {"embed", "blocks.0.up", "out"})
    assert expected <= set(stats) and ("blocks.0.modulation" in stats) is not declared
    for config in [*BASELINES, HadaNormConfig(alpha=0.3), AffineTransform(center=True, rotation="block", block_size=4)]:
        with quantize_(model, config, "fp", calibration=stats, family=family) as handle:
            assert handle.active and len(handle.described) == len(stats)
            with torch.no_grad():
                out = model(x, cond)
        error = ((out - reference).norm() / reference.norm()).item()
        assert error < 1e-5, f"{config}: relative error {error:.2e} at fp"
    handle = quantize_(model, QuaRotConfig(), "w4a4", family=family)
    assert type(model.blocks[0].up).__name__ == "QuantizedMember"
    with pytest.raises(RuntimeError, match="already quantized"):
        quantize_(model, "none", "w4a4")
    with torch.no_grad():
        quantized = model(x, cond)
    assert not torch.allclose(quantized, reference, atol=1e-3)
    handle.restore()
    assert {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)} == originals
    with torch.no_grad():
        assert torch.equal(model(x, cond), reference)


def test_filter_fn_and_errors():
    toy = _toy()
    model = toy.ToyTransformer()
    only_down = quantize_(model, "none", "w4a4", filter_fn=lambda lin, name: name.endswith("down"))
    assert sorted(only_down.described) == [f"blocks.{i}.down" for i in range(3)]
    only_down.restore()
    with pytest.raises(ValueError, match="needs calibration statistics"):
        quantize_(model, "hadanorm", "w4a4")
    with pytest.raises(ValueError, match="no quantization targets"):
        quantize_(model, "none", "w4a4", filter_fn=lambda lin, name: False)
    broken = Family(name="broken", description="", transformer=("ToyTransformer",),
                    blocks={"blocks": {"mlp_in": ("up", "gate")}})  # down and modulation unaccounted
    with pytest.raises(ValueError, match=r"no role of broken covers.*'down', 'modulation'"):
        discover_targets(model, broken)
    with pytest.raises(ValueError, match="needs its reason"):
        Family(name="x", description="", transformer=("T",), blocks={"b": {"r": ("a",)}}, exclude={"c": ""})
    assert not any(type(m).__name__ == "QuantizedMember" for m in model.modules())


# -- the registry: plugin file, entry point, validate, ls --------------------------------
def test_family_plugin_file_registers_and_validates(capsys):
    assert load_plugin_file(PLUGINS / "toy_family.py") == ["toy"]
    assert families()["toy"].source.startswith("file ")
    assert main(["validate", str(PLUGINS / "toy_family.py")]) == 0
    out = capsys.readouterr().out
    assert "PASS  covers every block linear: 6 groups, 9 linears; excluded: modulation" in out
    assert out.strip().endswith("valid")


def test_validate_fails_a_family_that_misses_a_linear(tmp_path, capsys):
    plugin = tmp_path / "half_family.py"
    plugin.write_text((PLUGINS / "toy_family.py").read_text().replace(
        '"mlp_out": ("down",)', '').replace('FAMILIES = {"toy"', 'FAMILIES = {"half"'))
    assert main(["validate", str(plugin)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  covers every block linear" in out and "'down'" in out


def test_family_entry_point(tmp_path, monkeypatch):
    # an installed package's metadata: hadabench.families -> a Family object
    package = tmp_path / "toyfam"
    package.mkdir()
    (package / "__init__.py").write_text((PLUGINS / "toy_family.py").read_text()
                                         + "\nFAMILY = FAMILIES['toy']\n")
    dist = tmp_path / "toyfam-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toyfam\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[hadabench.families]\ntoyfam = toyfam:FAMILY\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = families()["toyfam"]
    assert entry.source == "entry point (toyfam)" and entry.value.roles == ("mlp_in", "mlp_out")


def test_ls_lists_families_with_roles(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert "| flux " in out and "single_qkv_mlp, single_out" in out
    assert "SanaTransformer2DModel" in out and "image_attn2_qkv" in out


# -- every built-in family's tiny pipeline, offline -------------------------------------
@pytest.fixture(scope="module", params=VARIANTS)
def tiny(request, tmp_path_factory):
    folder = save_tiny(request.param, tmp_path_factory.mktemp(request.param) / "pipeline")
    return request.param, folder, load_model(str(folder))


def test_targets_cover_every_block_linear(tiny):
    variant, _, model = tiny
    family = families()[FAMILY[variant]].value
    assert model.family is family
    groups = model.targets()
    covered = {name: g.role for g in groups for name, _ in g.linears}
    assert len(covered) == sum(len(g.linears) for g in groups)  # each linear in one group
    in_blocks = {name for name, m in model.transformer.named_modules()
                 if (isinstance(m, nn.Linear) or is_pointwise_conv(m)) and name.split(".")[0] in family.blocks}
    excluded = in_blocks - set(covered)
    assert set(covered) <= in_blocks  # nothing outside the blocks
    for name in excluded:  # every linear left out is named by a documented exclusion
        path = name.split(".", 2)[2]
        assert any(path == pattern for pattern in family.exclude), name
    assert {g.role for g in groups} == set(family.roles)  # the tiny models use every role
    for g in groups:
        assert len({lin.in_features for _, lin in g.linears}) == 1


@pytest.mark.slow  # end to end
def test_every_transform_at_fp_leaves_latents_unchanged(tiny):
    _, _, model = tiny
    stats, _ = calibrate_model(model, CAPTIONS, steps=2, cache_dir=None)
    reference = model.generate(CAPTIONS, SEEDS, steps=3)
    for name in BASELINES:
        with model.quantized(name, "fp", stats):
            out = model.generate(CAPTIONS, SEEDS, steps=3)
        error = ((out.latents - reference.latents).norm() / reference.latents.norm()).item()
        assert error < 1e-4, f"{name}: relative error {error:.2e} at fp"
    with model.quantized("hadanorm", "w4a4", stats):
        # every target (Sana's 1x1 convolutions too) is swapped out
        assert all(type(model.transformer.get_submodule(name)).__name__ == "QuantizedMember"
                   for g in model.targets() for name, _ in g.linears)
        quantized = model.generate(CAPTIONS, SEEDS, steps=3)
    assert torch.isfinite(quantized.latents).all()
    assert not torch.equal(quantized.latents, reference.latents)
    assert torch.equal(model.generate(CAPTIONS, SEEDS, steps=3).latents, reference.latents)


@pytest.mark.slow  # end to end
def test_quantized_run_through_the_cli(tiny, tmp_path):
    variant, folder, _ = tiny
    out = tmp_path / "run"
    assert main(["run", "--model", str(folder), "--steps", "2", "--eval-size", "2", "--calib-size", "2",
                 "--metrics", "sqnr", "--precisions", "w4a4", "--transforms", "hadanorm",
                 "--device", "cpu", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    cell = results["cells"]["w4a4/hadanorm"]
    assert cell["status"] == "ok" and results["model"]["family"] == FAMILY[variant]
    assert isinstance(cell["metrics"]["sqnr_db"]["value"], float)
    assert len(cell["groups"]) == len(load_model(str(folder)).targets())


def test_roles_are_the_loaded_models_own(tiny, tmp_path, capsys):
    # --roles is checked against the family of the model that was loaded, not PixArt's
    variant, folder, model = tiny
    role = model.targets()[-1].role
    out = tmp_path / "run"
    flags = ["run", "--model", str(folder), "--steps", "2", "--eval-size", "2", "--calib-size", "2",
             "--metrics", "sqnr", "--precisions", "w4a4", "--transforms", "none", "--device", "cpu"]
    assert main([*flags, "--roles", role, "--out", str(out)]) == 0
    cell = json.loads((out / "results.json").read_text())["cells"]["w4a4/none"]
    assert cell["status"] == "ok" and {g.split(".")[-1] for g in cell["groups"]} == {role}
    assert main([*flags, "--roles", "no_such_role", "--out", str(tmp_path / "other")]) == 2
    assert "this model has no 'no_such_role' targets" in capsys.readouterr().err


def test_quantize_the_pipelines_own_transformer(tiny):
    # torchao style on the user's own pipeline: the family is found from the transformer's class
    _, _, model = tiny
    pipe, size = model.pipe, model.default_settings()["resolution"]

    def run():
        generators = [torch.Generator().manual_seed(s) for s in SEEDS]
        return pipe(prompt=CAPTIONS, generator=generators, num_inference_steps=2, height=size, width=size,
                    output_type="latent", **model.family.pipeline_kwargs).images

    reference = run()
    stats = calibrate(pipe.transformer, run)
    assert set(stats) == {g.name for g in model.targets()}
    with quantize_(pipe.transformer, HadaNormConfig(alpha=0.5), "fp", calibration=stats) as handle:
        out = run()
    assert len(handle.described) == len(stats) and not handle.active
    assert ((out - reference).norm() / reference.norm()).item() < 1e-4
    assert torch.equal(run(), reference)


def test_a_pipeline_no_family_describes_is_refused():
    from types import SimpleNamespace

    from benchmark.models.pipeline import PipelineAdapter

    with pytest.raises(ValueError, match="no registered family describes.*families: pixart"):
        PipelineAdapter(SimpleNamespace(transformer=nn.Linear(2, 2)), "some/pipeline")


def test_pointwise_convolutions_as_targets():
    # Sana's 1x1 convolutions: pixels as tokens, exact at fp through the (N, C, H, W) layout
    from benchmark.families.examples import tiny_transformer

    sana = tiny_transformer("sana")
    groups = discover_targets(sana, families()["sana"].value,
                              filter_fn=lambda lin, name: name.endswith("conv_inverted"))
    assert [g.name for g in groups] == ["transformer_blocks.0.ffn_up", "transformer_blocks.1.ffn_up"]
    assert all(g.channels_first for g in groups)
    ff = sana.transformer_blocks[0].ff
    x = torch.randn(2, ff.conv_inverted.in_channels, 4, 4) + 2
    with torch.no_grad():
        reference = ff(x)
    stats = calibrate(sana, lambda: ff(x), targets=groups[:1])
    assert stats["transformer_blocks.0.ffn_up"].tokens == 2 * 16  # every pixel of every sample
    with quantize_(sana, HadaNormConfig(), "fp", calibration=stats, targets=groups[:1]):
        assert type(ff.conv_inverted).__name__ == "QuantizedMember"
        with torch.no_grad():
            assert ((ff(x) - reference).norm() / reference.norm()).item() < 1e-5
    assert isinstance(ff.conv_inverted, nn.Conv2d)


def test_one_step_is_refused_where_the_pipeline_cannot_take_it(tiny, tmp_path, capsys):
    """Every tiny pipeline generates with one step, or the run refuses --steps 1 in one line
    before anything is written (diffusers' PixArt-alpha reads one step as a DMD model's)."""
    variant, folder, model = tiny
    from benchmark.cli import main

    code = main(["run", "--model", str(folder), "--steps", "1", "--eval-size", "1", "--calib-size", "1",
                 "--precisions", "w4a4", "--transforms", "none", "--metrics", "sqnr",
                 "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip().splitlines()
    if variant == "pixart-alpha":
        assert code == 2 and err[-1].startswith("hadabench: error: ") and "--steps 2 or more" in err[-1]
        assert not (tmp_path / "run" / "results.json").exists()
    else:
        assert code == 0, err[-3:]


def test_validate_names_the_exclusions_of_a_family_whose_blocks_are_patterns():
    # the UNet's blocks are patterns (down_blocks.*.resnets): its exclusions were reported as "none"
    from benchmark.families.validate import excluded_summary, validate_family

    covers = {c.name: c for c in validate_family("unet")}["covers every block linear"]
    assert covers.passed and "excluded: time_emb_proj (" in covers.detail and "excluded: none" not in covers.detail
    unet = families()["unet"].value
    skipped = {"down_blocks.0.resnets.0.time_emb_proj": "why", "mid_block.resnets.1.time_emb_proj": "why",
               "down_blocks.1.attentions.0.conv_dw": "a depthwise convolution"}
    assert excluded_summary(unet, skipped) == "down_blocks.*.attentions.*.conv_dw (1), time_emb_proj (2)"
    assert excluded_summary(unet, {}) == "none"
    pixart = {c.name: c for c in validate_family("pixart")}["covers every block linear"]
    assert pixart.detail.endswith("excluded: none")  # PixArt excludes nothing in its blocks
