"""The README's results section is generated (benchmark/reports/findings.py, ``hadabench
leaderboard --readme``): it equals what the generator writes from the published run, its numbers
are the leaderboard's, the command only touches what lies between the markers, and the verdicts
follow the data."""

import copy
import random
import re
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.fileio import write_json
from benchmark.metrics.registry import metric_spec
from benchmark.reports import markdown as md
from benchmark.reports.findings import (
    BEGIN,
    END,
    combine,
    findings,
    headline_table,
    kendall_tau,
    readme_section,
    replace_section,
    section_of,
)
from benchmark.reports.leaderboard import render
from benchmark.results.schema import SCHEMA, read_results
from benchmark.run.config import RunConfig, parse_transforms

ROOT = Path(__file__).resolve().parents[1]
LEADERBOARD = ROOT / "leaderboard"
SQNR = metric_spec("sqnr_db")
VALUE = r"[+-]?\d+\.\d+"
INTERVAL = re.compile(rf"({VALUE}) ± (\d+\.\d+|∞)")


def _readme_runs() -> list[tuple[str, dict]]:
    """The runs that README.md's section names (the main one first), read from leaderboard/."""
    section = section_of((ROOT / "README.md").read_text(encoding="utf-8"))
    intro = next(line for line in section.splitlines() if line.startswith("Run "))
    names = re.findall(r"`([^`]+)`", intro.split(" ([full leaderboard]")[0])
    return [(name, read_results(LEADERBOARD / name / "results.json")) for name in names]


@pytest.fixture(scope="module")
def runs():
    return _readme_runs()


@pytest.fixture(scope="module")
def section(runs):
    (name, main), companions = runs[0], runs[1:]
    return readme_section(main, name, "leaderboard/README.md", companions=companions)


def test_the_readme_section_is_the_generated_one(section):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert section_of(readme) == section, "README.md's results section is stale: tox -e leaderboard regenerates it"


# -- every number of the section is the leaderboard's ---------------------------------------------------

def _rows(table: list[str]) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in table
            if line.startswith("|") and not set(line) <= set("|-: ")]


def _leaderboard(text: str) -> dict:
    """(run, precision) -> {"sqnr": {label: (value, rank)}, "matrix": {(row, column): entry}} from the
    rendered page."""
    out = {}
    for block in re.split(r"^### ", text, flags=re.M)[1:]:
        heading, _, body = block.partition("\n")
        precision, _, run = heading.partition(" · run ")
        table, _, rest = body.partition("<details>")
        rows = _rows(table.splitlines())
        column = rows[0].index(SQNR.header)
        sqnr = {row[0]: (row[column], row[1]) for row in rows[1:]}
        matrix_rows = _rows(rest.partition("</details>")[0].splitlines())
        header = matrix_rows[0]
        matrix = {(row[0], header[j]): row[j] for row in matrix_rows[1:] for j in range(1, len(row))}
        out[run.strip("`"), precision] = {"sqnr": sqnr, "matrix": matrix}
    return out


def _owners(runs) -> dict[str, str]:
    """precision -> the run whose cells the section shows at that precision."""
    (name, main), companions = runs[0], runs[1:]
    _, merged, _ = combine(main, companions)
    owners = {p: name for p in main["config"]["precisions"]}
    for other, results in companions:
        if other in merged:
            owners.update({p: other for p in results["config"]["precisions"]})
    return owners


def _mean(entry: tuple[str, str]) -> float:
    return float(INTERVAL.search(entry[0].strip("*"))[1])


