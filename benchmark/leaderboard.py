"""Markdown leaderboard from result files (``hadabench leaderboard``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tabulate import tabulate

from .results import OK, metric_value

# Columns: (key in a cell's metrics, header, format). Higher is better for all three.
COLUMNS = [("sqnr_db", "SQNR (dB)", "{:.2f}"), ("clip_score", "CLIP score", "{:.2f}"),
           ("clip_iqa", "CLIP-IQA", "{:.3f}")]

# The paper's Table 1 (W4A4) and appendix table (W6A6), PixArt-Sigma, 20 steps.
PAPER = {
    "fp": {"Original": (None, 31.66, 0.90)},
    "w4a4": {"none": (-2.88, 19.22, 0.11), "smoothquant": (-2.03, 18.79, 0.12),
             "quarot": (-0.39, 30.88, 0.76), "sdcb": (0.01, 31.17, 0.84),
             "dyncenter": (-2.32, 19.68, 0.14), "hadanorm": (0.92, 31.69, 0.86)},
    "w6a6": {"none": (0.5, 32.39, 0.92), "smoothquant": (1.46, 31.95, 0.91),
             "quarot": (2.32, 31.85, 0.91), "sdcb": (2.61, 31.81, 0.91),
             "dyncenter": (1.56, 31.87, 0.91), "hadanorm": (3.05, 31.82, 0.91)},
}


def is_pixart_sigma(model: str) -> bool:
    return "pixart-sigma" in model.lower()


def _fmt(value, spec) -> str:
    if value is None:
        return "n/a"
    if value in (float("inf"), float("-inf")):
        return "∞" if value > 0 else "-∞"
    return spec.format(value)


def _table(results: dict, precision: str, link_base: Path) -> list[str]:
    cells = [c for c in results["cells"].values() if c["precision"] == precision]
    paper = PAPER.get(precision, {}) if is_pixart_sigma(results["config"]["model"]) else {}
    reference = results.get("reference", {}).get("metrics", {})
    rows = [["Original (full precision)", "–"] + [_fmt(metric_value(reference.get(k)), f)
                                                  for k, _, f in COLUMNS[1:]]]
    values = []
    for cell in cells:
        if cell["status"] != OK:
            rows.append([cell["label"], f"failed: {cell.get('reason') or '?'}", "", ""])
            values.append([None] * len(COLUMNS))
            continue
        vals = [metric_value(cell["metrics"].get(k)) for k, _, _ in COLUMNS]
        values.append(vals)
        rows.append([cell["label"]] + [_fmt(v, f) for v, (_, _, f) in zip(vals, COLUMNS)])
    for col in range(len(COLUMNS)):  # the best quantized row of each column in bold
        present = [v[col] for v in values if v[col] is not None]
        if present:
            best = max(present)
            for row, vals in zip(rows[1:], values):
                if vals[col] == best:
                    row[col + 1] = f"**{row[col + 1]}**"
    headers = ["transform"] + [h for _, h, _ in COLUMNS]
    if paper:
        headers += [f"paper {h}" for _, h, _ in COLUMNS]
        original = PAPER["fp"]["Original"]
        rows[0] += [_fmt(v, f) for v, (_, _, f) in zip(original, COLUMNS)]
        for row, cell in zip(rows[1:], cells):
            numbers = paper.get(cell["label"], (None,) * 3)
            row += [_fmt(v, f) for v, (_, _, f) in zip(numbers, COLUMNS)]
    lines = [tabulate(rows, headers=headers, tablefmt="github"), ""]
    grid = results.get("grids", {}).get(precision)
    if grid:
        target = Path(results["_dir"]) / grid
        lines += [f"![{precision} grid: one row per caption, full precision first]"
                  f"({os.path.relpath(target, link_base).replace(os.sep, '/')})", ""]
    return lines


def find_results(paths: list[str | Path]) -> list[Path]:
    """results.json files, run folders, and folders holding run folders, in a stable order."""
    found = []
    for path in map(Path, paths):
        if path.is_dir() and not (path / "results.json").exists():
            runs = sorted(path.glob("*/results.json"))
            if not runs:
                raise ValueError(f"{path}: no results.json in it or in its sub-folders")
            found += runs
        else:
            found.append(path)
    return found


def render(result_files: list[str | Path], output: str | Path) -> str:
    from .results import read_results

    link_base = Path(output).resolve().parent
    lines = ["# hadabench leaderboard", "",
             "Each table: one model at one precision, generations from the same captions and "
             "seeds as its full-precision run. SQNR: of the final latents against the "
             "full-precision run, mean of per-sample dB. CLIP score: 100 · max(cos(image, "
             "caption), 0). n/a: not computed (the reason is below the table). Best quantized "
             "value of each column in bold.", ""]
    for path in result_files:
        results = read_results(path)
        results["_dir"] = str(Path(path).resolve() if Path(path).is_dir() else Path(path).resolve().parent)
        if "study" in results:  # a study (hadabench sensitivity) writes its own page: link it
            page = os.path.relpath(Path(results["_dir"]) / "README.md", link_base)
            lines += [f"Study: [{results['study'].get('kind')}, {results['config']['model']}]({page})", ""]
            continue
        config = results["config"]
        captions = results.get("captions", {})
        for precision in config["precisions"]:
            lines += [f"## {config['model']} · {precision}", "",
                      f"{len(captions.get('evaluation', {}).get('ids', []))} {config['captions']} "
                      f"captions, {config['steps']} steps, seed {config['seed']}.", ""]
            lines += _table(results, precision, link_base)
        setup = results.get("metric_setup", {})
        reasons = {name: entry.get("reason") for name, entry in setup.items()
                   if entry.get("status") != "computed"}
        reasons.update({name: "not requested in this run (--metrics)" for name in ("clip_score", "clip_iqa")
                        if name not in setup})
        for name, reason in reasons.items():
            lines += [f"- **{name}** not computed: {reason}"]
        if reasons:
            lines.append("")
        lines += ["<details><summary>Configuration and captions</summary>", "",
                  f"Configuration hash `{results['config_hash']}`; hadabench "
                  f"{results['environment'].get('hadabench')}, commit "
                  f"{results['environment'].get('git_commit') or 'unknown'}, device "
                  f"{results['environment'].get('device')}.", "",
                  "```json", json.dumps({"config": config, "captions": results.get("captions"),
                                         "metric_setup": results.get("metric_setup")}, indent=1),
                  "```", "", "</details>", ""]
    return "\n".join(lines)
