"""The README's results section, generated from the results (``hadabench leaderboard --readme``).

Between ``<!-- results:begin -->`` and ``<!-- results:end -->`` the README holds a headline table
(one row per transform, a value ± half-width and a rank per precision, in SQNR) and findings:
sentences, each with its paired difference ± half-width and its Holm verdict. Every number is
computed here from the results documents by the functions the leaderboard uses: ``rank_cells``
for the table's intervals, ranks and bold, ``pairwise`` (the family of all pairs of a precision,
the leaderboard's matrix) for the verdicts, ``paired_interval`` for a paired difference's interval,
``compare_runs`` for one transform at two precisions or in two runs; the leaderboard's own
formatting prints them. Only the sentences' templates are written here, so a number in the prose
cannot disagree with the tables.

One run feeds the section (``--readme-run``, default ``embedded``), with optional companion runs
of the same captions (``--readme-with``): a companion's new precisions become columns (each
precision is its own family, so the ranks stay the leaderboard's), and a companion that shares a
precision (another weight rounding) is compared with the main run transform by transform.

Public: ``readme_section`` (the whole section), ``headline_table``, ``findings``, ``combine``,
``paired_differences`` / ``PairedDifferences``, ``precision_differences``, ``kendall_tau``,
``with_interval``, ``replace_section`` / ``section_of`` / ``check_markers`` (the README's
markers), ``pick_run`` / ``run_name`` (which run feeds it).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.errors import UserError
from benchmark.metrics.registry import MetricSpec, metric_spec
from benchmark.reports import leaderboard as board
from benchmark.reports import markdown as md
from benchmark.results.compare import cell_samples, compare_runs, pairwise, rank_cells
from benchmark.results.schema import OK, metric_value
from benchmark.results.stats import (
    ALPHA,
    Interval,
    describe_interval,
    describe_test,
    paired_interval,
    small_sample_note,
)
from benchmark.run.config import hashed_differences

__all__ = ["BEGIN", "END", "HEADLINE", "Difference", "PairedDifferences", "check_markers", "combine",
           "fine_tuned_pairs", "findings", "headline_table", "kendall_tau", "paired_differences", "pick_run",
           "precision_differences", "readme_section", "replace_section", "run_name", "section_of", "with_interval"]

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
HEADLINE = "sqnr_db"                       # the metric of the table, the ranks and the findings
PAPER_SIX = tuple(board.PAPER["w4a4"])   # none, smoothquant, quarot, sdcb, dyncenter, hadanorm
NEW_METHODS = ("svdquant", "stamp")        # transforms beyond the paper's six, compared with its best
FP4 = ("mxfp4", "nvfp4")                   # the FP4 block formats, compared with W4A4
SECTION_VARIANTS = ("random_signs", "weight_rounding")  # a parameter with a section of its own


# -- the leaderboard's formatting and the shared statistics ------------------------------------------

def with_interval(spec: MetricSpec, value, interval: Interval | None) -> str:
    """"mean ± half-width" exactly as the leaderboard prints it (benchmark/reports/leaderboard.py)."""
    return board._with_interval(spec, value, interval)


def row_label(cell: dict) -> str:
    """A row's name as the leaderboard prints it (marked when the transform is not exact)."""
    return board._label(cell)


def _cells(results: dict, precision: str) -> list[dict]:
    """The cells of one precision in the leaderboard's order (the order of the results file)."""
    return [c for c in results["cells"].values() if c.get("precision") == precision]


def _unit(spec: MetricSpec) -> str:
    return " dB" if "(dB)" in spec.header else ""


def _name(spec: MetricSpec) -> str:
    return spec.header.replace(" (dB)", "")


def _signed(text: str) -> str:
    return text if text.startswith("-") else "+" + text


def _p(value: float) -> str:
    return f"{value:.2g}"


def _precision(name: str) -> str:
    return md.text(name.upper())


