"""Intervals, paired tests, significance ranks, the captions-needed table and the gate's two
tests, on synthetic per-caption numbers whose truth is known, and on the embedded run's own
per-caption values (leaderboard/embedded/results.json)."""

import copy
import random
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.errors import UserError
from benchmark.fileio import write_json
from benchmark.metrics.registry import metric_spec
from benchmark.reports.check import compare, gate_mode
from benchmark.reports.leaderboard import render
from benchmark.results.compare import compare_runs, power_rows, rank_cells
from benchmark.results.schema import SCHEMA, read_results
from benchmark.results.stats import ALPHA, captions_for_half_width, interval_json, mean_interval, paired_test
from benchmark.run.config import RunConfig, parse_transforms

SQNR = metric_spec("sqnr_db")
EMBEDDED = Path(__file__).resolve().parents[1] / "leaderboard" / "embedded" / "results.json"


def noisy(mean, n=64, sd=3.0, seed=0):
    rng = random.Random(seed)
    return [rng.gauss(mean, sd) for _ in range(n)]


def test_interval_covers_the_mean_and_shrinks_with_more_captions():
    small, large = mean_interval(noisy(10, n=32)), mean_interval(noisy(10, n=512))
    assert small.low < small.mean < small.high and large.low < 10 < large.high
    assert large.half_width < small.half_width / 2.5  # ~ 1/sqrt(16) = 1/4
    assert mean_interval(noisy(10)) == mean_interval(noisy(10))  # seeded: the same numbers twice
    assert mean_interval([5.0] * 8).half_width == 0


def test_paired_test_sees_a_shift_hidden_by_caption_difficulty():
    difficulty = noisy(0, n=32, sd=5.0)
    a = [d + 0.5 for d in difficulty]
    b = [d + random.Random(i).gauss(0, 0.3) for i, d in enumerate(difficulty)]
    # the two cells' own intervals overlap almost entirely ...
    assert mean_interval(a).low < mean_interval(b).high
    # ... but caption by caption a is better
    test = paired_test(a, b)
    assert test.significant and test.verdict() == "better" and test.difference.low > 0
    assert paired_test(b, a).verdict() == "worse"
    assert paired_test(a, a).verdict() == "not significant"
    with pytest.raises(ValueError, match="same captions"):
        paired_test(a, b[:-1])
    with pytest.raises(ValueError, match="non-finite"):
        paired_test([float("inf")] * 32, b)


def test_captions_for_half_width_scales_with_the_square_of_the_width():
    values = noisy(0, n=32)
    at_32 = captions_for_half_width(values, 1.0)
    assert captions_for_half_width(values, 0.5) == pytest.approx(4 * at_32, rel=0.1)  # t quantiles shrink a bit


def test_intervals_record_their_method():
    recorded = interval_json(noisy(10, n=32))
    assert recorded["method"] == "bootstrap-t (symmetric)" and recorded["level"] == 0.95
    assert recorded["low"] < recorded["mean"] < recorded["high"] and recorded["samples"] == 32
    assert interval_json([1.0])["low"] is None  # one caption: no interval, the reason instead


def cell(label, values, precision="w4a4", status="ok"):
    return {"precision": precision, "transform": label, "label": label, "params": {}, "status": status,
            "reason": None if status == "ok" else "boom",
            "metrics": {"sqnr_db": {"value": sum(values) / len(values)}},
            "per_sample": {"sqnr_db": values}, "groups": {}, "timings": {}}


def doc(cells, numerics="pinned", device="cpu"):
    config = RunConfig(precisions=["w4a4"], transforms=parse_transforms(",".join(c["label"] for c in cells))).validate()
    return {"schema": SCHEMA, "config": config.to_json(), "config_hash": config.hash(),
            "environment": {"hadabench": "0", "device": device, "torch": "2.13.0",
                            "numerics": {"mode": numerics, "threads": 2}},
            "captions": {"evaluation": {"ids": list(range(32))}}, "metric_setup": {}, "model": {"name": "x"},
            "reference": {"metrics": {}}, "cells": {f"w4a4/{c['label']}": c for c in cells}, "grids": {},
            "tolerance": {"sqnr_db": SQNR.tolerance}}


def three_cells(shift=0.0):
    base = noisy(12, n=32, sd=4.0)
    return [cell("none", [v - 1.5 + shift for v in base]),
            cell("quarot", [v + random.Random(i).gauss(0, 0.5) + shift for i, v in enumerate(base)]),
            cell("hadanorm", [v + shift for v in base])]


