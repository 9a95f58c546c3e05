"""Markdown leaderboard from result files (``hadabench leaderboard``).

One section per model, one table per run and precision. A number is the mean over the
evaluation captions with the half-width of its 95% bootstrap-t interval (symmetric); bold marks
every transform not significantly worse than the best of its column; "rank" counts the
transforms significantly better on the first column, plus one. Both verdicts come from two-sided
sign-flip tests over the same captions with Holm's correction over all the pairs of the table
(benchmark/results/compare.py). Below each table, the matrix of paired differences behind
them; a table of fewer than 10 captions says that it is too small for a claim.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from tabulate import tabulate

from benchmark.errors import UserError
from benchmark.metrics.registry import leaderboard_metrics
from benchmark.reports import markdown as md
from benchmark.results.compare import cell_samples, pairwise, rank_cells
from benchmark.results.schema import OK, metric_value, read_results
from benchmark.results.stats import (
    ALPHA,
    describe_binary_interval,
    describe_interval,
    describe_test,
    recorded_spread,
    small_sample_note,
)

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
    """"mean ± half-width"; "mean [low, high]" for the asymmetric interval of a 0/1 metric (Wilson's,
    or Newcombe's for a paired difference)."""
    text = spec.show(value)
    if interval is None:
        return text
    if not interval.symmetric:
        return f"{text} [{spec.fmt.format(interval.low)}, {spec.fmt.format(interval.high)}]"
    if not math.isfinite(interval.half_width):  # fewer than 4 captions: the bootstrap-t is unbounded
        return f"{text} ± ∞"
    return f"{text} ± {spec.fmt.format(interval.half_width)}"


def _reference_row(results: dict, specs) -> list[str]:
    metrics = results.get("reference", {}).get("metrics", {})
    row = ["Original (full precision)", ""]
    for spec in specs:
        entry = metrics.get(spec.key)
        if entry is None:  # a metric against the full-precision run (SQNR, PSNR, SSIM)
            row.append("–")
            continue
        row.append(spec.show(metric_value(entry)) + recorded_spread(entry, spec.fmt))
    return row


def _label(cell: dict) -> str:
    """The row's name; a transform run with --allow-inexact is marked as not exact."""
    exactness = cell.get("exactness") or {}
    if exactness.get("exact", True):
        return md.cell(cell["label"])
    error = exactness.get("worst_relative_error")
    shown = f"{error:.1e}" if isinstance(error, (int, float)) else str(error)  # "nan" in JSON
    return md.cell(f"{cell['label']} (NOT EXACT at fp: relative error {shown})")


def computed_specs(results: dict, cells: list[dict]) -> list:
    """The leaderboard metrics with a value in a cell or in the full-precision row: one column each."""
    rows = [c.get("metrics", {}) for c in cells] + [results.get("reference", {}).get("metrics", {})]
    return [spec for spec in leaderboard_metrics() if any(metric_value(r.get(spec.key)) is not None for r in rows)]


def _table(results: dict, precision: str, link_base: Path) -> list[str]:
    cells = [c for c in results["cells"].values() if c.get("precision") == precision]
    specs = computed_specs(results, cells)
    if not specs:
        return ["No metric was computed for this precision.", ""]
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
            # a set-level number (FID) has no per-caption values: no interval, no test, so no bold
            row.append(f"**{text}**" if entry.tied_with_best and spec.per_sample else text)
        rows.append(row)
    headers = ["transform", "rank"] + [md.cell(spec.header + ("" if spec.per_sample else " (set-level)"))
                                       for spec in specs]  # a plugin metric's: untrusted
    paper = PAPER.get(precision, {}) if is_pixart_sigma(results["config"]["model"]) else {}
    if paper:
        shown = [spec for spec in leaderboard_metrics() if spec.key in _PAPER_KEYS]
        headers += [f"paper {md.cell(spec.header)}" for spec in shown]
        for row, label in zip(rows, ["Original"] + [c["label"] for c in cells], strict=True):
            numbers = dict(zip(_PAPER_KEYS, (PAPER["fp"] if label == "Original" else paper).get(label, (None,) * 3),
                               strict=True))
            row += [spec.show(numbers[spec.key]) for spec in shown]
    lines = [tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True), ""]
    lines += _matrix(cells, specs[0], ranked[specs[0].key])
    grid = results.get("grids", {}).get(precision)
    if grid:  # linked only when it is a file inside the run folder
        lines += [md.link(f"{precision} grid: one row per caption, full precision first", grid,
                          results["_dir"], link_base, image=True), ""]
    return lines


def _matrix(cells: list[dict], spec, ranked) -> list[str]:
    """Row minus column, mean paired difference; * where the sign-flip test is significant after
    Holm's correction over all the pairs (the family the ranks and bold come from)."""

    # the cells rank_cells scored (per-caption values, at least two), in the same family
    usable = [(c["label"], cell_samples(c, spec.key)) for c, entry in zip(cells, ranked, strict=True)
              if entry.interval is not None]
    if len(usable) < 2:
        return []
    tests = pairwise([s for _, s in usable])
    def entry(i, j):
        return "" if i == j else f"{tests[i, j].difference:+.2f}{'*' if tests[i, j].significant else ''}"

    rows = [[md.cell(label)] + [entry(i, j) for j in range(len(usable))] for i, (label, _) in enumerate(usable)]
    family = len(usable) * (len(usable) - 1) // 2
    return ["<details><summary>Paired differences, " + md.text(spec.header) + " (row − column; * significant: "
            f"{describe_test(family)})</summary>", "",
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
             f"the mean over the evaluation captions ± the half-width of its {describe_interval()}; "
             "for a metric whose per-caption values are all 0 or 1 (caption accuracy), the mean with its "
             f"{describe_binary_interval()}. "
             "**Bold**: not significantly worse than the best of its column. Rank: 1 + the number of "
             "transforms significantly better in SQNR. Significance: a "
             f"{describe_test()}, with Holm's correction over all the pairs of transforms of the table "
             f"(one family per table and column) at family-wise {ALPHA:g}. "
             "SQNR: of the final latents against the full-precision run, mean of per-sample dB. "
             "CLIP score: 100 · max(cos(image, caption), 0). PSNR, SSIM and LPIPS: of the 8-bit images against "
             "the full-precision run's. FID is set-level (one number per set of images, marked so): no "
             "interval, no test, never bold. One column per metric computed; the metrics not computed are "
             "listed under each run's tables with the reason.", ""]
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
                  f"numerics {md.text(numerics.get('mode', 'native'))}"
                  + (f", every cell fine-tuned for {int(config['qat_steps'])} steps before it generated "
                     "(quantization-aware fine-tuning)" if config.get("qat_steps") else "") + ".", ""]
        note = small_sample_note(len(captions.get("evaluation", {}).get("ids", [])))
        if note:
            lines += [f"**Small sample**: {md.text(note)}; the intervals, ranks and bold below are no claim.", ""]
        lines += _table(results, precision, link_base)
    setup = results.get("metric_setup", {})
    reasons = {name: entry.get("reason") for name, entry in setup.items() if entry.get("status") != "computed"}
    reasons.update({key: why for entry in setup.values() if entry.get("status") == "computed"
                    for key, why in (entry.get("not_computed") or {}).items()})  # one key of a computed metric
    reasons.update({spec.computed_by: "not requested in this run (--metrics)" for spec in leaderboard_metrics()
                    if spec.computed_by not in setup})
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
