"""The regression gate (``hadabench check RUN --baseline FILE``).

A baseline is a results file; runs compare only when their configuration hashes agree.
The gate picks its test from how the two runs were computed:

- **exact**: both ran on the CPU with pinned numerics (benchmark/quant/numerics.py), the same
  settings and the same torch: the rerun must reproduce the baseline bit for bit, so any drop
  beyond the baseline's ``tolerance`` table (SQNR 0.01 dB) is a regression. This catches a
  change far smaller than any 4-bit effect.
- **paired**: anything else (another CPU path, a GPU): the per-caption numbers differ by
  chance (a flipped rounding can move one caption by several dB), so each metric of each cell
  gets a one-sided paired bootstrap test over the same captions ("the run is lower"), with
  Holm's correction over all the cells and metrics tested, at family-wise 5%.

Higher is worse for no metric today; the registry (benchmark/metrics/registry.py) says which
way each one goes.
"""

from __future__ import annotations

import math

from tabulate import tabulate

from benchmark.errors import UserError
from benchmark.fileio import write_json
from benchmark.metrics.registry import default_tolerance, metric_specs
from benchmark.results.compare import cell_samples
from benchmark.results.schema import OK, metric_value, read_results
from benchmark.results.stats import BOOTSTRAP, paired_test
from benchmark.run.config import TransformSpec, hashed_differences

FAMILY_ALPHA = 0.05


def gate_mode(run: dict, baseline: dict) -> tuple[str, str]:
    """("exact" or "paired", why)."""
    def numerics(doc):
        env = doc.get("environment") or {}
        return env.get("numerics") or {}, env.get("device"), env.get("torch")

    (ours, device, torch), (theirs, base_device, base_torch) = numerics(run), numerics(baseline)
    if ours.get("mode") != "pinned" or theirs.get("mode") != "pinned":
        return "paired", "numerics not pinned in both runs"
    if device != "cpu" or base_device != "cpu":
        return "paired", "a run on a GPU (GPU numerics are not pinned)"
    if torch != base_torch:
        return "paired", f"torch {torch} against {base_torch}"
    if ours != theirs:
        differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        return "paired", f"pinned numerics differ in {', '.join(differ)}"
    return "exact", "both runs pinned, same settings and torch: bit-for-bit reproduction expected"


def compare(run: dict, baseline: dict) -> tuple[list[str], str]:
    """(regressions, readable table of every compared number, with the test used)."""
    if run["config_hash"] != baseline["config_hash"]:
        differ = hashed_differences(run["config"], baseline["config"])
        why = (f"hashed keys that differ: {', '.join(differ)}" if differ else
               "no hashed key differs: the files were written by versions of hadabench whose hashes cover "
               "different keys")
        raise UserError(f"configuration hash {run['config_hash']} differs from the baseline's "
                         f"{baseline['config_hash']} ({why}): the numbers are not comparable")
    tolerance = baseline.get("tolerance")
    if not isinstance(tolerance, dict) or not tolerance:
        raise UserError("the baseline states no tolerance table (write it with --write-baseline)")
    for metric, tol in tolerance.items():  # numbers already (read_results); here: their range
        if not (math.isfinite(tol) and tol >= 0):
            raise UserError(f"the baseline's tolerance for {metric} is {tol}: it must be a finite number >= 0")
    if not baseline["cells"]:
        raise UserError("the baseline has no cells: there is nothing to compare against")
    mode, why = gate_mode(run, baseline)
    regressions, rows, tests = [], [], []
    ran = {TransformSpec.from_json(t).label for t in run["config"]["transforms"]}
    for key, base_cell in baseline["cells"].items():
        cell = run["cells"].get(key)
        if cell is None and base_cell["label"] not in ran:  # e.g. a plugin row added to the baseline
            rows.append([key, "-", base_cell["status"], "not in this run's transforms", "", "", "not compared"])
            continue
        if cell is None or cell["status"] != OK:
            if base_cell["status"] == OK:
                why_failed = "missing from the run" if cell is None else f"failed: {cell.get('reason')}"
                regressions.append(f"{key}: {why_failed}")
                rows.append([key, "-", "ok", why_failed, "", "", "REGRESSION"])
            continue
        for metric in tolerance:
            spec = metric_specs().get(metric)
            old = metric_value(base_cell["metrics"].get(metric))
            new = metric_value(cell["metrics"].get(metric))
            if spec is None or old is None:
                continue
            if new is None:
                regressions.append(f"{key} {metric}: {old} -> not computed")
                rows.append([key, metric, _show(old), "n/a", "", "", "REGRESSION"])
                continue
            sign = 1 if spec.higher_is_better else -1
            change = "0" if old == new else f"{new - old:+.4f}"
            if mode == "exact":
                if math.isinf(old) and old == new:
                    drop = 0.0
                else:
                    drop = sign * (old - new)
                limit = tolerance[metric]
                verdict = "REGRESSION" if drop > limit else "ok"
                rows.append([key, metric, _show(old), _show(new), change, f"drop <= {limit}", verdict])
                if verdict != "ok":
                    regressions.append(f"{key} {metric}: {old} -> {new} (tolerance {limit})")
                continue
            ours, theirs = cell_samples(cell, metric), cell_samples(base_cell, metric)
            # an aggregate without per-caption values (pooled SQNR) cannot be tested across machines
            if ours is None or theirs is None or len(ours) != len(theirs):
                rows.append([key, metric, _show(old), _show(new), change, "no per-caption values", "untested"])
                continue
            test = paired_test(ours, theirs)
            lower = sign * test.difference.mean < 0
            p_lower = test.p_value / 2 if lower else 1 - test.p_value / 2  # one-sided: the run is worse
            tests.append((p_lower, len(rows), f"{key} {metric}: {old} -> {new}"))
            rows.append([key, metric, _show(old), _show(new), change, f"p = {p_lower:.4f}", "ok"])
    for rank, (p, row, text) in enumerate(sorted(tests)):  # Holm: step down while rejected
        threshold = FAMILY_ALPHA / (len(tests) - rank)
        if p >= threshold:
            break
        rows[row][6] = "REGRESSION"
        regressions.append(f"{text} (paired bootstrap, Holm-adjusted p < {FAMILY_ALPHA})")
    test_line = ("test: exact (drop beyond the tolerance)" if mode == "exact" else
                 f"test: one-sided paired bootstrap over captions ({BOOTSTRAP['resamples']} resamples, "
                 f"seed {BOOTSTRAP['seed']}), Holm's correction over {len(tests)} tests at {FAMILY_ALPHA}")
    table = tabulate(rows, headers=["cell", "metric", "baseline", "run", "change", "criterion", ""],
                     tablefmt="github")
    return regressions, f"gate: {mode} ({why})\n{test_line}\n\n{table}"


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
    run["tolerance"] = tolerance or default_tolerance()
    write_json(baseline_path, run)