def test_ranks_and_ties_with_the_best():
    ranked = rank_cells(three_cells(), SQNR)
    by_label = {r.cell["label"]: r for r in ranked}
    assert by_label["quarot"].rank == 1 and by_label["hadanorm"].rank == 1  # caption noise only: a tie
    assert by_label["quarot"].tied_with_best and by_label["hadanorm"].tied_with_best
    assert by_label["none"].rank == 3 and not by_label["none"].tied_with_best
    failed = rank_cells([cell("x", [1.0], status="failed")] + three_cells(), SQNR)[0]
    assert failed.rank is None and failed.interval is None


def test_leaderboard_prints_intervals_bold_ties_and_the_matrix(tmp_path):
    write_json(tmp_path / "run" / "results.json", doc(three_cells()))
    text = render([tmp_path / "run"], tmp_path / "README.md")
    table = text.split("<details>")[0]
    lines = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert " ± " in lines["none"] and "**" not in lines["none"]
    assert "**" in lines["quarot"] and "**" in lines["hadanorm"]
    assert "row − column" in text and "-1.50*" in text  # none − hadanorm, significant
    assert "### w4a4 · run `run`" in text


def test_power_table_from_a_run(tmp_path, capsys):
    write_json(tmp_path / "results.json", doc(three_cells()))
    rows = power_rows(doc(three_cells()), SQNR, 0.25)
    pair = next(r for r in rows if r["comparison"] == "none − hadanorm")
    assert pair["verdict"] == "significant (Holm)" and pair["for_half_width"] is None  # a constant shift: zero width
    assert pair["p_holm"] <= ALPHA and pair["for_power"] <= 32 and pair["tests"] == 3
    single = next(r for r in rows if r["comparison"] == "none")
    assert single["for_half_width"] > 32 and "for_power" not in single
    noise = next(r for r in rows if r["comparison"] == "quarot − hadanorm")  # caption noise only
    assert noise["verdict"] == "not significant"
    assert main(["power", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "precision ±0.25" in out and "80% power" in out and "bootstrap-t" in out and "Holm" in out
    assert "too few captions" not in out
    assert main(["power", str(tmp_path), "--target", "0"]) == 2


def test_gate_exact_mode_catches_a_tiny_drop():
    baseline = doc(three_cells())
    assert gate_mode(baseline, baseline)[0] == "exact"
    assert compare(doc(three_cells()), baseline)[0] == []
    regressions, table = compare(doc(three_cells(shift=-0.05)), baseline)
    assert len(regressions) == 3 and "gate: exact" in table


def test_gate_paired_mode_ignores_machine_noise_and_catches_a_real_drop():
    baseline = doc(three_cells(), numerics="native")
    jitter = random.Random(7)
    rerun = three_cells()
    for c in rerun:  # another CPU: flipped roundings move single captions by up to several dB
        c["per_sample"]["sqnr_db"] = [v + jitter.gauss(0, 0.8) for v in c["per_sample"]["sqnr_db"]]
    assert gate_mode(doc(rerun), baseline)[0] == "paired"
    assert compare(doc(rerun), baseline)[0] == []
    degraded = three_cells()
    for c in degraded:
        c["per_sample"]["sqnr_db"] = [v - 0.6 + jitter.gauss(0, 0.3) for v in c["per_sample"]["sqnr_db"]]
    regressions, table = compare(doc(degraded), baseline)
    assert len(regressions) == 3 and "Holm" in table
    assert gate_mode(doc(rerun, device="cuda"), doc(rerun, device="cuda"))[0] == "paired"


def test_compare_two_runs_cell_by_cell(tmp_path, capsys):
    write_json(tmp_path / "a" / "results.json", doc(three_cells()))
    write_json(tmp_path / "b" / "results.json", doc(three_cells(shift=0.4)))
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "w4a4/hadanorm" in out and "+0.40 [+0.40, +0.40]" in out and "B better" in out
    # a difference of a few rounding flips is printed as what it is, not as +0.00
    write_json(tmp_path / "d" / "results.json", doc(three_cells(shift=3e-6)))
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "d")]) == 0
    assert "+3.0e-06 [+3.0e-06, +3.0e-06]" in capsys.readouterr().out
    other = doc(three_cells())
    other["captions"] = {"evaluation": {"ids": list(range(1, 33))}}
    write_json(tmp_path / "c" / "results.json", other)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "c")]) == 2
    assert "same evaluation captions" in capsys.readouterr().err


# -- issue 24: the statistics hold their level, and say when they cannot ---------------------------------

