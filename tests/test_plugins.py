import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmark import create_transform, load_plugin_file, quantize_linear, transforms
from benchmark.cli import main
from benchmark.errors import UserError
from benchmark.transform.registry import BASELINES, parameter_defaults
from benchmark.transform.validate import validate_transform

PLUGINS = Path(__file__).parent / "plugins"


def test_baselines_are_entry_points():
    entries = transforms()
    for name in BASELINES:
        assert entries[name].source == "built-in"
        assert entries[name].value.__module__ == f"baselines.{name}"


def test_file_plugin_replaces_the_whole_linear():
    assert load_plugin_file(PLUGINS / "lowrank.py") == ["lowrank"]
    assert transforms()["lowrank"].source.startswith("file ")
    lin = nn.Linear(64, 32)
    x = torch.randn(2, 16, 64)
    with torch.no_grad():
        exact = quantize_linear(lin, "lowrank", "fp", rank=4)(x)
        assert torch.allclose(exact, lin(x), atol=1e-5)
        assert quantize_linear(lin, "lowrank", "w4a4", rank=4).describe() == {"rank": 4}


def test_plugin_file_errors(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_plugin_file(tmp_path / "missing.py")
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(ValueError, match="defines no TRANSFORMS"):
        load_plugin_file(empty)
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ValueError, match="import failed: RuntimeError: boom"):
        load_plugin_file(broken)
    clash = tmp_path / "clash.py"
    clash.write_text("from baselines.none import none\nTRANSFORMS = {'hadanorm': none}\n")
    with pytest.raises(ValueError, match="already exists"):
        load_plugin_file(clash)


def _install_distribution(tmp_path, monkeypatch, module, module_source, entry):
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(module_source))
    info = tmp_path / "thirdparty-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[hadabench.transforms]\n{entry}\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_entry_point_plugin(tmp_path, monkeypatch):
    _install_distribution(tmp_path, monkeypatch, "thirdparty_rotate", """
        from benchmark import AffineTransform
        def rotate_only(seed: int = 3):
            '''Hadamard with its own random signs.'''
            return AffineTransform(name="rotate_only", rotation="full", random_signs=True, seed=seed)
    """, "rotate_only = thirdparty_rotate:rotate_only")
    entry = transforms()["rotate_only"]
    assert entry.source == "entry point (thirdparty)" and parameter_defaults(entry) == {"seed": 3}
    assert all(check.passed for check in validate_transform("rotate_only"))


def test_broken_entry_point_is_reported_not_fatal(tmp_path, monkeypatch):
    _install_distribution(tmp_path, monkeypatch, "thirdparty_broken",
                          "raise ImportError('missing dependency')\n",
                          "broken = thirdparty_broken:factory")
    entries = transforms()
    assert "hadanorm" in entries and entries["broken"].summary.startswith("BROKEN")
    with pytest.raises(ValueError, match="cannot be loaded: ImportError: missing dependency"):
        create_transform("broken")


def test_validate_rejects_a_transform_that_is_not_exact():
    (name,) = load_plugin_file(PLUGINS / "inexact.py")
    checks = {c.name: c for c in validate_transform(name)}
    assert not checks["exact at fp"].passed and "relative error" in checks["exact at fp"].detail
    assert checks["deterministic"].passed


@pytest.mark.parametrize("name", BASELINES)
def test_validate_accepts_the_baselines(name):
    assert all(check.passed for check in validate_transform(name))


def test_cli(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in BASELINES) and "built-in" in out
    assert main(["validate", str(PLUGINS / "inexact.py")]) == 1
    assert "FAIL  exact at fp" in capsys.readouterr().out
    assert main(["validate", str(PLUGINS / "lowrank.py")]) == 0
    assert main(["validate", "no-such-transform"]) == 2
    assert "neither a plugin" in capsys.readouterr().err
    assert main(["validate", "hadanorm", "--param", "alpha=0.3"]) == 0


# -- exactness, shapes and NaN (benchmark/transform/exactness.py, shared by validate and run) --------

def test_validate_reports_nan_as_non_finite_not_as_nondeterminism():
    load_plugin_file(PLUGINS / "failing.py")
    checks = {c.name: c for c in validate_transform("makes_nan")}
    assert checks["deterministic"].passed  # NaN every time is deterministic
    assert not checks["exact at fp"].passed and "non-finite" in checks["exact at fp"].detail
    assert not checks["quantizes"].passed and "non-finite" in checks["quantizes"].detail


