"""The regression gate (``hadabench check RUN --baseline FILE``).

A baseline is a results file; runs compare only when their configuration hashes agree.
The gate picks its test from how the two runs were computed:

- **exact**: both ran on the CPU with pinned numerics (benchmark/quant/numerics.py), the same
  settings and the same torch: the rerun must reproduce the baseline bit for bit, so any drop
  beyond the baseline's ``tolerance`` table (SQNR 0.01 dB) is a regression. This catches a
  change far smaller than any 4-bit effect.
- **paired**: anything else (another CPU path, a GPU): the per-caption numbers differ by
  chance (a flipped rounding can move one caption by several dB), so each metric of each cell
  gets a one-sided sign-flip test over the same captions ("the run is lower"; exact up to 32
  captions, else Monte Carlo with ``draws_for(0.05 / tests)`` sign patterns), with Holm's
  correction over all the cells and metrics tested, at family-wise 5%. The gate refuses to run
  (``UserError``) when its captions are too few for any test to reach Holm's first threshold,
  0.05 / tests: with n captions no one-sided p-value is below 1 / 2**n, so such a gate could
  never fail.

Higher is worse for no metric today; the registry (benchmark/metrics/registry.py) says which
way each one goes.
"""

from __future__ import annotations

import math

from tabulate import tabulate

from benchmark.errors import UserError
from benchmark.fileio import check_output_path, write_json
from benchmark.metrics.registry import default_tolerance, metric_specs
from benchmark.reports import markdown as md
from benchmark.results.compare import cell_samples
from benchmark.results.schema import OK, metric_value, read_results
from benchmark.results.stats import ALPHA, describe_test, holm_adjusted, min_p, sign_flip_test, small_sample_note
from benchmark.run.config import TransformSpec, hashed_differences

FAMILY_ALPHA = ALPHA


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
    regressions, rows, pending = [], [], []
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
            # one-sided: the run is worse ("less" on the differences oriented so that higher is better)
            oriented = [sign * (x - y) for x, y in zip(ours, theirs, strict=True)]
            pending.append((oriented, len(rows), f"{key} {metric}: {old} -> {new}"))
            rows.append([key, metric, _show(old), _show(new), change, "", "ok"])
    note = None
    if pending:
        regressions += _paired(pending, rows)
        note = small_sample_note(min(len(oriented) for oriented, _, _ in pending))
    test_line = ("test: exact (drop beyond the tolerance)" if mode == "exact" else
                 f"test: {describe_test(len(pending), one_sided=True, alpha=FAMILY_ALPHA)}; "
                 "criterion: p, Holm-adjusted p")
    if note:
        test_line += f"\nsmall sample: {note}"
    # the cell names and failure reasons come from results files: escaped, the table is markdown
    rows = [[md.cell(row[0]), row[1], row[2], md.cell(row[3]) if row[3] and row[1] == "-" else row[3], *row[4:]]
            for row in rows]
    table = tabulate(rows, headers=["cell", "metric", "baseline", "run", "change", "criterion", ""],
                     tablefmt="github", disable_numparse=True)
    return regressions, f"gate: {mode} ({why})\n{test_line}\n\n{table}"


def _paired(pending: list[tuple[list[float], int, str]], rows: list[list]) -> list[str]:
    """The paired mode's tests, Holm over all of them: (oriented differences, row, text) each;
    fills the rows' criterion and verdict, returns the regressions. Refuses a family that no
    test could ever reject."""
    tests = len(pending)
    threshold = FAMILY_ALPHA / tests  # Holm's first (smallest) threshold
    captions = min(len(oriented) for oriented, _, _ in pending)
    floor = min_p(captions, one_sided=True, tests=tests, alpha=FAMILY_ALPHA)
    if floor > threshold:
        needed = math.ceil(math.log2(tests / FAMILY_ALPHA))
        raise UserError(f"the paired gate cannot flag anything: with {captions} captions the smallest one-sided "
                         f"sign-flip p-value is 1/2**{captions} = {floor:.3g}, above Holm's first threshold "
                         f"{FAMILY_ALPHA:g}/{tests} = {threshold:.3g} for its {tests} tests; score at least "
                         f"{needed} captions, or compare two runs with pinned numerics (the exact gate)")
    results = [sign_flip_test(oriented, "less", min_alpha=threshold).p for oriented, _, _ in pending]
    regressions = []
    for (_, row, text), p, q in zip(pending, results, holm_adjusted(results), strict=True):
        rows[row][5] = f"p = {p:.3g}, Holm {q:.3g}"
        if q <= FAMILY_ALPHA:
            rows[row][6] = "REGRESSION"
            regressions.append(f"{text} (one-sided sign-flip, Holm-adjusted p = {q:.3g} <= {FAMILY_ALPHA:g})")
    return regressions


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
    """Make ``run_path`` the baseline, keeping the tolerance an existing baseline states. A
    baseline path that is a folder, or the run's own files, is refused before anything is read."""
    check_output_path(baseline_path, [run_path])
    run = read_results(run_path)
    if tolerance is None:
        try:
            tolerance = read_results(baseline_path).get("tolerance")
        except (ValueError, OSError):  # none yet, not one, or a name too long to look up
            tolerance = None
    run["tolerance"] = tolerance or default_tolerance()
    write_json(baseline_path, run)