def embedded_doc(cells: int | None = None) -> dict:
    """The published embedded run (32 captions, per-caption sqnr_db and sqnr_image_db), numerics
    "native" so that the gate takes its paired mode; ``cells``: its cells repeated to that many."""
    document = read_results(EMBEDDED)
    document["environment"]["numerics"]["mode"] = "native"
    for one in document["cells"].values():  # the two SQNR metrics: what the counts are of
        for part in ("metrics", "per_sample"):
            one[part] = {key: value for key, value in one.get(part, {}).items() if key.startswith("sqnr")}
    if cells is not None:
        published = list(document["cells"].values())
        document["cells"] = {}
        for i in range(cells):
            cell = copy.deepcopy(published[i % len(published)])
            cell["label"] = f"{cell['label']} #{i}"
            document["cells"][f"{cell['precision']}/{cell['label']}"] = cell
    return document


def shifted(cell: dict, by: float, metrics=("sqnr_db", "sqnr_image_db")) -> None:
    for metric in metrics:
        cell["per_sample"][metric] = [v + by for v in cell["per_sample"][metric]]
        cell["metrics"][metric]["value"] += by


def test_paired_gate_flags_one_cell_among_52_and_is_quiet_on_a_rerun():
    """104 tests (52 cells x 2 per-caption metrics): the percentile bootstrap's p-values stopped at
    1/2001, above Holm's first threshold 0.05/104, so that gate could flag nothing; exact sign-flip
    p-values of 32 captions go down to 1/2**32."""
    baseline = embedded_doc(cells=52)
    assert gate_mode(baseline, baseline)[0] == "paired"
    regressions, table = compare(copy.deepcopy(baseline), baseline)
    assert regressions == [] and "Holm's correction over 104 tests" in table and "sign-flip" in table
    run = copy.deepcopy(baseline)
    victim = list(run["cells"])[17]
    shifted(run["cells"][victim], -3.0)  # a constant 3 dB drop of one cell, every caption
    regressions, table = compare(run, baseline)
    assert len(regressions) == 2 and all(line.startswith(f"{victim} sqnr") for line in regressions)
    assert sum("REGRESSION" in line for line in table.splitlines()) == 2


def test_compare_finds_a_constant_1_db_shift_of_one_cell():
    a = embedded_doc()
    b = copy.deepcopy(a)
    shifted(b["cells"]["w4a4/quarot"], 1.0, metrics=("sqnr_db",))
    rows = {r["cell"]: r for r in compare_runs(a, b, SQNR)}
    cells = len(a["cells"])
    assert len(rows) == cells and all(r["tests"] == cells and r["exact"] for r in rows.values())
    moved = rows.pop("w4a4/quarot")
    assert moved["p_value"] < ALPHA / 55 and moved["p_holm"] <= ALPHA and moved["verdict"] == "better"
    assert moved["difference"].mean == pytest.approx(1.0)
    assert all(r["p_value"] == 1 and r["verdict"] == "not significant" for r in rows.values())


def four_captions(numerics="native"):
    cells = [cell(label, [v + shift for v in (10.0, 12.5, 9.0, 11.0)])
             for label, shift in (("none", -1.0), ("quarot", 0.0), ("hadanorm", 0.5))]
    document = doc(cells, numerics=numerics)
    document["captions"] = {"evaluation": {"ids": list(range(4))}}
    return document


def test_four_captions_the_gate_refuses_and_the_reports_say_so(tmp_path, capsys):
    small = four_captions()
    with pytest.raises(UserError, match=r"cannot flag anything: with 4 captions .* 1/2\*\*4 = 0.0625"):
        compare(small, small)
    assert compare(four_captions("pinned"), four_captions("pinned"))[0] == []  # the exact gate needs no test
    write_json(tmp_path / "a" / "results.json", small)
    write_json(tmp_path / "b" / "results.json", small)
    assert main(["check", str(tmp_path / "a"), "--baseline", str(tmp_path / "b" / "results.json")]) == 2
    assert "cannot flag anything" in capsys.readouterr().err
    for argv in (["power", str(tmp_path / "a")], ["compare", str(tmp_path / "a"), str(tmp_path / "b")]):
        assert main(argv) == 0
        assert "too few captions for a claim: 4 < 10" in capsys.readouterr().out
    board = render([tmp_path / "a"], tmp_path / "README.md")
    assert "too few captions for a claim: 4 &lt; 10" in board or "too few captions for a claim: 4 < 10" in board


def test_power_tells_a_studys_cells_apart():
    # a sensitivity study's cells share a label and differ by their role subset, which the key carries
    results = doc(three_cells())
    results["cells"]["w4a4/none [roles=ffn_up]"] = dict(results["cells"]["w4a4/none"])
    names = {r["comparison"] for r in power_rows(results, SQNR, 0.25)}
    assert {"none", "none [roles=ffn_up]", "none − none [roles=ffn_up]"} <= names
