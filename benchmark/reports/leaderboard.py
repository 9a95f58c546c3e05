"""Markdown leaderboard from result files (``hadabench leaderboard``).

One section per model, one table per run and precision. A number is the mean over the
evaluation captions with the half-width of its 95% bootstrap interval; bold marks every
transform not significantly worse than the best of its column (paired bootstrap over the
same captions); "rank" counts the transforms significantly better on the first column, plus
one. Below each table, the matrix of paired differences behind those verdicts.
"""

from __future__ import annotations

import os
from pathlib import Path

from tabulate import tabulate

from benchmark.errors import UserError
from benchmark.metrics.registry import leaderboard_metrics
from benchmark.reports import markdown as md
from benchmark.results.compare import cell_samples, pairwise, rank_cells
from benchmark.results.schema import OK, metric_value, read_results
from benchmark.results.stats import BOOTSTRAP, recorded_half_width

# The paper's Table 1 (W4A4) and appendix table (W6A6), PixArt-Sigma, 20 steps
# (SQNR dB, CLIP score, CLIP-IQA).
PAPER = {
    "fp": {"Original": (None, 31.66, 0.90)},
    "w4a4": {"none": (-2.88, 19.22, 0.11), "smoothquant": (-2.03, 18.79, 0.12),
             "quarot": (-0.39, 30.88, 0.76), "sdcb": (0.01, 31.17, 0.84),
             "dyncenter": (-2.32, 19.68, 0.14), "hadanorm": (0.92, 31.69, 0.86)},
    "w6a6": {"none": (0.5, 32.39, 0.92), "smoothquant": (1.46, 31.95, 0.91),
             "quarot": (2.32, 31.85, 0.91), "sdcb": (2.61, 31.81, 0.91),
             "dyncenter": (1.56, 31.87, 0.91), "hadanorm": (3.05, 31.82, 0.91)},
}
_PAPER_KEYS = ("sqnr_db", "clip_score", "clip_iqa")


def is_pixart_sigma(model: str) -> bool:
    return "pixart-sigma" in model.lower()


def _with_interval(spec, value, interval) -> str:
    text = spec.show(value)
    return f"{text} ± {spec.fmt.format(interval.half_width)}" if interval is not None else text


def _reference_row(results: dict, specs) -> list[str]:
    metrics = results.get("reference", {}).get("metrics", {})
    row = ["Original (full precision)", ""]
    for spec in specs:
        entry = metrics.get(spec.key)
        if spec.key.startswith("sqnr"):
            row.append("–")
            continue
        value, half = metric_value(entry), recorded_half_width(entry)
        row.append(spec.show(value) + (f" ± {spec.fmt.format(half)}" if half is not None else ""))
    return row


def _label(cell: dict) -> str:
    """The row's name; a transform run with --allow-inexact is marked as not exact."""
    exactness = cell.get("exactness") or {}
    if exactness.get("exact", True):
        return md.cell(cell["label"])
    error = exactness.get("worst_relative_error")
    shown = f"{error:.1e}" if isinstance(error, (int, float)) else str(error)  # "nan" in JSON
    return md.cell(f"{cell['label']} (NOT EXACT at fp: relative error {shown})")


def _table(results: dict, precision: str, link_base: Path) -> list[str]:
    specs = leaderboard_metrics()
    cells = [c for c in results["cells"].values() if c.get("precision") == precision]
    ranked = {spec.key: rank_cells(cells, spec) for spec in specs}
    rows = [_reference_row(results, specs)]
    for index, cell in enumerate(cells):
        if cell.get("status") != OK:
            rows.append([md.cell(cell["label"]), "", md.cell(f"failed: {cell.get('reason') or '?'}")]
                        + [""] * (len(specs) - 1))
            continue
        first = ranked[specs[0].key][index]
        row = [_label(cell), first.rank if first.rank is not None else ""]
        for spec in specs:
            entry = ranked[spec.key][index]
            text = _with_interval(spec, metric_value(cell["metrics"].get(spec.key)), entry.interval)
            row.append(f"**{text}**" if entry.tied_with_best else text)
        rows.append(row)
    headers = ["transform", "rank"] + [spec.header for spec in specs]
    paper = PAPER.get(precision, {}) if is_pixart_sigma(results["config"]["model"]) else {}
    if paper:
        headers += [f"paper {spec.header}" for spec in specs if spec.key in _PAPER_KEYS]
        for row, label in zip(rows, ["Original"] + [c["label"] for c in cells], strict=False):
            numbers = (PAPER["fp"] if label == "Original" else paper).get(label, (None,) * 3)
            row += [spec.show(v) for spec, v in zip(specs, numbers, strict=False)]
    lines = [tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True), ""]
    lines += _matrix(cells, specs[0])
    grid = results.get("grids", {}).get(precision)
    if grid:  # linked only when it is a file inside the run folder
        lines += [md.link(f"{precision} grid: one row per caption, full precision first", grid,
                          results["_dir"], link_base, image=True), ""]
    return lines


