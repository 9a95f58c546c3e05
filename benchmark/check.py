"""The regression gate (``hadabench check RUN --baseline FILE``).

A baseline is a results file with a ``tolerance`` table: for each metric, how far below the
baseline a run may fall before it counts as a regression (all metrics: higher is better).
Runs compare only when their configuration hashes agree.
"""

from __future__ import annotations

import math

from tabulate import tabulate

from .config import TransformSpec, hashed_differences
from .results import OK, metric_value, read_results, write_json

# SQNR at W4A4 wanders with the rounding of the floating-point kernels (4-bit rounding flips
# add up over 20 steps): the same run under three CPU instruction sets (ATEN_CPU_CAPABILITY
# default, avx2, avx512) differed by up to 0.32 dB, and two runs on one machine once by 0.45 dB.
# A broken transform costs several dB.
DEFAULT_TOLERANCE = {"sqnr_db": 1.0, "clip_score": 0.25, "clip_iqa": 0.01}



def compare(run: dict, baseline: dict) -> tuple[list[str], str]:
    """(regressions, readable table of every compared number)."""
    if run["config_hash"] != baseline["config_hash"]:
        differ = hashed_differences(run["config"], baseline["config"])
        why = (f"hashed keys that differ: {', '.join(differ)}" if differ else
               "no hashed key differs: the files were written by versions of hadabench whose hashes cover different keys")
        raise ValueError(f"configuration hash {run['config_hash']} differs from the baseline's "
                         f"{baseline['config_hash']} ({why}): the numbers are not comparable")
    tolerance = baseline.get("tolerance")
    if not isinstance(tolerance, dict) or not tolerance:
        raise ValueError("the baseline states no tolerance table (write it with --write-baseline)")
    regressions, rows = [], []
    ran = {TransformSpec.from_json(t).label for t in run["config"]["transforms"]}
    for key, base_cell in baseline["cells"].items():
        cell = run["cells"].get(key)
        if cell is None and base_cell["label"] not in ran:  # e.g. a plugin row added to the baseline
            rows.append([key, "-", base_cell["status"], "not in this run's transforms", "", "", "not compared"])
            continue
        if cell is None or cell["status"] != OK:
            if base_cell["status"] == OK:
                why = "missing from the run" if cell is None else f"failed: {cell.get('reason')}"
                regressions.append(f"{key}: {why}")
                rows.append([key, "-", "ok", why, "", "", "REGRESSION"])
            continue
        for metric, tol in tolerance.items():
            old = metric_value(base_cell["metrics"].get(metric))
            new = metric_value(cell["metrics"].get(metric))
            if old is None:
                continue
            if new is None:
                verdict, change = "REGRESSION", "not computed"
            elif math.isinf(old) and math.isinf(new) and old == new:
                verdict, change = "ok", "0"
            else:
                delta = new - old
                verdict = "REGRESSION" if delta < -tol else "ok"
                change = f"{delta:+.4f}"
            if verdict != "ok":
                regressions.append(f"{key} {metric}: {old} -> {new} (tolerance {tol})")
            rows.append([key, metric, _show(old), _show(new), change, tol, verdict])
    table = tabulate(rows, headers=["cell", "metric", "baseline", "run", "change", "tolerance", ""],
                     tablefmt="github")
    return regressions, table


def _show(value) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def check(run_path: str, baseline_path: str) -> int:
    regressions, table = compare(read_results(run_path), read_results(baseline_path))
    print(table)
    if regressions:
        print(f"\n{len(regressions)} regression(s):")
        for line in regressions:
            print(f"  {line}")
        return 1
    print("\nno regression")
    return 0


def write_baseline(run_path: str, baseline_path: str, tolerance: dict | None = None) -> None:
    """Make ``run_path`` the baseline, keeping the tolerance an existing baseline states."""
    run = read_results(run_path)
    if tolerance is None:
        try:
            tolerance = read_results(baseline_path).get("tolerance")
        except ValueError:
            tolerance = None
    run["tolerance"] = tolerance or dict(DEFAULT_TOLERANCE)
    write_json(baseline_path, run)
