import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import benchmark.registry as registry
from benchmark import create_transform, load_plugin_file, quantize_linear, transforms
from benchmark.cli import main
from benchmark.validate import validate_transform

PLUGINS = Path(__file__).parent / "plugins"


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    monkeypatch.setattr(registry, "_entries", None)


def test_baselines_are_entry_points():
    entries = transforms()
    for name in registry.BASELINES:
        assert entries[name].source == "built-in"
        assert entries[name].factory.__module__ == f"baselines.{name}"


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
    assert entry.source == "entry point (thirdparty)" and entry.defaults == {"seed": 3}
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


@pytest.mark.parametrize("name", registry.BASELINES)
def test_validate_accepts_the_baselines(name):
    assert all(check.passed for check in validate_transform(name))


def test_cli(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in registry.BASELINES) and "built-in" in out
    assert main(["validate", str(PLUGINS / "inexact.py")]) == 1
    assert "FAIL  exact at fp" in capsys.readouterr().out
    assert main(["validate", str(PLUGINS / "lowrank.py")]) == 0
    assert main(["validate", "no-such-transform"]) == 2
    assert "neither a plugin" in capsys.readouterr().err
    assert main(["validate", "hadanorm", "--param", "alpha=0.3"]) == 0