@dataclass(frozen=True)
class Difference:
    """``a - b`` over the same captions at one precision: the mean difference with its interval,
    the Holm-adjusted p-value and verdict within the precision's family of all pairs (the
    leaderboard's matrix, ranks and bold), and that family's size."""

    precision: str
    a: str
    b: str
    interval: Interval
    p_holm: float
    significant: bool
    tests: int

    def value(self, spec: MetricSpec) -> str:
        """'+1.38 ± 0.63 dB at W4A4 (significant, Holm-adjusted p 2.1e-05)'."""
        verdict = "significant" if self.significant else "not significant"
        return (f"{_signed(with_interval(spec, self.interval.mean, self.interval))}{_unit(spec)} at "
                f"{_precision(self.precision)} ({verdict}, Holm-adjusted p {_p(self.p_holm)})")


def _pair(a: str, b: str) -> str:
    return f"{md.code(a)} − {md.code(b)}"


class PairedDifferences:
    """Every ordered pair of the cells of one precision with per-caption values of ``spec``: the
    sign-flip tests of ``pairwise`` with Holm's correction over all the pairs (the family that
    ``rank_cells`` and the leaderboard's matrix use), the intervals of ``paired_interval``."""

    def __init__(self, results: dict, precision: str, spec: MetricSpec):
        self.precision, self.spec = precision, spec
        usable = [(c["label"], cell_samples(c, spec.key)) for c in _cells(results, precision)]
        self.samples = {label: s for label, s in usable if s is not None and len(s) >= 2}
        self.labels = list(self.samples)
        self.tests = len(self.labels) * (len(self.labels) - 1) // 2
        self._pairs = pairwise(list(self.samples.values())) if len(self.labels) > 1 else {}

    def __contains__(self, pair: tuple[str, str]) -> bool:
        a, b = pair
        return a != b and a in self.samples and b in self.samples

    def get(self, a: str, b: str) -> Difference | None:
        if (a, b) not in self:
            return None
        test = self._pairs[self.labels.index(a), self.labels.index(b)]
        interval = paired_interval(self.samples[a], self.samples[b])
        return Difference(self.precision, a, b, interval, test.p_holm, test.significant, self.tests)

    def mean(self, label: str) -> float:
        return float(np.mean(self.samples[label]))

    def by_mean(self) -> list[str]:
        """The labels, best mean first."""
        sign = 1 if self.spec.higher_is_better else -1
        return sorted(self.labels, key=lambda label: -sign * self.mean(label))

    def significant_pairs(self) -> list[tuple[str, str]]:
        """The unordered pairs (file order) that the Holm family calls significant."""
        return [(a, b) for i, a in enumerate(self.labels) for b in self.labels[i + 1:]
                if self._pairs[i, self.labels.index(b)].significant]


def paired_differences(results: dict, precision: str, key: str = HEADLINE) -> PairedDifferences:
    return PairedDifferences(results, precision, metric_spec(key))


def _view(results: dict, precision: str) -> dict:
    """One precision of a run as ``compare_runs`` reads a run: its cells keyed by label."""
    return {"captions": results.get("captions", {}), "config": results.get("config", {}),
            "cells": {c["label"]: c for c in _cells(results, precision)}}


def precision_differences(results: dict, later: str, earlier: str, key: str = HEADLINE) -> list[dict]:
    """Transform by transform, ``later - earlier`` (two precisions of one run: the same captions
    and seeds): ``compare_runs``'s rows (the paired difference with its interval, the sign-flip
    test, Holm's correction over the transforms compared, the verdict), keyed by label."""
    return compare_runs(_view(results, earlier), _view(results, later), metric_spec(key))


def _same_captions(main: dict, other: dict, name: str) -> None:
    ids = [doc.get("captions", {}).get("evaluation", {}).get("ids") for doc in (main, other)]
    seeds = [doc.get("config", {}).get("seed") for doc in (main, other)]
    if not ids[0] or ids[0] != ids[1] or seeds[0] != seeds[1]:
        raise UserError(f"run {name}: not the same evaluation captions and seed as the README's main run, so "
                        "its cells cannot be paired with it")