def _check_against(section: str, board: dict, owners: dict[str, str]) -> int:
    """Every "x ± y" of ``section`` is a cell of the leaderboard's SQNR column, or a paired difference
    whose mean and verdict are the leaderboard's matrix entry (a * where significant), or a change
    between two precisions or runs that the leaderboard's means agree with. Returns how many were checked."""
    shown = {p.upper(): (owners[p], p) for p in owners}
    checked = 0
    # the headline table: value, bold and rank, cell by cell, as the leaderboard prints them
    lines = section.splitlines()
    table = [line for line in lines if line.startswith("| ")]
    header = _rows(table)[0]
    for row in _rows(table)[1:]:
        for i in range(1, len(header), 2):
            value, rank = row[i], row[i + 1]
            if value in ("–", "failed"):
                continue
            assert board[shown[header[i]]]["sqnr"][row[0]] == (value, rank), (row[0], header[i])
            checked += 1
    text = "\n".join(line for line in lines if line not in table)
    # fine-tuning: "`a` − `b` +x ± y dB at W4A3 (verdict, ...) after, ... before", the matrices of the
    # fine-tuned run and of its post-training twin
    tuned = re.search(r"Run `([^`]+)` fine-tunes run `([^`]+)`'s cells", text)
    for line in [line for line in text.splitlines() if line.startswith("- Does the transform still matter")]:
        for pair in re.finditer(r"`([^`]+)` − `([^`]+)` ((?:[^;]|\.\d)*)", line):
            values = re.findall(rf"({VALUE}) ± \S+ dB at (\S+) \((significant|not significant)", pair[3])
            assert len(values) == 2, pair[0]
            for (value, precision, verdict), run in zip(values, (tuned[1], tuned[2]), strict=True):
                entry = board[run, precision.lower()]["matrix"][md.cell(pair[1]), md.cell(pair[2])]
                assert entry == value + ("*" if verdict == "significant" else ""), (pair[0], entry)
                checked += 1
        text = text.replace(line, "")
    # changes: "W6A6 − W4A4, transform by transform ...: least `a` +x ± y dB, most ..." and
    # "`run-b` − `run-a` at W4A4, transform by transform ..."
    for match in re.finditer(r"(?:`([^`]+)` − `([^`]+)` at (\S+)|(\S+) − (\S+)), transform by transform[^\n]*", text):
        if match[1]:  # two runs at one precision (a fine-tuned run's may be no column of the table)
            later, earlier = board[match[1], match[3].lower()]["sqnr"], board[match[2], match[3].lower()]["sqnr"]
        else:
            later, earlier = board[shown[match[4]]]["sqnr"], board[shown[match[5]]]["sqnr"]
        for value in re.finditer(rf"`([^`]+)` ({VALUE}) ± \S+ dB", match[0]):
            label = md.cell(value[1])
            assert float(value[2]) == pytest.approx(_mean(later[label]) - _mean(earlier[label]), abs=0.0101), value[0]
            checked += 1
        text = text.replace(match[0], "")
    # paired differences within a precision: "`a` − `b`: +x ± y dB at W4A4 (significant, ...), ..."
    for match in re.finditer(r"`([^`]+)` − `([^`]+)`: ((?:[^.;]|\.\d)*)", text):
        a, b = md.cell(match[1]), md.cell(match[2])
        for value in re.finditer(rf"({VALUE}) ± \S+ dB at (\S+) \((significant|not significant)", match[3]):
            entry = board[shown[value[2]]]["matrix"][a, b]
            assert entry == value[1] + ("*" if value[3] == "significant" else ""), (a, b, value[0], entry)
            checked += 1
        text = text.replace(match[0], "")
    # anything else with an interval (the cells named in sentences) is a cell of the leaderboard, as printed
    printed = {value.strip("*") for p in board.values() for value, _ in p["sqnr"].values()}
    for match in INTERVAL.finditer(text):
        assert match[0] in printed, match[0]
        checked += 1
    return checked


@pytest.fixture(scope="module")
def board(runs):
    # rendered as leaderboard/README.md would be (its run names), never written
    return _leaderboard(render([LEADERBOARD / name for name, _ in runs], LEADERBOARD / "README.md"))


def test_every_interval_of_the_section_is_in_the_leaderboard(section, board, runs):
    checked = _check_against(section, board, _owners(runs))
    assert checked == len(INTERVAL.findall(section))
    assert checked >= 22 + 2 * 6  # the table's cells and at least six paired differences per precision


def test_the_check_catches_a_copied_number(section, board, runs):
    value = INTERVAL.search(section[section.index("| --- |"):])[0]  # the table's first cell
    with pytest.raises(AssertionError):
        _check_against(section.replace(value, value[:-1] + str((int(value[-1]) + 1) % 10)), board, _owners(runs))
    verdict = re.search(r"\(not significant, Holm-adjusted p [^)]*\)", section)[0]
    with pytest.raises(AssertionError):  # a verdict that is not the matrix's
        _check_against(section.replace(verdict, verdict.replace("not significant", "significant")), board,
                       _owners(runs))


