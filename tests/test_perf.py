"""Issue 14's pieces outside the kernels: the grid and sample-size settings, the bounded
calibration sample, and the microbench roofline / memory helpers."""

import pytest
import torch

from benchmark.families.examples import save_tiny_pixart
from benchmark.models import load_model
from benchmark.quant.grid import Precision
from benchmark.run.calibration import DEFAULT_SAMPLE_TOKENS, calibrate, caption_seeds, collect_stats
from benchmark.run.config import load_config

CAPTIONS = ["a red cube on a table", "a dog in the snow", "two birds on a wire"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(str(save_tiny_pixart(tmp_path_factory.mktemp("tiny") / "pipeline")))


def test_grid_and_sample_size_are_configuration():
    base = load_config(None, {})
    assert base.grid == "zero_point" and base.calib_sample_tokens == DEFAULT_SAMPLE_TOKENS
    other = load_config(None, {"grid": "min_anchored"})
    assert other.hash() != base.hash() and other.to_json()["grid"] == "min_anchored"
    assert load_config(None, {"calib_sample_tokens": 64}).hash() != base.hash()
    with pytest.raises(ValueError, match="unknown grid"):
        load_config(None, {"grid": "nearest"})
    with pytest.raises(ValueError, match="calib_sample_tokens"):
        load_config(None, {"calib_sample_tokens": 0})


def test_weights_follow_the_grid():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 8)
    from benchmark.transform.base import TransformedLinear

    zp = TransformedLinear([lin], Precision(4, None), center=False, scale=None, rotation=None)
    ma = TransformedLinear([lin], Precision(4, None, grid="min_anchored"), center=False, scale=None,
                           rotation=None)
    assert not torch.equal(zp.weight, ma.weight)
    assert ma.describe()["precision"] == "w4-minanchored"  # weights only (the precision grammar)


def test_calibration_sample_is_bounded_and_keyed(tiny, tmp_path):
    stats = collect_stats(tiny, CAPTIONS, caption_seeds(3), steps=2, batch_size=2, max_sample_tokens=48,
                          tokens_per_row=16)
    for s in stats.values():
        assert s.sample.shape[0] * s.sample.shape[1] <= 48 and s.sample.shape[1] <= 16
    _, small = calibrate(tiny, CAPTIONS, steps=2, cache_dir=tmp_path, max_sample_tokens=48)
    _, default = calibrate(tiny, CAPTIONS, steps=2, cache_dir=tmp_path)
    assert small.key != default.key and small.payload["max_sample_tokens"] == 48


def test_pixart_sized_sample_is_well_under_a_gigabyte():
    from benchmark.reports.microbench import pixart_sample_bytes

    assert pixart_sample_bytes(DEFAULT_SAMPLE_TOKENS) < 0.75e9
    assert pixart_sample_bytes(4096) > 5e9  # the earlier default (issue 14: 5.3 GB)


def test_roofline_table_has_every_shape():
    from benchmark.reports.microbench import ROOFLINE_SHAPES, roofline_table

    table = roofline_table(("torch",), repeats=1)
    assert all(label in table for label, *_ in ROOFLINE_SHAPES)
    assert table.count("| torch ") == len(ROOFLINE_SHAPES)


def test_microbench_rejects_unknown_kernel(capsys):
    from benchmark.cli import main

    assert main(["microbench", "--roofline", "--kernels", "torch,fast"]) == 2
    assert "hadabench: error: unknown kernel 'fast'" in capsys.readouterr().err