def combine(main: dict, companions: list[tuple[str, dict]]) -> tuple[dict, list[str], list[tuple[str, dict]]]:
    """The README's runs as one document: ``main`` plus the cells of each companion run whose
    precisions ``main`` lacks (FP4 formats run apart, say: new columns, each precision still its
    own family), and the companions that share a precision with it (another weight rounding, say),
    which are compared with it transform by transform instead. Every companion must have scored the
    same captions from the same seed. Returns (document, merged run names, compared runs)."""
    merged_doc = {**main, "config": dict(main["config"]), "cells": dict(main["cells"])}
    merged_doc["config"]["precisions"] = list(main["config"]["precisions"])
    merged, compared = [], []
    for name, other in companions:
        if "study" in other:
            raise UserError(f"run {name}: a {other['study'].get('kind')} study, not a benchmark run")
        _same_captions(main, other, name)
        precisions = other["config"]["precisions"]
        if set(precisions) & set(merged_doc["config"]["precisions"]):
            compared.append((name, other))
            continue
        merged_doc["config"]["precisions"] += precisions
        merged_doc["cells"].update(other["cells"])
        merged.append(name)
    return merged_doc, merged, compared


def fine_tuned_pairs(companions: list[tuple[str, dict]]) -> tuple[list[tuple[str, dict, str, dict]],
                                                                   list[tuple[str, dict]]]:
    """The companion runs that fine-tune (``qat_steps``), each with its post-training twin among
    the companions (the same configuration but for ``qat_steps``, the same precisions), as
    (post-training name, run, fine-tuned name, run); and the other companions. A fine-tuned run
    without its twin stays an ordinary companion."""
    pairs, used = [], set()
    for name, other in companions:
        if not other["config"].get("qat_steps"):
            continue
        twin = next((n for n, doc in companions if n not in used and n != name and not doc["config"].get("qat_steps")
                     and hashed_differences(doc["config"], other["config"]) == ["qat_steps"]), None)
        if twin is not None:
            pairs.append((twin, dict(companions)[twin], name, other))
            used |= {twin, name}
    return pairs, [(n, doc) for n, doc in companions if n not in used]


def kendall_tau(x: Iterable[float], y: Iterable[float]) -> float | None:
    """Kendall's tau-b between two orderings of the same items (ties counted once per side);
    None when either side is constant or there are fewer than two items."""
    x, y = list(x), list(y)
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif dx == dy:
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denominator if denominator else None


# -- the headline table ------------------------------------------------------------------------------

def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def headline_table(results: dict, key: str = HEADLINE) -> list[str]:
    """One row per transform label, a (mean ± half-width, rank) pair of columns per precision:
    ``rank_cells``'s intervals, ranks and "not significantly worse than the best" (bold)."""
    return _Run(results, key).table()


def findings(results: dict, key: str = HEADLINE) -> list[str]:
    """The findings' markdown lines: bullets, and bullets under bold lead-ins for what only some
    runs have (FP4 precisions, new methods, random signs, GPTQ, other metrics)."""
    return _Run(results, key).findings()