# -- the command ------------------------------------------------------------------------------------------

def cell(label, values, precision="w4a4", transform=None, params=None, extra=None):
    metrics = {"sqnr_db": {"value": sum(values) / len(values)}}
    per_sample = {"sqnr_db": list(values)}
    for key, numbers in (extra or {}).items():
        metrics[key] = {"value": sum(numbers) / len(numbers)}
        per_sample[key] = list(numbers)
    return {"precision": precision, "transform": transform or label, "label": label, "params": params or {},
            "status": "ok", "reason": None, "metrics": metrics, "per_sample": per_sample, "groups": {}, "timings": {}}


def doc(cells, precisions=("w4a4",), validate=True):
    labels = list(dict.fromkeys(c["label"] for c in cells))
    if validate:
        config = RunConfig(precisions=list(precisions), transforms=parse_transforms(",".join(labels))).validate()
        config_json, config_hash = config.to_json(), config.hash()
    else:  # transforms or precisions this checkout may not know yet: the findings only read the document
        config_json = {"model": "embedded", "precisions": list(precisions), "steps": 20, "seed": 0,
                       "grid": "zero_point", "transforms": [{"name": label, "params": {}} for label in labels]}
        config_hash = "0"
    return {"schema": SCHEMA, "config": config_json, "config_hash": config_hash,
            "environment": {"hadabench": "0", "device": "cpu", "torch": "2.13.0",
                            "numerics": {"mode": "pinned", "threads": 2}},
            "captions": {"evaluation": {"ids": list(range(32))}}, "metric_setup": {}, "model": {"name": "x"},
            "reference": {"metrics": {}}, "cells": {f"{c['precision']}/{c['label']}": c for c in cells},
            "grids": {}, "tolerance": {"sqnr_db": SQNR.tolerance}}


def captions(mean=14.0, n=32, seed=0):
    rng = random.Random(seed)
    return [rng.gauss(mean, 4.0) for _ in range(n)]


def two_cells(shift):
    base = captions()
    return doc([cell("none", [v - 2.0 + random.Random(i).gauss(0, 1) for i, v in enumerate(base)]),
                cell("quarot", base), cell("hadanorm", [v + shift for v in base])])


README = "# title\r\n\r\nintro 12.90 ± 1.37\n\n## Results so far\n\n" + BEGIN + "\nold table\n" + END + "\n\ntail\n"


def test_the_command_rewrites_only_the_section(tmp_path):
    write_json(tmp_path / "runs" / "embedded" / "results.json", two_cells(1.0))
    write_json(tmp_path / "runs" / "other" / "results.json", two_cells(0.0))
    readme = tmp_path / "README.md"
    readme.write_bytes(README.encode())
    board = tmp_path / "board" / "README.md"
    assert main(["leaderboard", str(tmp_path / "runs"), "-o", str(board), "--readme", str(readme)]) == 0
    text = readme.read_bytes().decode()
    head, tail = README.split(BEGIN)[0] + BEGIN + "\n", "\n" + END + README.split(END)[1]
    assert text.startswith(head) and text.endswith(tail)  # every byte outside the markers kept
    expected = readme_section(read_results(tmp_path / "runs" / "embedded"), "embedded", "board/README.md")
    assert section_of(text) == expected and "[full leaderboard](board/README.md)" in text
    assert board.is_file()
    # another run by name; the section is replaced, not appended
    assert main(["leaderboard", str(tmp_path / "runs"), "-o", str(board), "--readme", str(readme),
                 "--readme-run", "other"]) == 0
    text = readme.read_bytes().decode()
    assert text.count(BEGIN) == 1 and section_of(text).startswith(expected.splitlines()[0])
    assert "Run `other`" in text and "Run `embedded`" not in text


@pytest.mark.parametrize("content", ["# no markers\n", f"# one marker\n{BEGIN}\n", f"{END}\n{BEGIN}\n",
                                     f"{BEGIN}\n{BEGIN}\n{END}\n", f"inline {BEGIN} {END}\n"])