def _matrix(cells: list[dict], spec) -> list[str]:
    """Row minus column, mean paired difference; * where the paired bootstrap says significant."""

    usable = [(c["label"], cell_samples(c, spec.key)) for c in cells]
    usable = [(label, s) for label, s in usable if s is not None]
    if len(usable) < 2:
        return []
    tests = pairwise([s for _, s in usable])
    def entry(i, j):
        return "" if i == j else f"{tests[i, j].difference.mean:+.2f}{'*' if tests[i, j].significant else ''}"

    rows = [[md.cell(label)] + [entry(i, j) for j in range(len(usable))] for i, (label, _) in enumerate(usable)]
    return ["<details><summary>Paired differences, " + spec.header + " (row − column; * significant at "
            f"p < {1 - BOOTSTRAP['level']:.2f})</summary>", "",
            tabulate(rows, headers=["row − column"] + [md.cell(label) for label, _ in usable], tablefmt="github",
                     disable_numparse=True),
            "", "</details>", ""]


def find_results(paths: list[str | Path]) -> list[Path]:
    """results.json files, run folders, and folders holding run folders, in a stable order."""
    found = []
    for path in map(Path, paths):
        if path.is_dir() and not (path / "results.json").exists():
            runs = sorted(path.glob("*/results.json"))
            if not runs:
                raise UserError(f"{path}: no results.json in it or in its sub-folders")
            found += runs
        else:
            found.append(path)
    return found


def _run_name(path: Path, link_base: Path) -> str:
    folder = path if path.is_dir() else path.parent
    return os.path.relpath(folder.resolve(), link_base).replace(os.sep, "/")


def render(result_files: list[str | Path], output: str | Path) -> str:

    link_base = Path(output).resolve().parent
    runs = []
    for path in map(Path, result_files):
        results = read_results(path)
        results["_dir"] = str(path.resolve() if path.is_dir() else path.resolve().parent)
        runs.append((_run_name(path, link_base), results))
    lines = ["# hadabench leaderboard", "",
             "One section per model, one table per run and precision; every cell of a table was "
             "generated from the same captions and seeds as its full-precision run. A number is "
             f"the mean over the evaluation captions ± the half-width of its {BOOTSTRAP['level']:.0%} "
             f"{BOOTSTRAP['method']} ({BOOTSTRAP['resamples']} resamples, seed {BOOTSTRAP['seed']}). "
             "**Bold**: not significantly worse than the best of its column (paired bootstrap over "
             "the same captions). Rank: 1 + the number of transforms significantly better in SQNR. "
             "SQNR: of the final latents against the full-precision run, mean of per-sample dB. "
             "CLIP score: 100 · max(cos(image, caption), 0). n/a: not computed (the reason is "
             "below the table).", ""]
    for model in dict.fromkeys(r["config"]["model"] for _, r in runs):
        lines += [f"## {md.text(model)}", ""]
        for name, results in (run for run in runs if run[1]["config"]["model"] == model):
            if "study" in results:  # a study (hadabench sensitivity) writes its own page: link it
                label = f"{results['study'].get('kind')} study, run {name}"
                lines += [md.link(label, "README.md", results["_dir"], link_base), ""]
            else:
                lines += _run_sections(name, results, link_base)
    return "\n".join(lines)


def _run_sections(name: str, results: dict, link_base: Path) -> list[str]:
    config = results["config"]
    captions = results.get("captions", {})
    numerics = results.get("environment", {}).get("numerics") or {}
    lines = []
    for precision in config["precisions"]:
        lines += [f"### {md.text(precision)} · run {md.code(name)}", "",
                  f"{len(captions.get('evaluation', {}).get('ids', []))} {md.text(config['captions'])} captions, "
                  f"{config['steps']} steps, seed {config['seed']}, "
                  f"numerics {md.text(numerics.get('mode', 'native'))}.", ""]
        lines += _table(results, precision, link_base)
    setup = results.get("metric_setup", {})
    reasons = {name: entry.get("reason") for name, entry in setup.items() if entry.get("status") != "computed"}
    reasons.update({name: "not requested in this run (--metrics)" for name in ("clip_score", "clip_iqa")
                    if name not in setup})
    lines += [f"- **{md.text(metric)}** not computed: {md.text(reason)}" for metric, reason in reasons.items()]
    if reasons:
        lines.append("")
    environment = results.get("environment", {})
    lines += ["<details><summary>Configuration and captions</summary>", "",
              f"Configuration hash {md.code(results['config_hash'])}; hadabench "
              f"{md.text(environment.get('hadabench'))}, commit "
              f"{md.text(environment.get('git_commit') or 'unknown')}, device "
              f"{md.text(environment.get('device'))}.", "",
              *md.json_block({"config": config, "captions": results.get("captions"),
                              "metric_setup": results.get("metric_setup"), "numerics": numerics}),
              "", "</details>", ""]
    return lines