class _Run:
    """One results document and one headline metric, with the tests of each precision computed once."""

    def __init__(self, results: dict, key: str = HEADLINE, main: str = "embedded",
                 compared: list[tuple[str, dict]] = (), fine_tuned: list[tuple[str, dict, str, dict]] = ()):
        self.results, self.spec, self.main, self.compared_runs = results, metric_spec(key), main, list(compared)
        self.fine_tuned = list(fine_tuned)
        self.precisions = list(results["config"]["precisions"])
        self.labels = {c["label"] for c in results["cells"].values()}
        self._pairs: dict[tuple[str, str], PairedDifferences] = {}
        self._ranked: dict[str, dict] = {}

    def pairs(self, precision: str, spec: MetricSpec | None = None) -> PairedDifferences:
        spec = spec or self.spec
        if (precision, spec.key) not in self._pairs:
            self._pairs[precision, spec.key] = PairedDifferences(self.results, precision, spec)
        return self._pairs[precision, spec.key]

    def ranked(self, precision: str) -> dict:
        if precision not in self._ranked:
            self._ranked[precision] = {r.cell["label"]: r for r in rank_cells(_cells(self.results, precision),
                                                                               self.spec)}
        return self._ranked[precision]

    def cell_text(self, precision: str, label: str) -> str:
        entry = self.ranked(precision)[label]
        value = metric_value(entry.cell["metrics"].get(self.spec.key))
        return with_interval(self.spec, value, entry.interval) + _unit(self.spec)

    # the table

    def table(self) -> list[str]:
        lines = [_row(["transform"] + [x for p in self.precisions for x in (_precision(p), "rank")]),
                 _row(["---"] * (1 + 2 * len(self.precisions)))]
        labels = dict.fromkeys(c["label"] for c in self.results["cells"].values()
                               if c.get("precision") in self.precisions)
        for label in labels:
            name = next(row_label(self.ranked(p)[label].cell) for p in self.precisions if label in self.ranked(p))
            row = [name]
            for p in self.precisions:
                entry = self.ranked(p).get(label)
                if entry is None:
                    row += ["–", ""]
                elif entry.cell.get("status") != OK:
                    row += ["failed", ""]
                else:
                    text = with_interval(self.spec, metric_value(entry.cell["metrics"].get(self.spec.key)),
                                         entry.interval)
                    row += [f"**{text}**" if entry.tied_with_best else text, str(entry.rank or "")]
            lines.append(_row(row))
        return lines

    # the findings

    def compared(self, a: str, b: str, lead: str = "") -> str | None:
        """'lead `a` − `b`: +x ± y dB at W4A4 (...), ... at W6A6 (...)' where both were scored."""
        values = [d.value(self.spec) for p in self.precisions if (d := self.pairs(p).get(a, b)) is not None]
        return f"{lead}{_pair(a, b)}: {', '.join(values)}." if values else None

    def best(self) -> list[str]:
        bullets = []
        for precision in self.precisions:
            order = self.pairs(precision).by_mean()
            if len(order) < 2:
                continue
            tied = sum(1 for r in self.ranked(precision).values() if r.tied_with_best and r.interval is not None)
            best, runner = order[0], order[1]
            bullets.append(
                f"{_precision(precision)}: the best mean is {md.code(best)}'s, {self.cell_text(precision, best)}; "
                f"not significantly worse than it (bold): {tied} of {len(order)} transforms. Against the runner-up, "
                f"{_pair(best, runner)}: {self.pairs(precision).get(best, runner).value(self.spec)}.")
        return bullets

    def variants(self, key: str) -> list[tuple[str, str]]:
        """(variant, base) label pairs: a cell whose parameters are its base's plus ``key``."""
        out = []
        cells = list(self.results["cells"].values())
        for cell in cells:
            params = dict(cell.get("params") or {})
            if key not in params:
                continue
            base_params = {k: v for k, v in params.items() if k != key}
            for base in cells:
                if (base.get("precision") == cell.get("precision") and base.get("transform") == cell.get("transform")
                        and dict(base.get("params") or {}) == base_params
                        and (cell["label"], base["label"]) not in out):
                    out.append((cell["label"], base["label"]))
        return out

    def variant_bullets(self, key: str) -> list[str | None]:
        return [self.compared(variant, base) for variant, base in self.variants(key)]

    def change(self, rows: list[dict], title: str) -> str | None:
        """'title, transform by transform (Holm over n transforms): k better, ...; least `a` +x ± y dB,
        most `b` ...' from ``compare_runs``'s rows."""
        if not rows:
            return None
        verdicts = [r["verdict"] for r in rows]
        sign = 1 if self.spec.higher_is_better else -1
        rows = sorted(rows, key=lambda r: sign * r["difference"].mean)

        def shown(row):
            interval = row["difference"]
            value = _signed(with_interval(self.spec, interval.mean, interval))
            return f"{md.code(row['cell'])} {value}{_unit(self.spec)}"

        counts = ", ".join(f"{verdicts.count(v)} {v}" for v in ("better", "worse", "not significant") if v in verdicts)
        extremes = f"least {shown(rows[0])}" + (f", most {shown(rows[-1])}" if len(rows) > 1 else "")
        return f"{title}, transform by transform (Holm over {len(rows)} transforms): {counts}; {extremes}."

    def precision_bullet(self, later: str, earlier: str) -> str | None:
        if not self.results.get("captions", {}).get("evaluation", {}).get("ids"):
            return None
        return self.change(precision_differences(self.results, later, earlier, self.spec.key),
                           f"{_precision(later)} − {_precision(earlier)}")

    def run_bullets(self, name: str, other: dict) -> list[str | None]:
        """A companion run against the main one at each precision they share: ``compare_runs``."""
        return [self.change(compare_runs(_view(self.results, p), _view(other, p), self.spec),
                            f"{md.code(name)} − {md.code(self.main)} at {_precision(p)}")
                for p in other["config"]["precisions"] if p in self.precisions]

    def run_title(self, name: str, other: dict) -> str:
        changed = [k for k in hashed_differences(self.results["config"], other["config"])
                   if k not in ("transforms", "precisions")]
        if other["config"].get("weight_rounding") == "gptq":
            return "GPTQ weight rounding"
        what = ", ".join(f"{k}={other['config'].get(k)}" for k in changed) or "the same configuration"
        return f"Run {md.code(name)} against {md.code(self.main)} ({md.text(what)})"

    def fine_tuning(self, ptq_name: str, ptq: dict, qat_name: str, qat: dict) -> list[str]:
        """Per precision: each transform fine-tuned against post-training (``compare_runs``: Holm
        over the transforms), then whether the transforms still differ from each other (``none``
        first, then HadaNorm against QuaRot) after fine-tuning and before (each run's own family of
        all pairs of the precision, as in the leaderboard)."""
        spec, unit, bullets = self.spec, _unit(self.spec), []
        steps = qat["config"]["qat_steps"]
        timed = [c for c in qat["cells"].values() if c.get("status") == OK and "qat_s" in c.get("timings", {})]
        if timed:
            teacher = qat.get("qat_teacher", {}).get("seconds")
            bullets.append(
                f"Fine-tuning ({steps} steps per cell, on denoiser calls drawn from the full-precision generation of "
                f"the calibration captions) added {np.mean([c['timings']['qat_s'] for c in timed]):.0f} s per cell "
                f"on average on this run's machine (generating a cell's captions took "
                f"{np.mean([c['timings'].get('generate_s', 0.0) for c in timed]):.0f} s)"
                + (f", and recording the teacher {teacher:.0f} s once" if teacher is not None else "") + ".")
        for precision in qat["config"]["precisions"]:
            rows = compare_runs(_view(ptq, precision), _view(qat, precision), spec)
            if rows:
                shown = [f"{md.code(r['cell'])} {_signed(with_interval(spec, r['difference'].mean, r['difference']))}"
                         f"{unit} ({r['verdict']}, p {_p(r['p_value'])}, Holm-adjusted {_p(r['p_holm'])})"
                         for r in rows]
                bullets.append(f"{md.code(qat_name)} − {md.code(ptq_name)} at {_precision(precision)}, transform by "
                               f"transform ({steps} steps of fine-tuning; Holm over {len(rows)} transforms): "
                               + "; ".join(shown) + ".")
            after, before = (PairedDifferences(doc, precision, spec) for doc in (qat, ptq))
            labels = [label for label in after.labels if label in before.labels]
            pairs = [(label, "none") for label in labels if label != "none" and "none" in labels]
            if {"hadanorm", "quarot"} <= set(labels):
                pairs.append(("hadanorm", "quarot"))
            if not pairs:
                continue
            still = [after.get(a, b) for a, b in pairs]
            was = [before.get(a, b) for a, b in pairs]
            bullets.append(
                f"Does the transform still matter after fine-tuning? At {_precision(precision)}, "
                f"{sum(d.significant for d in still)} of these {len(pairs)} differences are significant after it "
                f"({sum(d.significant for d in was)} before): "
                + "; ".join(f"{_pair(d.a, d.b)} {d.value(spec)} after, {w.value(spec)} before"
                            for d, w in zip(still, was, strict=True)) + ".")
        return bullets

    def new_methods(self) -> list[str]:
        bullets = []
        for label in dict.fromkeys(c["label"] for c in self.results["cells"].values()
                                   if c.get("transform") in NEW_METHODS):
            values = []
            for precision in self.precisions:
                pairs = self.pairs(precision)
                six = [c["label"] for c in _cells(self.results, precision) if c.get("transform") in PAPER_SIX
                       and not c.get("params") and c["label"] in pairs.samples]
                if label not in pairs.samples or not six:
                    continue
                best = next(x for x in pairs.by_mean() if x in six)
                values.append(f"{_pair(label, best)}: {pairs.get(label, best).value(self.spec)}, rank "
                              f"{self.ranked(precision)[label].rank} of {len(pairs.labels)}")
            if values:
                bullets.append(f"{md.code(label)} against the best of the paper's six at each precision: "
                               + "; ".join(values) + ".")
        return bullets

    def other_metrics(self) -> list[str]:
        """For each other metric with values: Kendall's tau with the headline metric over the
        transforms' means, and how many of its Holm-significant pairs keep their sign there."""
        spec = self.spec
        others = [s for s in board.computed_specs(self.results, list(self.results["cells"].values()))
                  if s.key != spec.key]
        bullets = []
        for other in others:
            parts = []
            for precision in self.precisions:
                ours, theirs = _means(self.results, precision, spec), _means(self.results, precision, other)
                common = [label for label in ours if label in theirs]
                tau = kendall_tau([_oriented(spec, ours[x]) for x in common],
                                  [_oriented(other, theirs[x]) for x in common])
                if tau is None:
                    continue
                text = f"at {_precision(precision)} Kendall's τ {tau:+.2f} over {len(common)} transforms"
                base, compared = self.pairs(precision), self.pairs(precision, other)
                significant = [(a, b) for a, b in base.significant_pairs() if (a, b) in compared]
                if significant:
                    kept = both = 0
                    for a, b in significant:
                        moved = compared.get(a, b)
                        if moved.interval.mean != 0 and (_oriented(other, moved.interval.mean) > 0) == (
                                _oriented(spec, base.get(a, b).interval.mean) > 0):
                            kept += 1
                            both += moved.significant
                    text += (f"; {kept} of the {len(significant)} Holm-significant {_name(spec)} pairs keep their "
                             f"sign in it, {both} of them significant there too (Holm over its "
                             f"{compared.tests} pairs)")
                parts.append(text)
            if parts:
                bullets.append(f"{md.text(other.header)} against {_name(spec)}: " + "; ".join(parts) + ".")
        return bullets

    def not_computed(self) -> list[str]:
        setup = self.results.get("metric_setup", {})
        computed = {s.computed_by for s in board.computed_specs(self.results, list(self.results["cells"].values()))}
        names = [n for n in dict.fromkeys(s.computed_by for s in board.leaderboard_metrics()) if n not in computed]
        if not names:
            return []
        why = [f"{md.code(n)} ({'not requested' if n not in setup else 'not computed'})" for n in names]
        return [f"Not in this run, so not in these findings: {', '.join(why)}; the reasons are under the "
                "leaderboard's tables.", ""]

    def caveat(self) -> str:
        model = self.results["config"]["model"]
        if board.is_pixart_sigma(model):
            return (f"These findings are about {md.code(model)} at this run's settings; the paper's numbers "
                    "stand beside the leaderboard's tables.")
        note = f"these findings are about this model ({md.code(model)}), not about the paper's."
        if "w4a4" not in self.precisions or self.spec.key != "sqnr_db":
            return note[0].upper() + note[1:]
        means = _means(self.results, "w4a4", self.spec)
        if "none" not in means:
            return note[0].upper() + note[1:]
        paper = {label: numbers[0] for label, numbers in board.PAPER["w4a4"].items()}
        low, high = min(means, key=means.get), max(means, key=means.get)
        show = self.spec.show
        verb = "collapses" if means["none"] <= 0 else "does not collapse"  # the error as large as the signal
        clip = metric_spec("clip_score")
        ours_clip = _means(self.results, "w4a4", clip).get("none")
        reference = metric_value(self.results.get("reference", {}).get("metrics", {}).get(clip.key))
        clip_text = ""
        if ours_clip is not None and reference is not None:
            clip_text = (f", CLIP score {clip.show(ours_clip)} against {clip.show(reference)} in full precision "
                         f"here, {clip.show(board.PAPER['w4a4']['none'][1])} against "
                         f"{clip.show(board.PAPER['fp']['Original'][1])} there")
        return (f"The embedded model {verb} at W4A4 as PixArt-Sigma does in the paper (without a transform: "
                f"SQNR {self.cell_text('w4a4', 'none')} here, {show(paper['none'])} dB there{clip_text}; the "
                f"transforms' SQNR ranges from {show(means[low])} dB ({md.code(low)}) to {show(means[high])} dB "
                f"({md.code(high)}) here, the paper's six from {show(min(paper.values()))} to "
                f"{show(max(paper.values()))} dB there): {note}")

    def findings(self) -> list[str]:
        bullets: list[str | None] = list(self.best())
        if {"hadanorm", "quarot"} <= self.labels:
            bullets.append(self.compared("hadanorm", "quarot", "HadaNorm against QuaRot, "))
        bullets += self.variant_bullets("correction")
        if {"none", "dyncenter"} <= self.labels:
            bullets.append(self.compared("none", "dyncenter", "No transform against Dyn. Center, "))
        covered = {"correction", *SECTION_VARIANTS}
        for key in dict.fromkeys(k for c in self.results["cells"].values() for k in (c.get("params") or {})):
            if key not in covered:
                bullets += self.variant_bullets(key)
        integer = [p for p in self.precisions if p not in FP4]
        bullets += [self.precision_bullet(p, integer[0]) for p in integer[1:]]
        lines = [f"- {b}" for b in bullets if b]
        fp4 = [p for p in self.precisions if p in FP4]
        fp4_bullets = [self.precision_bullet(p, "w4a4") for p in fp4 if "w4a4" in self.precisions]
        if len(fp4) == 2:
            fp4_bullets.append(self.precision_bullet(fp4[1], fp4[0]))
        sections = {"FP4 block formats": fp4_bullets,
                    "Methods beyond the paper's six": self.new_methods(),
                    "Random signs": self.variant_bullets("random_signs"),
                    "GPTQ weight rounding": self.variant_bullets("weight_rounding")}
        for name, other in self.compared_runs:
            sections.setdefault(self.run_title(name, other), []).extend(self.run_bullets(name, other))
        for pair in self.fine_tuned:
            sections.setdefault("Quantization-aware fine-tuning", []).extend(self.fine_tuning(*pair))
        sections["Other metrics"] = self.other_metrics()
        for title, section in sections.items():
            section = [b for b in section if b]
            if section:
                lines += ["", f"**{title}**", ""] + [f"- {b}" for b in section]
        return lines