def test_wrong_output_width_names_the_group_and_both_shapes():
    from benchmark.transform.exactness import exactness_error

    load_plugin_file(PLUGINS / "wrong_width.py")
    layers = [nn.Linear(16, 8), nn.Linear(16, 4)]
    x = torch.randn(2, 5, 16)
    with pytest.raises(ValueError, match=r"blocks\.3\.ffn_up: output 0 has shape \(2, 5, 7\), expected \(2, 5, 8\)"):
        exactness_error(create_transform("wrong_width"), layers, None, x, "blocks.3.ffn_up")
    checks = {c.name: c for c in validate_transform("wrong_width")}
    assert "has shape" in checks["exact at fp"].detail and "expected" in checks["handles shapes"].detail


# -- parameters are checked against the factory's signature -------------------------------

@pytest.mark.parametrize("name, params, message", [
    ("hadanorm", {"bogus": 1}, "has no parameter 'bogus'"),
    ("quarot", {"seed": 1.5}, "seed=1.5 is a float, expected an integer"),
    ("quarot", {"seed": True}, "seed=True is a bool, expected an integer"),
    ("hadanorm", {"block_size": "<script>alert(1)</script>"}, "block_size='<script>alert(1)</script>' is a str"),
    ("hadanorm", {"alpha": "abc"}, "alpha must be a number"),
    ("smoothquant", {"alpha": [0.5]}, "expected a number or a string"),
    ("sdcb", {"alpha": 2}, "alpha must be in"),
    # parameters that would change nothing are refused, not recorded as if they had
    ("hadanorm", {"block_size": 64}, "block_size=64 has no effect"),
    ("quarot", {"block_size": 64}, "block_size=64 has no effect"),
])
def test_bad_parameters_are_refused(name, params, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        create_transform(name, **params)


def test_affine_transform_refuses_parameters_without_effect():
    from benchmark import AffineTransform

    with pytest.raises(ValueError, match="seed=3 has no effect"):
        AffineTransform(rotation="full", seed=3)
    with pytest.raises(ValueError, match="correction='exact' has no effect"):
        AffineTransform(correction="exact")
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        AffineTransform(rotation="block", block_size=0)
    AffineTransform(rotation="block", block_size=64, random_signs=True, seed=3, center=True, correction="exact")


def test_untyped_factories_are_checked_against_their_defaults(tmp_path):
    plugin = tmp_path / "untyped.py"
    plugin.write_text("from benchmark import AffineTransform\n"
                      "def untyped(seed=0, note=None):\n"
                      "    return AffineTransform(name='untyped', rotation='full', random_signs=True, seed=seed)\n"
                      "TRANSFORMS = {'untyped': untyped}\n")
    load_plugin_file(plugin)
    create_transform("untyped", seed=2, note="anything")  # a None default says nothing about the type
    with pytest.raises(ValueError, match="seed='x' is a str, expected an integer"):
        create_transform("untyped", seed="x")


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_accept_their_own_defaults(name):
    entry = transforms()[name]
    assert create_transform(name, **parameter_defaults(entry)).config() == create_transform(name).config()


@pytest.mark.parametrize("param", ["alpha=2", "bogus=1", "alpha=abc", "block_size=64"])
def test_validate_bad_param_exits_2_with_one_line(capsys, param):
    assert main(["validate", "hadanorm", "--param", param]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith("hadabench: error: transform 'hadanorm'")


# -- ls and microbench take --plugin -----------------------------------------------------

def test_ls_lists_a_plugin_file_with_its_source(capsys):
    assert main(["ls", "--plugin", str(PLUGINS / "lowrank.py")]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith("| lowrank"))
    assert f"file {PLUGINS / 'lowrank.py'}" in line and "rank=8" in line


def test_microbench_times_a_plugin(capsys, monkeypatch):
    import benchmark.reports.microbench as microbench

    monkeypatch.setattr(microbench, "SHAPES", [(64, 32)])  # the real ones take minutes here
    assert main(["microbench", "--plugin", str(PLUGINS / "lowrank.py"), "--transforms", "none,lowrank",
                 "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "lowrank w4a4" in out and "none w4a4" in out and "quarot w4a4" not in out
    assert main(["microbench", "--transforms", "nosuch"]) == 2


# -- the README's example plugin --------------------------------------------------------

def test_lowrank_example_handles_bias_free_linears_and_the_weight_grid():
    from benchmark import Precision, quantize_weight

    load_plugin_file(PLUGINS / "lowrank.py")
    linears = [nn.Linear(64, 32, bias=False), nn.Linear(64, 16)]
    x = torch.randn(2, 8, 64)
    with torch.no_grad():
        exact = quantize_linear(linears, "lowrank", "fp", rank=4)(x)
        assert all(torch.allclose(o, lin(x), atol=1e-5) for o, lin in zip(exact, linears, strict=False))
        alone = quantize_linear(nn.Linear(64, 32, bias=False), "lowrank", "fp", rank=4)
        assert alone.group.bias is None
        precision = Precision(4, 4, weight_block=16, weight_symmetric=True)
        group = create_transform("lowrank", rank=4).quantize(linears, precision, None)
        weight = torch.cat([lin.weight for lin in linears]).double()
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        residual = (weight - (u[:, :4] * s[:4]) @ vh[:4]).float()
        assert torch.equal(group.residual, quantize_weight(residual, 4, 16, True))
        assert not torch.equal(group.residual, quantize_weight(residual, 4))  # the grid matters


def test_the_runs_check_is_bounded_and_nan_is_the_worst_error():
    from benchmark import CalibrationStats
    from benchmark.transform.exactness import CHECK_TOKENS, calibration_tokens, summarize

    stats = CalibrationStats.from_activations(torch.randn(10, 100, 8))
    assert calibration_tokens(stats).shape == (CHECK_TOKENS // 100, 100, 8)
    long = CalibrationStats.from_activations(torch.randn(3, 2000, 8))
    assert calibration_tokens(long).shape == (1, CHECK_TOKENS, 8)  # one sample, cut
    stats.sample = None
    with pytest.raises(ValueError, match="needs calibration activations"):
        calibration_tokens(stats)
    summary = summarize({"a": 1e-7, "b": float("nan"), "c": 0.5})
    assert summary["group"] == "b" and summary["exact"] is False
    assert summarize({"a": 1e-7, "b": 2e-6})["exact"] is True


def test_centered_quarot_example_validates():
    (name,) = load_plugin_file(PLUGINS / "centered_quarot.py")
    assert all(check.passed for check in validate_transform(name, seed=3))


def test_a_plugins_code_covers_the_helper_module_beside_it(tmp_path, monkeypatch):
    # a plugin that imports a helper from its own folder: changing the helper changes its code
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "myhelper.py").write_text("ALPHA = 0.5\n")
    plugin = tmp_path / "uses_helper.py"
    plugin.write_text("from myhelper import ALPHA\nfrom benchmark import AffineTransform\n"
                      "def mine():\n    return AffineTransform(name='mine', alpha=ALPHA)\n"
                      "TRANSFORMS = {'mine': mine}\n")
    load_plugin_file(plugin)
    first = transforms()["mine"].code
    monkeypatch.delitem(__import__("sys").modules, "myhelper")
    (tmp_path / "myhelper.py").write_text("ALPHA = 0.25\n")
    load_plugin_file(plugin)
    assert transforms()["mine"].code != first


# -- the same registry for model adapters and kernels -----------------------------------------------

def test_a_registered_kernel_is_a_choice_and_runs(tmp_path):
    import torch

    from benchmark.quant.kernels import KERNELS, online_function, resolve_kernel, torch_transform_quantize
    from benchmark.run.config import RunConfig

    calls = []

    def mine(x, mu=None, inv_scale=None, rotation=None, bits=None, **kwargs):
        calls.append(bits)
        return torch_transform_quantize(x, mu, inv_scale, rotation, bits, **kwargs)

    KERNELS.register("mine", mine, f"file {tmp_path / 'k.py'}")
    assert resolve_kernel("mine", "cpu") == "mine"
    x = torch.randn(2, 5, 8)
    assert torch.equal(online_function("mine")(x, bits=4), torch_transform_quantize(x, bits=4)) and calls == [4]
    assert RunConfig(kernel="mine").kernel == "mine"
    with pytest.raises(UserError, match=r"unknown kernel 'nosuch': use auto, torch, triton, compile, mine"):
        resolve_kernel("nosuch", "cpu")
    with pytest.raises(UserError, match="kernel 'bad' must be a function"):
        KERNELS.register("bad", 3, "file x.py")


def test_a_registered_model_adapter_loads_by_name(tmp_path):
    from benchmark.models import ADAPTERS, load_model
    from benchmark.models.embedded import EmbeddedAdapter

    class Shipped(EmbeddedAdapter):
        """The embedded model under another name (a package's own model, as an entry point would add)."""

    ADAPTERS.register("shipped", Shipped, f"file {tmp_path / 'm.py'}")
    model = load_model("shipped")
    assert type(model) is Shipped and model.targets()
    with pytest.raises(UserError, match="must be a ModelAdapter subclass"):
        ADAPTERS.register("bad", dict, "file x.py")
