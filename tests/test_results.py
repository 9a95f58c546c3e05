import json
import math

import pytest

from benchmark.cli import main
from benchmark.fileio import write_json
from benchmark.metrics.registry import default_tolerance
from benchmark.reports.check import compare, write_baseline
from benchmark.reports.leaderboard import render
from benchmark.results.schema import SCHEMA, read_results
from benchmark.run.config import RunConfig, load_config, parse_transforms


def test_transform_specs():
    specs = parse_transforms("none, hadanorm(alpha=0.3, correction=exact),quarot(seed=2)")
    assert [s.label for s in specs] == ["none", "hadanorm(alpha=0.3, correction=exact)", "quarot(seed=2)"]
    assert dict(specs[1].params) == {"alpha": 0.3, "correction": "exact"}
    assert parse_transforms([{"name": "sdcb", "alpha": "auto"}])[0].label == "sdcb(alpha=auto)"
    with pytest.raises(ValueError, match="listed twice"):
        parse_transforms("none,none")
    with pytest.raises(ValueError, match="not key=value"):
        parse_transforms("hadanorm(alpha)")


def test_config_layers(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('precisions = ["w4a4"]\nsteps = 5\ntransforms = "none,hadanorm"\n')
    config = load_config(str(path), {"steps": 7, "seed": None})
    assert config.precisions == ["w4a4"] and config.steps == 7 and config.seed == 0
    assert [t.name for t in config.transforms] == ["none", "hadanorm"]
    assert load_config(None, {"out": "elsewhere"}).hash() == RunConfig().validate().hash()
    assert load_config(None, {"steps": 3}).hash() != RunConfig().validate().hash()


@pytest.mark.parametrize("text, message", [
    ("colour = 1\n", "unknown configuration key 'colour'"),
    ('precisions = ["w4a9"]\n', "unknown precision"),
    ('captions = "imagenet"\n', "unknown caption source"),
    ('metrics = ["kid"]\n', "unknown metric 'kid'"),
    ("steps = 0\n", "steps must be a positive integer"),
    ("steps = [\n", "invalid TOML"),
])
def test_bad_config(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(str(path))


def results_doc(sqnr=(1.0, 2.0), status="ok", config=None):
    config = config or RunConfig(precisions=["w4a4"], transforms=parse_transforms("none,hadanorm")).validate()
    cells = {}
    for label, value in zip(("none", "hadanorm"), sqnr, strict=False):
        cells[f"w4a4/{label}"] = {"precision": "w4a4", "transform": label, "label": label, "params": {},
                                  "status": status if label == "hadanorm" else "ok", "reason": None,
                                  "metrics": {"sqnr_db": {"value": value}, "clip_score": {"value": None},
                                              "clip_iqa": {"value": 0.5}},
                                  "per_sample": {}, "groups": {}, "timings": {}}
    return {"schema": SCHEMA, "config": config.to_json(), "config_hash": config.hash(),
            "environment": {"hadabench": "0", "device": "cpu", "numerics": {"mode": "pinned"}},
            "captions": {"sha256": "x"},
            "model": {"weights_sha256": "0" * 64},
            "metric_setup": {"clip_score": {"status": "not computed", "reason": "no weights"}},
            "reference": {"metrics": {"clip_score": {"value": None}, "clip_iqa": {"value": 0.9}}},
            "cells": cells, "grids": {}}


def test_results_round_trip_and_infinity(tmp_path):
    doc = results_doc(sqnr=(math.inf, 2.0))
    write_json(tmp_path / "results.json", doc)
    text = (tmp_path / "results.json").read_text()
    assert '"inf"' in text and json.loads(text)  # valid JSON: no bare Infinity
    assert read_results(tmp_path)["cells"]["w4a4/none"]["metrics"]["sqnr_db"]["value"] == "inf"
    assert not list(tmp_path.glob(".*tmp"))


def test_read_results_errors(tmp_path):
    with pytest.raises(ValueError, match="no such results file"):
        read_results(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="invalid JSON"):
        read_results(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"schema": "x"}')
    with pytest.raises(ValueError, match="schema"):
        read_results(tmp_path / "other.json")


def test_check_passes_on_identical_and_fails_on_worse(tmp_path, capsys):
    write_json(tmp_path / "run.json", results_doc())
    write_baseline(str(tmp_path / "run.json"), str(tmp_path / "baseline.json"))
    assert read_results(tmp_path / "baseline.json")["tolerance"] == default_tolerance()
    assert main(["check", str(tmp_path / "run.json"), "--baseline", str(tmp_path / "baseline.json")]) == 0
    assert "no regression" in capsys.readouterr().out

    write_json(tmp_path / "worse.json", results_doc(sqnr=(1.0, 0.5)))
    assert main(["check", str(tmp_path / "worse.json"), "--baseline", str(tmp_path / "baseline.json")]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "w4a4/hadanorm sqnr_db" in out

    write_json(tmp_path / "within.json", results_doc(sqnr=(1.0, 2.0 - default_tolerance()["sqnr_db"] / 2)))
    assert main(["check", str(tmp_path / "within.json"), "--baseline", str(tmp_path / "baseline.json")]) == 0

    write_json(tmp_path / "failed.json", results_doc(status="failed"))
    regressions, _ = compare(read_results(tmp_path / "failed.json"), read_results(tmp_path / "baseline.json"))
    assert regressions == ["w4a4/hadanorm: failed: None"]


def test_check_refuses_another_configuration(tmp_path, capsys):
    other = RunConfig(precisions=["w4a4"], steps=3, transforms=parse_transforms("none,hadanorm")).validate()
    write_json(tmp_path / "run.json", results_doc())
    write_baseline(str(tmp_path / "run.json"), str(tmp_path / "baseline.json"))
    write_json(tmp_path / "other.json", results_doc(config=other))
    assert main(["check", str(tmp_path / "other.json"), "--baseline", str(tmp_path / "baseline.json")]) == 2
    err = capsys.readouterr().err
    assert "not comparable" in err and "steps" in err and len(err.strip().splitlines()) == 1


def test_leaderboard_markdown(tmp_path):
    write_json(tmp_path / "results.json", results_doc(sqnr=(1.0, 2.5)))
    text = render([tmp_path / "results.json"], tmp_path / "README.md")
    assert "## embedded" in text and "### w4a4 · run `.`" in text
    assert "| hadanorm" in text and "**2.50**" in text
    assert "CLIP score" not in text.split("clip\\_score** not computed")[0].split("### w4a4")[1]  # no n/a column
    assert "clip\\_score** not computed: no weights" in text  # escaped: results files are untrusted
    assert "paper" not in text  # the paper's numbers only stand next to PixArt-Sigma's
    config = RunConfig(model="PixArt-alpha/PixArt-Sigma-XL-2-512-MS", precisions=["w4a4"],
                       transforms=parse_transforms("none,hadanorm")).validate()
    write_json(tmp_path / "pixart.json", results_doc(config=config))
    text = render([tmp_path / "pixart.json"], tmp_path / "README.md")
    assert "paper SQNR (dB)" in text and "0.92" in text and "31.69" in text


def test_check_names_the_hashed_keys_that_differ_never_out(tmp_path, capsys):
    base = RunConfig(precisions=["w4a4"], transforms=parse_transforms("none,hadanorm")).validate()
    other = RunConfig(precisions=["w4a4"], steps=3, out="elsewhere", kernel="torch",
                      transforms=parse_transforms("none,hadanorm")).validate()
    with pytest.raises(ValueError, match=r"hashed keys that differ: steps\)") as error:
        compare(results_doc(config=other), {**results_doc(config=base), "tolerance": default_tolerance()})
    assert "out" not in str(error.value).replace("without", "")
    # out, kernel and the transform list are not hashed: these compare
    moved = RunConfig(precisions=["w4a4"], out="elsewhere", transforms=parse_transforms("none,hadanorm")).validate()
    assert moved.hash() == base.hash()
    # a hash written under another definition, with no hashed key differing, says so
    stale = {**results_doc(config=base), "config_hash": "0" * 16}
    with pytest.raises(ValueError, match="no hashed key differs"):
        compare(stale, {**results_doc(config=base), "tolerance": default_tolerance()})


def test_hash_ignores_the_transform_list_but_not_allow_inexact():
    one = RunConfig(transforms=parse_transforms("none")).validate()
    assert one.hash() == RunConfig(transforms=parse_transforms("none,my_plugin")).validate().hash()
    assert one.hash() != RunConfig(transforms=parse_transforms("none"), allow_inexact=True).validate().hash()
    with pytest.raises(ValueError, match="allow_inexact must be true or false"):
        RunConfig(allow_inexact="yes").validate()


def test_check_does_not_count_baseline_rows_the_run_did_not_include(tmp_path):
    """A plugin row added to the published baseline is no regression of a run of the others."""
    baseline = {**results_doc(), "tolerance": default_tolerance()}
    run = results_doc()
    del run["cells"]["w4a4/hadanorm"]
    run["config"]["transforms"] = [{"name": "none", "params": {}}]
    regressions, table = compare(run, baseline)
    assert regressions == [] and "not in this run's transforms" in table
    run["config"]["transforms"].append({"name": "hadanorm", "params": {}})  # configured, yet missing
    assert compare(run, baseline)[0] == ["w4a4/hadanorm: missing from the run"]


def test_leaderboard_marks_a_row_run_with_allow_inexact(tmp_path):
    doc = results_doc(sqnr=(1.0, 2.5))
    doc["cells"]["w4a4/hadanorm"]["exactness"] = {"worst_relative_error": 0.0085, "exact": False}
    doc["cells"]["w4a4/none"]["exactness"] = {"worst_relative_error": 0.0, "exact": True}
    write_json(tmp_path / "results.json", doc)
    text = render([tmp_path / "results.json"], tmp_path / "README.md")
    assert "| hadanorm (NOT EXACT at fp: relative error 8.5e-03)" in text and "| none " in text