def _means(results: dict, precision: str, spec: MetricSpec) -> dict[str, float]:
    out = {}
    for cell in _cells(results, precision):
        value = metric_value(cell.get("metrics", {}).get(spec.key)) if cell.get("status") == OK else None
        if value is not None and math.isfinite(value):
            out[cell["label"]] = value
    return out


def _oriented(spec: MetricSpec, value: float) -> float:
    """``value`` with "better" positive."""
    return value if spec.higher_is_better else -value


# -- the section and the README's markers -----------------------------------------------------------

def readme_section(results: dict, run: str = "embedded", leaderboard: str = "leaderboard/README.md",
                   key: str = HEADLINE, companions: list[tuple[str, dict]] = ()) -> str:
    """The README's results section (without the markers): an introduction, the headline table,
    the findings and the caveat, all from ``results`` (run ``run``) and the ``companions``, (name,
    results) of other runs of the same captions (``combine``); ``leaderboard``: the link to the
    full leaderboard, relative to the README."""
    fine_tuned, others = fine_tuned_pairs(list(companions))
    for ptq_name, ptq, qat_name, qat in fine_tuned:
        _same_captions(results, ptq, ptq_name)
        _same_captions(results, qat, qat_name)
    document, merged, compared = combine(results, others)
    state = _Run(document, key, run, compared, fine_tuned)
    spec, config = state.spec, document["config"]
    captions = len(results.get("captions", {}).get("evaluation", {}).get("ids", []))
    numerics = (results.get("environment", {}).get("numerics") or {}).get("mode", "native")
    families = {p: state.pairs(p).tests for p in state.precisions}
    family = (f"all {next(iter(families.values()))} pairs of a column" if len(set(families.values())) == 1
              else "all the pairs of a column (" + ", ".join(f"{n} at {_precision(p)}" for p, n in families.items())
              + ")")
    names = [name for name, _ in companions]
    runs = f"Run {md.code(run)}" + (f" with {', '.join(md.code(n) for n in names)}" if names else "")
    origin = "".join(f" The {', '.join(_precision(p) for p in other['config']['precisions'])} columns are run "
                     f"{md.code(name)}'s." for name, other in companions if name in merged)
    origin += "".join(f" Run {md.code(name)} is compared with {md.code(run)} below." for name, _ in compared)
    origin += "".join(f" Run {md.code(qat_name)} fine-tunes run {md.code(ptq_name)}'s cells "
                      f"({qat['config']['qat_steps']} steps) and is compared with it below."
                      for ptq_name, _, qat_name, qat in fine_tuned)
    labels = dict.fromkeys(c["label"] for c in document["cells"].values())
    lines = ["<!-- generated by `hadabench leaderboard --readme` (benchmark/reports/findings.py) from the runs "
             "named below: edit the generator, not this text -->",
             f"{runs} ([full leaderboard]({leaderboard})), model {md.code(config['model'])}: "
             f"{len(labels)} transforms × {len(state.precisions)} precisions, {len(document['cells'])} cells, "
             f"{captions} evaluation captions, {config.get('steps')} steps, seed {config.get('seed')}, "
             f"{md.text(numerics)} numerics, grid {md.code(config.get('grid', '?'))}.{origin} "
             f"{md.text(spec.header)}: the mean over captions ± the half-width of its {describe_interval()}. "
             "Rank: 1 + the number of transforms significantly better; **bold**: not significantly worse than "
             f"the best of its column. Significance: {describe_test()}, Holm's correction over {family} at "
             f"family-wise {ALPHA:g}.", ""]
    note = small_sample_note(captions)
    if note:
        lines += [f"**Small sample**: {md.text(note)}; the ranks, bold and verdicts below are no claim.", ""]
    lines += state.table() + [""]
    lines += [f"Findings, in {_name(spec)}: paired differences over the same {captions} captions (row − column "
              "in the leaderboard's matrices; `hadabench power` prints every pair), mean ± the half-width of its "
              "interval, with the verdict of its column's family:", ""]
    lines += state.findings() + [""]
    lines += state.not_computed()
    lines.append(state.caveat())
    return "\n".join(lines)