def test_the_command_refuses_a_readme_without_markers(tmp_path, capsys, content):
    write_json(tmp_path / "runs" / "embedded" / "results.json", two_cells(1.0))
    readme = tmp_path / "README.md"
    readme.write_text(content)
    board = tmp_path / "board.md"
    assert main(["leaderboard", str(tmp_path / "runs"), "-o", str(board), "--readme", str(readme)]) == 2
    assert "results:" in capsys.readouterr().err
    assert readme.read_text() == content and not board.exists()  # nothing written


def test_the_command_refuses_an_unknown_run_or_a_missing_readme(tmp_path, capsys):
    write_json(tmp_path / "runs" / "embedded" / "results.json", two_cells(1.0))
    readme = tmp_path / "README.md"
    readme.write_bytes(README.encode())
    board = tmp_path / "board.md"
    base = ["leaderboard", str(tmp_path / "runs"), "-o", str(board)]
    assert main(base + ["--readme", str(readme), "--readme-run", "nope"]) == 2
    assert "no run folder of that name" in capsys.readouterr().err
    assert main(base + ["--readme", str(tmp_path / "missing.md")]) == 2
    assert main(base + ["--readme-run", "embedded"]) == 2
    assert readme.read_bytes() == README.encode() and not board.exists()


def test_replace_section_keeps_everything_outside():
    assert replace_section(README, "new") == README.replace("old table", "new")
    assert section_of(replace_section(README, "a\nb")) == "a\nb"


# -- the verdicts follow the data ----------------------------------------------------------------------------

def _bullet(lines, start):
    return next(line for line in lines if line.startswith(start))


def test_a_constant_1_db_shift_is_significant_and_identical_cells_are_not():
    shifted = findings(two_cells(1.0))
    line = _bullet(shifted, "- HadaNorm against QuaRot")
    assert "+1.00 ± 0.00 dB at W4A4 (significant," in line and "not significant" not in line
    best = _bullet(shifted, "- W4A4: the best mean is `hadanorm`'s")
    assert "`hadanorm` − `quarot`: +1.00 ± 0.00 dB at W4A4 (significant," in best

    same = findings(two_cells(0.0))
    line = _bullet(same, "- HadaNorm against QuaRot")
    assert "+0.00 ± 0.00 dB at W4A4 (not significant, Holm-adjusted p 1)" in line
    table = headline_table(two_cells(0.0))
    assert sum("**" in row for row in table) == 2  # the two identical cells: both the best


def test_sections_appear_only_for_what_the_run_has():
    plain = findings(two_cells(1.0))
    assert not [line for line in plain if line.startswith("**")]  # no FP4, new methods, variants, metrics

    base = captions()
    cells = []
    def row(precision, offset, label, shift, **kw):
        values = [v + shift + offset + random.Random(i + len(label)).gauss(0, 0.3) for i, v in enumerate(base)]
        return cell(label, values, precision, extra={"psnr_db": [v / 2 + 20 for v in values]}, **kw)

    for at in (("w4a4", 0.0), ("mxfp4", 1.0), ("nvfp4", 1.5)):
        cells += [row(*at, "none", -2.0), row(*at, "quarot", 0.0), row(*at, "hadanorm", 0.5),
                  row(*at, "svdquant", 1.0),
                  row(*at, "hadanorm(random_signs=True)", 0.6, transform="hadanorm", params={"random_signs": True}),
                  row(*at, "quarot(weight_rounding=gptq)", 0.8, transform="quarot",
                      params={"weight_rounding": "gptq"})]
    document = doc(cells, ("w4a4", "mxfp4", "nvfp4"), validate=False)
    lines = findings(document)
    titles = [line for line in lines if line.startswith("**")]
    assert titles == ["**FP4 block formats**", "**Methods beyond the paper's six**", "**Random signs**",
                      "**GPTQ weight rounding**", "**Other metrics**"]
    text = "\n".join(lines)
    assert "MXFP4 − W4A4, transform by transform" in text and "NVFP4 − MXFP4, transform by transform" in text
    assert "`svdquant` − `hadanorm`:" in text  # against the best of the paper's six
    assert "`hadanorm(random_signs=True)` − `hadanorm`:" in text
    assert "`quarot(weight_rounding=gptq)` − `quarot`:" in text
    assert "PSNR (dB) against SQNR: at W4A4 Kendall's τ +1.00 over 6 transforms" in text
    section = readme_section(document)
    assert "| transform | W4A4 | rank | MXFP4 | rank | NVFP4 | rank |" in section