def check_markers(text: str, where: str = "README") -> None:
    """The markers, once each, each on a line of its own, the beginning first; else UserError."""
    lines = text.splitlines()
    for marker in (BEGIN, END):
        if lines.count(marker) != 1 or text.count(marker) != 1:
            raise UserError(f"{where}: needs the line {marker} exactly once (the generated results section "
                            "goes between the markers)")
    if lines.index(BEGIN) > lines.index(END):
        raise UserError(f"{where}: {BEGIN} must come before {END}")


def replace_section(text: str, body: str, where: str = "README") -> str:
    """``text`` with everything between the markers' lines replaced by ``body``; every byte
    outside them kept."""
    check_markers(text, where)
    start = text.index(BEGIN) + len(BEGIN)
    start = text.index("\n", start) + 1                     # after the marker's line ending ("\n" or "\r\n")
    stop = text.rindex("\n", 0, text.index(END)) + 1        # the start of the end marker's line
    newline = "\r\n" if text[start - 2:start] == "\r\n" else "\n"
    return text[:start] + body.replace("\n", newline) + newline + text[stop:]


def section_of(text: str) -> str:
    """The body between the markers (the form ``readme_section`` returns)."""
    check_markers(text)
    start = text.index("\n", text.index(BEGIN)) + 1
    stop = text.rindex("\n", 0, text.index(END)) + 1
    return text[start:stop].replace("\r\n", "\n").removesuffix("\n")


def run_name(path: str | Path) -> str:
    path = Path(path)
    return (path if path.is_dir() else path.parent).resolve().name


def pick_run(paths: list[Path], name: str, flag: str = "--readme-run") -> Path:
    """The results file among ``paths`` whose run folder is named ``name``; UserError unless exactly one."""
    matches = [p for p in paths if run_name(p) == name]
    if len(matches) != 1:
        found = ", ".join(sorted({run_name(p) for p in paths})) or "none"
        what = "no run folder" if not matches else f"{len(matches)} run folders"
        raise UserError(f"{flag} {name}: {what} of that name among the results (runs: {found})")
    return matches[0]


def link(target: str | Path, readme: str | Path) -> str:
    """``target`` relative to the README's folder, with forward slashes (a markdown link)."""
    return os.path.relpath(Path(target).resolve(), Path(readme).resolve().parent).replace(os.sep, "/")