def test_kendall_tau():
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == 1
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1
    assert kendall_tau([1, 1], [1, 2]) is None and kendall_tau([1], [1]) is None


def test_a_failed_cell_and_a_missing_one_do_not_break_the_section():
    document = two_cells(1.0)
    broken = copy.deepcopy(document)
    broken["cells"]["w4a4/none"].update(status="failed", reason="boom", per_sample={})
    table = headline_table(broken)
    assert "| none | failed |  |" in table
    assert readme_section(broken)


def test_fine_tuning_is_paired_with_its_post_training_twin():
    from benchmark.reports.findings import fine_tuned_pairs

    base = captions()
    noise = [random.Random(i).gauss(0, 0.3) for i in range(32)]

    def run(gain, qat_steps=None):
        cells = []
        for precision, offset in (("w4a4", 0.0), ("w4a3", -6.0)):
            cells += [cell("none", [v + offset - 2 + gain + n for v, n in zip(base, noise, strict=True)], precision),
                      cell("quarot", [v + offset + gain for v in base], precision),
                      cell("hadanorm", [v + offset + gain + n for v, n in zip(base, noise, strict=True)], precision)]
        document = doc(cells, ("w4a4", "w4a3"))
        if qat_steps:
            document["config"]["qat_steps"] = qat_steps
        return document

    main_run, ptq, qat = two_cells(1.0), run(0.0), run(1.0, qat_steps=40)
    for index, c in enumerate(qat["cells"].values()):
        c["timings"] = {"qat_s": 10.0 + index, "generate_s": 4.0}
    qat["qat_teacher"] = {"seconds": 7.0}
    pairs, others = fine_tuned_pairs([("fp4", main_run), ("ptq", ptq), ("qat", qat)])
    assert [(a, c) for a, _, c, _ in pairs] == [("ptq", "qat")] and [n for n, _ in others] == ["fp4"]
    assert fine_tuned_pairs([("qat", qat)]) == ([], [("qat", qat)])  # no twin: an ordinary companion
    other = copy.deepcopy(ptq)
    other["config"]["grid"] = "min_anchored"  # not its twin: another configuration
    assert fine_tuned_pairs([("other", other), ("qat", qat)])[0] == []

    section = readme_section(main_run, companions=[("ptq", ptq), ("qat", qat)])
    lines = section.splitlines()
    assert "Run `qat` fine-tunes run `ptq`'s cells (40 steps) and is compared with it below." in section
    start = lines.index("**Quantization-aware fine-tuning**")
    bullets = [line for line in lines[start + 1:] if line.startswith("- ")][:5]
    assert bullets.pop(0) == ("- Fine-tuning (40 steps per cell, on denoiser calls drawn from the full-precision "
                              "generation of the calibration captions) added 12 s per cell on average on this run's "
                              "machine (generating a cell's captions took 4 s), and recording the teacher 7 s once.")
    assert bullets[0].startswith("- `qat` − `ptq` at W4A4, transform by transform (40 steps of fine-tuning; "
                                 "Holm over 3 transforms): `none` +1.00 ± 0.00 dB (better, p ")
    assert bullets[2].startswith("- `qat` − `ptq` at W4A3, transform by transform")
    # none is 2 dB below quarot before and after (significant); hadanorm and quarot differ by noise
    matter = bullets[1]
    assert matter.startswith("- Does the transform still matter after fine-tuning? At W4A4, 2 of these 3 "
                             "differences are significant after it (2 before)")
    assert "`hadanorm` − `none` +2.00 ± 0.00 dB at W4A4 (significant," in matter
    assert "`hadanorm` − `quarot`" in matter and "not significant" in matter


def test_the_leaderboard_says_a_runs_cells_were_fine_tuned(tmp_path):
    tuned = two_cells(1.0)
    tuned["config"]["qat_steps"] = 40
    write_json(tmp_path / "qat" / "results.json", tuned)
    write_json(tmp_path / "ptq" / "results.json", two_cells(1.0))
    text = render([tmp_path / "qat", tmp_path / "ptq"], tmp_path / "board.md")
    assert text.count("every cell fine-tuned for 40 steps before it generated") == 1  # the qat run's only
