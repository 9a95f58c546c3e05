"""``hadabench sensitivity``: the paper's per-quantizer analysis (section 4.1, Figures 2 and 4).

Rows are activation quantizers (roles), columns transforms. In each cell one role's
quantizers are on in every block (default precision ``a4``: activations at 4 bits, weights
in full precision) and everything else is the original linear; the cell's number is the
end-to-end SQNR of the final latents against the full-precision run, with a bootstrap-t
interval over the captions. The ``all`` row quantizes every role together: it is the very
cell ``hadabench run --precisions a4`` makes. A second view puts one transform's
(role, block) pairs, each alone, in a roles x blocks table.

The default columns are the composition lattice: the 2 x 2 x 2 points of centre (C),
scale (S, SmoothQuant's rule at alpha 0.5) and rotate (R, full Hadamard), and the four
rotating points again with random signs (R+-), all as ``affine(...)`` transforms. Five
baselines are points of it (none, dyncenter = C, smoothquant = S, sdcb = S+R,
hadanorm = C+S+R) and quarot is R+-. The centering points use the paper's quantized mean token
to add W mu back; the default columns repeat them with the other two corrections (``fp_token``,
named "C+S+R[fp]", and ``exact``, "C+S+R[exact]") on the rows the claims need (``runs_on``), and
the claims and the HadaNorm-against-QuaRot headline are tested under each. Claim 1 is tested
under both readings of the paper's labels (``READINGS``).

It is a run (``benchmark.run.runner.Run``) with other cells: one reference and one calibration
serve every cell, results.json is rewritten after each cell, and a second invocation into
the same folder resumes. At the end it adds ``study`` to results.json (the tables, the
paper's three claims tested with paired sign-flip tests, Holm-corrected) and writes ``README.md`` and the heatmaps
beside it.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from benchmark.errors import UserError
from benchmark.fileio import write_atomic
from benchmark.quant.grid import Precision
from benchmark.results import markdown as md
from benchmark.results.schema import OK, cell_key, metric_value
from benchmark.results.stats import (
    ALPHA,
    BOOTSTRAP,
    captions_for_power,
    describe_interval,
    describe_test,
    holm_adjusted,
    mean_interval,
    paired_interval,
    sign_flip_test,
    small_sample_note,
)
from benchmark.run.cells import CellJob
from benchmark.run.config import RunConfig, TransformSpec, load_config
from benchmark.run.runner import Run, log
from benchmark.run.subset import Subset
from benchmark.transform.base import CORRECTIONS as TRANSFORM_CORRECTIONS

__all__ = ["CORRECTED", "LATTICE", "BOOTSTRAP", "READINGS", "SensitivityStudy", "mean_ci", "paired_ci",
           "point_name", "runs_on", "study"]

_POINTS = [dict(center=c, alpha=s, rotation=r) for r in (False, True) for s in (False, True)
           for c in (False, True)]
_SIGNED = [p for p in _POINTS if p["rotation"]]
# How a centering point adds W mu back (benchmark.transform.base.CORRECTIONS): the lattice uses the
# paper's quantized mean token; the study repeats its centering points with the other two modes.
CORRECTION_TAGS = {"quantized_token": "", "fp_token": "[fp]", "exact": "[exact]"}
CORRECTIONS = tuple(CORRECTION_TAGS)


def _spec(center=False, alpha=False, rotation=False, signs=False, correction="quantized_token") -> str:
    params = [k for k, on in (("center=true", center), ("alpha=0.5", alpha), ("rotation=full", rotation),
                              ("random_signs=true", signs),
                              (f"correction={correction}", correction != "quantized_token")) if on]
    return f"affine({', '.join(params)})" if params else "affine"


_ORDERED = sorted(_POINTS, key=lambda p: (sum(p.values()), p["rotation"], p["alpha"]))
_ORDERED_SIGNED = sorted(_SIGNED, key=lambda p: (sum(p.values()), p["alpha"]))
LATTICE = [_spec(**p) for p in _ORDERED] + [_spec(**p, signs=True) for p in _ORDERED_SIGNED]
# The centering points again with the full-precision mean token and with the exact W mu: C, C+S,
# C+R, C+S+R, C+R+-, C+S+R+- for fp_token, then for exact.
CORRECTED = [_spec(**p, signs=signs, correction=correction) for correction in CORRECTIONS[1:]
             for p, signs in [(p, False) for p in _ORDERED] + [(p, True) for p in _ORDERED_SIGNED]
             if p["center"]]
# The baselines that are points of the lattice (at their default hyper-parameters).
BASELINE_OF = {"none": "none", "C": "dyncenter", "S": "smoothquant", "S+R": "sdcb",
               "C+S+R": "hadanorm", "R±": "quarot"}
POINT_OF = {baseline: point for point, baseline in BASELINE_OF.items()}
STUDY_DEFAULTS = {"precisions": ["a4"], "transforms": LATTICE + CORRECTED, "metrics": ["sqnr"],
                  "out": "results/sensitivity"}
ALL = "all"  # the row with every role quantized at once
# Points whose other corrections run on the all row alone (the lattice of the whole model): no
# claim compares them role by role.
ALL_ROW_ONLY = ("C+S",)

# -- intervals and tests: the project's statistics over captions (benchmark/results/stats.py) --------
def mean_ci(values, paired_with=None) -> dict:
    """{"mean", "low", "high", "n"}: the mean and its symmetric bootstrap-t interval, Wilson's for
    0/1 values (no interval, low and high None, when a value is not finite, or the interval is
    unbounded: fewer than 4 captions, where over 5% of the resamples repeat one caption).
    ``paired_with``: ``values`` are ``a - b`` and this is ``(a, b)``: the interval is
    ``paired_interval``'s (Newcombe's when both are 0/1)."""
    values = [float(v) for v in values]
    try:
        interval = mean_interval(values) if paired_with is None else paired_interval(*paired_with)
        if not (math.isfinite(interval.low) and math.isfinite(interval.high)):
            raise ValueError("unbounded")
    except ValueError:
        mean = sum(values) / len(values) if values else None
        return {"mean": mean, "low": None, "high": None, "n": len(values)}
    return {"mean": interval.mean, "low": interval.low, "high": interval.high, "n": interval.n}


def paired_ci(a, b) -> dict:
    """The mean of ``a - b`` over the same captions with its bootstrap-t interval, and "p": the
    two-sided sign-flip p-value of "no difference" (None when a value is not finite). The claims
    add "p_holm", adjusted over the comparisons of one claim (``_holm``); Monte Carlo above 32
    captions resolves the thresholds of families of up to 100 comparisons."""
    if len(a) != len(b):
        raise UserError(f"paired values differ in length: {len(a)} and {len(b)}")
    differences = [float(x) - float(y) for x, y in zip(a, b, strict=False)]
    ci = mean_ci(differences, paired_with=(a, b))
    finite = all(math.isfinite(d) for d in differences)
    ci["p"] = sign_flip_test(differences).p if finite else None
    return ci


def _holm(family) -> None:
    """Adds "p_holm" to each tested difference of one claim: Holm's correction over them all; and
    "captions_80": the captions for 80% power at the observed difference with a two-sided test at
    Holm's strictest threshold of the family (None when the difference is 0 or not finite)."""
    family = [ci for ci in family if ci is not None]
    tested = [ci for ci in family if ci.get("p") is not None]
    for ci, q in zip(tested, holm_adjusted([ci["p"] for ci in tested]), strict=True):
        ci["p_holm"] = q
    for ci in family:
        differences = ci.pop("_differences", None)
        if differences is not None and ci.get("p") is not None and len(differences) >= 2:
            ci["captions_80"] = captions_for_power(differences, alpha=ALPHA / max(1, len(tested)))


def _sign(ci: dict) -> int:
    """+1 when the difference is significantly above 0 (the Holm-adjusted sign-flip p-value, or
    the raw one outside a claim, at most ALPHA), -1 below, 0 otherwise or unknown. A record
    without a test (an older file) is read by its interval."""
    if ci is None:
        return 0
    if "p" not in ci:
        return 0 if ci["low"] is None else 1 if ci["low"] > 0 else -1 if ci["high"] < 0 else 0
    p = ci.get("p_holm", ci["p"])
    if p is None or p > ALPHA or ci["mean"] == 0:
        return 0
    return 1 if ci["mean"] > 0 else -1


# -- names ----------------------------------------------------------------------------
def point_name(spec: TransformSpec) -> str:
    """"C+S+R", "R±", "none" for a lattice point (an ``affine`` with those switches, or a
    baseline at its defaults), "C+S+R[fp]" / "C+S+R±[exact]" for a centering point with another
    correction (``correction=fp_token`` / ``exact``); the label for anything else."""
    params = dict(spec.params)
    tag = CORRECTION_TAGS.get(params.pop("correction", "quantized_token"))
    if tag is None:
        return spec.label
    if spec.name in POINT_OF and not params:
        point = POINT_OF[spec.name]
        return point + tag if not tag or point.startswith("C") else spec.label
    if spec.name != "affine" or set(params) - {"center", "alpha", "rotation", "random_signs"} \
            or params.get("alpha") not in (None, 0.5) or params.get("rotation") not in (None, "full"):
        return spec.label
    name = "+".join(letter for letter, on in (("C", params.get("center")), ("S", params.get("alpha") is not None),
                                              ("R", params.get("rotation"))) if on) or "none"
    return name + ("±" if params.get("random_signs") else "") + tag


def base_point(name: str) -> tuple[str, str]:
    """("C+S+R", "fp_token") for "C+S+R[fp]"; (name, "quantized_token") for any other name."""
    for correction, tag in CORRECTION_TAGS.items():
        if tag and name.endswith(tag):
            return name[:-len(tag)], correction
    return name, "quantized_token"


def runs_on(name: str, row: str, full_precision_weights: bool = False) -> bool:
    """Whether the study runs the column ``name`` on ``row``: every column on the all row; on a
    role's row, every lattice point, and the other corrections of the points the claims compare
    role by role (not ``ALL_ROW_ONLY``'s). With the weights in full precision (``a4``) ``exact``
    runs on the all row alone: there the folded weights are W diag(s) R^T unquantized, so
    ``fp_token``'s W~ m~ is ``exact``'s W mu in exact arithmetic; they differ by floating-point
    rounding alone, and the README tests whether that moves the mean on the all row."""
    point, correction = base_point(name)
    if row == ALL or correction == "quantized_token":
        return True
    if correction == "exact" and full_precision_weights:
        return False
    return point not in ALL_ROW_ONLY


def full_precision_weights(precisions) -> bool:
    """Whether every precision of a study leaves the weights in full precision (``a4``)."""
    return all(Precision.parse(p).weight_bits is None for p in precisions)


def _column_title(name: str) -> str:
    return f"{name} ({BASELINE_OF[name]})" if name in BASELINE_OF and name != "none" else name


# -- the study --------------------------------------------------------------------------
class SensitivityStudy(Run):
    """A run whose cells are (precision, transform, one role) and (one role, one block)."""

    def __init__(self, config, block_view: str | None = None, fresh: bool = False):
        super().__init__(config, fresh=fresh)
        names = {point_name(s): s for s in config.transforms}
        if len(names) != len(config.transforms):
            raise UserError("two of the study's transforms are the same lattice point: "
                             f"{', '.join(point_name(s) for s in config.transforms)}")
        labels = {s.label: s for s in config.transforms}
        if block_view is None:
            self.block_spec = config.transforms[0]
        elif block_view in labels or block_view in names:
            self.block_spec = labels.get(block_view) or names[block_view]
        else:
            raise UserError(f"--block-view {block_view!r} is not one of the study's transforms: "
                             f"{', '.join(names)}")
        self.info = {"kind": "sensitivity", "block_view": self.block_spec.label, "bootstrap": BOOTSTRAP}

    def config_hash(self, config: RunConfig) -> str:
        # the configuration, and what makes a study's cells: its kind and the blocks view
        data = json.dumps({"config": config.hash(), "study": self.info}, sort_keys=True)
        return hashlib.sha256(data.encode()).hexdigest()[:16]

    def annotate(self, results: dict) -> None:
        results.setdefault("study", {}).update(self.info)  # marks the file as a study's

    def layout(self, targets) -> tuple[list[str], list[int]]:
        """The rows (roles, in block order) and the blocks the study covers."""
        chosen = self.subset.select(targets)
        roles = list(dict.fromkeys(g.role for g in chosen))
        blocks = sorted({g.block_index for g in chosen})
        return roles, blocks

    def plan(self, targets) -> list[tuple[TransformSpec, Subset | None]]:
        """The study's cells of one precision, in the order they run."""
        roles, blocks = self.layout(targets)
        # The all-roles row first (the lattice of the whole model under every correction, and the
        # headline), then what the claims need, column by column in CLAIM_COLUMNS' order (so that an
        # interrupted study already answers the most), the other columns, and the blocks view.
        order = {name: i for i, name in enumerate(CLAIM_COLUMNS)}
        fp_weights = full_precision_weights(self.config.precisions)
        columns = sorted(self.config.transforms, key=lambda s: order.get(point_name(s), len(order)))

        def role_cells(specs):
            return [(spec, Subset((role,), self.subset.blocks)) for spec in specs for role in roles
                    if runs_on(point_name(spec), role, fp_weights)]

        return ([(spec, None) for spec in self.config.transforms]  # None: the plain run's cell
                + role_cells(columns)
                + [(self.block_spec, Subset((role,), (block,))) for role in roles for block in blocks])

    def jobs(self, targets) -> list[CellJob]:
        return [CellJob(precision, spec, subset) for precision in self.config.precisions
                for spec, subset in self.plan(targets)]

    def after_cells(self, reference) -> None:
        self.info["cells_wall_s"] = self.results.get("study", {}).get("cells_wall_s", 0.0) + self.cells_seconds
        self.report()

    def report(self) -> int:
        """The tables, claims, README.md and heatmaps from the cells finished so far."""
        if not self.processes.is_main:  # the main process alone holds the cells, and writes
            return 0
        if self.results is None or "reference" not in self.results:
            raise UserError(f"{self.out} holds no study of this configuration yet: run it first")
        targets = self.model.targets()
        roles, blocks = self.layout(targets)
        self.info["cells"] = {"planned": len(self.plan(targets)) * len(self.config.precisions),
                              "finished": sum(c["status"] == OK for c in self.results["cells"].values())}
        timed = [sum(c["timings"].values()) for c in self.results["cells"].values() if c["timings"]]
        timing = {"per_cell_s": sum(timed) / max(1, len(timed)),
                  "reference_s": self.results["reference"]["timings"]["generate_s"],
                  "calibration_s": self.results.get("calibration", {}).get("collect_s") or 0.0}
        timing["study_min"] = (timing["reference_s"] + timing["calibration_s"]
                               + timing["per_cell_s"] * self.info["cells"]["planned"]) / 60
        self.info["timing"] = timing
        self.info.update(summarize(self.results, self.config, self.block_spec, roles, blocks, self.subset))
        self.save()
        write_report(self.results, self.out)
        log(f"sensitivity: wrote {self.out / 'README.md'} and its heatmaps "
            f"({self.info['cells']['finished']} of {self.info['cells']['planned']} cells)")
        return 0


def _cell_ci(results: dict, key: str) -> tuple[dict | None, list | None]:
    cell = results["cells"].get(key)
    if cell is None or cell["status"] != OK:
        return None, None
    values = [metric_value(v) for v in cell["per_sample"]["sqnr_db"]]
    return mean_ci(values), values


def summarize(results, config, block_spec, roles, blocks, subset) -> dict:
    """The tables (per precision) and the claims, from the cells in ``results``."""
    columns = [(point_name(s), s) for s in config.transforms]
    fp_weights = full_precision_weights(config.precisions)
    out = {"rows": [ALL, *roles], "blocks": blocks,
           "columns": [{"name": n, "label": s.label} for n, s in columns],
           "not_run": [[row, n] for row in [ALL, *roles] for n, _ in columns if not runs_on(n, row, fp_weights)],
           "tables": {}}
    for precision in config.precisions:
        per_sample, table = {}, {}
        for row in [ALL, *roles]:
            row_subset = None if row == ALL else Subset((row,), subset.blocks)
            table[row] = {}
            for name, spec in columns:
                key = cell_key(precision, spec.label) + (f" [{row_subset.label}]" if row_subset else "")
                table[row][name], per_sample[row, name] = _cell_ci(results, key)
        block_table = {role: {str(b): _cell_ci(results, cell_key(precision, block_spec.label)
                                               + f" [{Subset((role,), (b,)).label}]")[0]
                              for b in blocks} for role in roles}
        out["tables"][precision] = {"roles": table, "blocks": block_table,
                                    "claims": claims(per_sample, roles, [n for n, _ in columns])}
    return out


# -- the paper's three claims ---------------------------------------------------------------
# Section 4.1 / Figure 2: the inputs of the image-token attention and FFN, and the attention
# output projection (OP), are the worst quantizers; HadaNorm helps every quantizer but the text
# input of cross-attention. Figure 4: the composition beats any single ingredient, and
# centering is what makes the Hadamard rotation work.
# Claim 1 names the worst quantizers by the paper's labels, which map onto this model's roles in
# two ways; the study tests both, each with its own verdict.
READINGS = {
    "image-token inputs": {
        "description": "the image-token inputs of attention (cross-attention's query included) and of "
                       "the FFN, and the self-attention output projection",
        "mapping": {"attention inputs": ("self_attn_qkv", "cross_attn_q"), "OP": ("self_attn_out",),
                    "FFN": ("ffn_up", "ffn_down")}},
    "OP = both output projections": {
        "description": "OP read as both attention output projections, and cross-attention's query "
                       "(computed from image tokens) not among the claimed worst",
        "mapping": {"attention inputs": ("self_attn_qkv",), "OP": ("self_attn_out", "cross_attn_out"),
                    "FFN": ("ffn_up", "ffn_down")}},
}
PAPER_WORST = tuple(r for roles in READINGS["image-token inputs"]["mapping"].values() for r in roles)
TEXT_INPUT = "cross_attn_kv"
SINGLES = ("C", "S", "R")
# The columns the claims compare role by role, in the order they run: claim 1, claim 2 (under the
# paper's correction and fp_token), the centering comparisons, claim 3's single ingredients.
CLAIM_COLUMNS = ("none", "C+S+R", "C+S+R[fp]", "R", "C+R", "C+R[fp]", "S+R", "C", "S", "C[fp]",
                 "C+S+R[exact]", "C+R[exact]", "C[exact]")
CENTERING = (("C+R", "R"), ("C+S+R", "S+R"), ("C+R±", "R±"), ("C+S+R±", "S+R±"))
VERDICT = {1: "holds", -1: "does not hold", 0: "undecided (no significant difference decides it)"}


def _verdict(signs) -> str:
    """holds when every sign is +1, does not hold when one is -1, otherwise undecided."""
    signs = list(signs)
    return VERDICT[-1 if -1 in signs else 1 if signs and all(s == 1 for s in signs) else 0]


def claims(per_sample: dict, roles: list[str], names: list[str]) -> dict:
    """The claims from the per-caption SQNR of each (row, column name): claim 1 under both readings
    (``READINGS``), claims 2 and 3 and the centering comparisons under each correction whose
    columns are there (``corrections``), and HadaNorm against QuaRot on the all row under each."""
    def diff(row, a, b):
        if per_sample.get((row, a)) is None or per_sample.get((row, b)) is None:
            return None
        return _paired(per_sample[row, a], per_sample[row, b])

    base = "none" if "none" in names else names[0]
    ranking = sorted((r for r in roles if per_sample.get((r, base))),
                     key=lambda r: float(np.mean(per_sample[r, base])))
    out = {"worst_quantizers": {"transform": base, "ranking_worst_first": ranking,
                                "readings": {name: _worst(per_sample, roles, base, reading)
                                             for name, reading in READINGS.items()}}}
    out["corrections"] = {}
    for correction, tag in CORRECTION_TAGS.items():
        part, hadanorm = {}, "C+S+R" + tag
        roles_missing = not all(per_sample.get((r, hadanorm)) for r in roles)  # ran on the all row alone
        # 2. HadaNorm (C+S+R) against no transform, per role
        if hadanorm in names and base in names and not roles_missing:
            per_role = {r: diff(r, hadanorm, base) for r in roles}
            _holm(per_role.values())
            signs = {r: _sign(ci) for r, ci in per_role.items()}
            helped = [r for r in roles if r != TEXT_INPUT]
            ok = all(signs[r] == 1 for r in helped) and signs.get(TEXT_INPUT, 0) != 1
            bad = any(signs[r] == -1 for r in helped) or signs.get(TEXT_INPUT) == 1
            part["hadanorm_helps_all_but_text"] = {
                "difference": f"{hadanorm} minus {base}", "per_role": per_role,
                "helps": [r for r in roles if signs[r] == 1], "hurts": [r for r in roles if signs[r] == -1],
                "verdict": VERDICT[1 if ok else -1 if bad else 0]}
        # 3. the composition against the best single ingredient (centering with the same correction)
        singles = ("C" + tag, "S", "R")
        if hadanorm in names and all(s in names for s in singles) and not roles_missing:
            rows = {}
            for row in [ALL, *roles]:
                if per_sample.get((row, hadanorm)) is None:
                    continue
                best = max(singles, key=lambda s: float(np.mean(per_sample[row, s]))
                           if per_sample.get((row, s)) else -math.inf)
                rows[row] = {"best_single": best, "composition_minus_best_single": diff(row, hadanorm, best)}
            _holm([v["composition_minus_best_single"] for v in rows.values()])
            signs = [_sign(v["composition_minus_best_single"]) for v in rows.values()]
            part["composition_beats_single"] = {"composition": hadanorm, "per_row": rows, "verdict": _verdict(signs),
                                                "rows_where_it_holds": sum(s == 1 for s in signs),
                                                "rows": len(signs)}
        # centering before rotating: each centering point against the same point without C
        centering = {}
        for with_c, without in CENTERING:
            if with_c + tag in names and without in names:
                rows = {row: diff(row, with_c + tag, without) for row in [ALL, *roles]}
                if any(ci is not None for ci in rows.values()):
                    centering[f"{with_c + tag} minus {without}"] = rows
        if centering:
            tested = [ci for comparison in centering.values() for ci in comparison.values()]
            _holm(tested)
            signs = [_sign(ci) for ci in tested if ci is not None]
            part["centering_makes_rotation_work"] = {
                "comparisons": centering, "verdict": _verdict(signs), "tested": len(signs),
                "rows": [row for row in [ALL, *roles] if any(c.get(row) for c in centering.values())],
                "better": sum(s == 1 for s in signs), "worse": sum(s == -1 for s in signs)}
        if part:
            out["corrections"][correction] = part
    out["hadanorm_vs_quarot"] = _hadanorm_vs_quarot(per_sample, names)
    # exact against fp_token where both ran (the all row): at a4 the same W mu in exact arithmetic
    fp, exact = CORRECTION_TAGS["fp_token"], CORRECTION_TAGS["exact"]
    same = {}
    for point in dict.fromkeys(base_point(n)[0] for n in names):
        if per_sample.get((ALL, point + fp)) and per_sample.get((ALL, point + exact)):
            same[point] = _paired(per_sample[ALL, point + exact], per_sample[ALL, point + fp])
            same[point]["max_abs"] = float(np.max(np.abs(same[point]["_differences"])))
    _holm(same.values())
    out["exact_minus_fp_token"] = same
    return out


def _worst(per_sample, roles, base, reading) -> dict:
    """Claim 1 under one reading: every claimed-worst role significantly below every other role."""
    claimed_roles = {r for rs in reading["mapping"].values() for r in rs}
    claimed = [r for r in roles if r in claimed_roles]
    others = [r for r in roles if r not in claimed_roles]
    pairs = [{"worse": c, "other": o, "other_minus_worse": _paired(per_sample[o, base], per_sample[c, base])}
             for c in claimed for o in others if per_sample.get((o, base)) and per_sample.get((c, base))]
    _holm([p["other_minus_worse"] for p in pairs])
    return {"description": reading["description"], "mapping": {k: list(v) for k, v in reading["mapping"].items()},
            "claimed_worst": claimed, "others": others, "pairs": pairs,
            "verdict": _verdict(_sign(p["other_minus_worse"]) for p in pairs)}


def _hadanorm_vs_quarot(per_sample, names) -> dict:
    """On the all row, HadaNorm (C+S+R, and C+S+R± with random signs) minus QuaRot (R±) under each
    correction, Holm over them all; "winner" per correction: hadanorm, quarot or None (C+S+R)."""
    comparisons = {}
    for correction, tag in CORRECTION_TAGS.items():
        for point in ("C+S+R", "C+S+R±"):
            if point + tag in names and "R±" in names and per_sample.get((ALL, point + tag)) \
                    and per_sample.get((ALL, "R±")):
                comparisons.setdefault(correction, {})[point + tag] = _paired(per_sample[ALL, point + tag],
                                                                              per_sample[ALL, "R±"])
    _holm([ci for by_point in comparisons.values() for ci in by_point.values()])
    winner = {}
    for correction, by_point in comparisons.items():
        ci = by_point.get("C+S+R" + CORRECTION_TAGS[correction])
        if ci is not None:
            winner[correction] = {1: "hadanorm", -1: "quarot", 0: None}[_sign(ci)]
    return {"difference": "minus R± (quarot), all row", "comparisons": comparisons, "winner": winner,
            "correction_decides": len(set(winner.values())) > 1 if len(winner) > 1 else None}


def _paired(a, b) -> dict:
    """``paired_ci`` with the differences kept for ``_holm`` (which computes the captions for power
    and removes them)."""
    ci = paired_ci(a, b)
    ci["_differences"] = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    return ci


# -- the report ----------------------------------------------------------------------------
def _fmt(ci: dict | None, interval: bool = True) -> str:
    if ci is None or ci.get("mean") is None:
        return "n/a"
    star = "*" if ci.get("p_holm") is not None and ci["p_holm"] <= ALPHA else ""
    if not interval or ci["low"] is None:
        return f"{ci['mean']:.2f}{star}"
    return f"{ci['mean']:.2f} [{ci['low']:.2f}, {ci['high']:.2f}]{star}"


def heatmap(values: list[list[float | None]], rows: list[str], columns: list[str], title: str,
            path: Path, colorbar: str = "SQNR (dB)") -> None:
    """A Figure 2/4-style grid: one row per quantizer, one column per transform, the value in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 + 0.78 * len(columns), 1.2 + 0.42 * len(rows)))
    image = ax.imshow(data, cmap="viridis", aspect="auto")
    finite = data[np.isfinite(data)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if np.isfinite(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.1f}", ha="center", va="center", fontsize=8,
                        color="white" if data[i, j] < middle else "black")
    ax.set_xticks(range(len(columns)), [_plain(c) for c in columns], rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [_plain(r) for r in rows], fontsize=8)
    ax.set_title(_plain(title), fontsize=9)
    fig.colorbar(image, ax=ax, label=colorbar, fraction=0.04)
    fig.tight_layout()
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=130, format="png", metadata={"Software": None}))
    finally:
        plt.close(fig)


def _plain(label) -> str:
    """A label from results for matplotlib: one line, and no ``$`` that starts its math parser."""
    return " ".join(str(label).split()).replace("$", r"\$")


def _file_part(value) -> str:
    """``value`` as part of a file name when it is a plain name (``a4``, ``w4a4``), else a digest of
    it: a string from results never becomes a path."""
    text = str(value)
    if text and text[0] != "." and len(text) <= 64 and all(ch.isascii() and (ch.isalnum() or ch in "_+-.")
                                                           for ch in text):
        return text
    return "p" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def write_report(results: dict, out: Path) -> None:
    """README.md and the heatmaps. Every string that comes from ``results`` (names, labels,
    roles, the model, verdicts) goes through ``benchmark.results.markdown`` (``md.text``,
    ``md.cell``, ``md.code``, ``md.link``), as in the leaderboard; file names from it are
    ``_file_part``s."""
    study, config = results["study"], results["config"]
    columns = [c["name"] for c in study["columns"]]
    n = len(results["captions"]["evaluation"]["ids"])
    timing = study["timing"]
    model = md.text(config["model"])
    lines = ["# Sensitivity: one activation quantizer at a time", "",
             "The paper's section 4.1 (Figures 2 and 4) on this model: in each cell only one role's "
             "activation quantizers are on, in every block (weights in full precision), everything "
             "else stays the original linear. The `all` row quantizes every role at once (the cell "
             f"{md.code('hadabench run --precisions ' + '/'.join(map(str, config['precisions'])))} makes). "
             "Numbers: SQNR of the "
             f"final latents against the full-precision run, mean of per-caption dB over {n} "
             f"{md.text(config['captions'])} captions, {md.text(config['steps'])} steps, seed "
             f"{md.text(config['seed'])}; in brackets "
             f"the {describe_interval()}.", "",
             *([f"**Small sample**: {note}; no verdict below is a claim.", ""]
               if (note := small_sample_note(n)) else []),
             "Columns: points of the composition lattice, `affine(...)` transforms. C: dynamic "
             "centering; S: SmoothQuant scales, alpha 0.5 (on centred activations when with C); R: "
             "full Hadamard rotation; ±: with random signs. In brackets the baseline that is the "
             "same point. A centering point adds the bias correction W mu back in one of three ways "
             "(the `correction` parameter): "
             + "; ".join(f"{md.code(c)}{' (the lattice, the paper)' if not tag else f' (columns marked {tag})'}: "
                         f"{md.text(TRANSFORM_CORRECTIONS[c])}" for c, tag in CORRECTION_TAGS.items()) + ".", "",
             *([f"**Partial: {md.text(study['cells']['finished'])} of {md.text(study['cells']['planned'])} "
                "cells finished**; the command below, without `--fresh`, resumes the rest.", ""]
               if study["cells"]["finished"] < study["cells"]["planned"] else []),
             f"Time (torch threads: {md.text(results['environment']['torch_threads'])}; a 2-core machine "
             "shared with "
             f"other work, so under load): {timing['per_cell_s']:.0f} s per cell on average "
             f"({n} captions x {md.text(config['steps'])} steps), reference {timing['reference_s']:.0f} s, "
             + ("calibration read from the cache" if results.get("calibration", {}).get("cache") == "hit"
                else f"calibration {timing['calibration_s']:.0f} s")
             + f"; all {md.text(study['cells']['planned'])} cells about "
             f"{timing['study_min']:.0f} minutes. Regenerate:", "",
             "```bash", STUDY_COMMAND, "```", ""]
    for precision, tables in study["tables"].items():
        lines += _headline(tables["claims"], precision)
    lines += _captions(study, n)
    for precision, tables in study["tables"].items():
        role_rows = study["rows"]
        name = f"sensitivity_{_file_part(precision)}.png"
        heatmap([[(tables["roles"][r][c] or {}).get("mean") for c in columns] for r in role_rows],
                role_rows, [_column_title(c) for c in columns],
                f"{config['model']} {precision}: SQNR (dB), one quantizer role at a time", out / name)
        block_name = f"blocks_{_file_part(precision)}.png"
        blocks = [str(b) for b in study["blocks"]]
        heatmap([[(tables["blocks"][r][b] or {}).get("mean") for b in blocks] for r in role_rows[1:]],
                role_rows[1:], [f"block {b}" for b in blocks],
                f"{config['model']} {precision}, {study['block_view']}: one role in one block", out / block_name)
        not_run = study.get("not_run", [])
        lattice = [c for c in columns if base_point(c)[1] == "quantized_token"]
        corrected = [c for c in columns if c not in lattice]
        lines += [f"## {model} · {md.text(precision)}: roles x transforms", "",
                  md.link("roles x transforms", name, out, out, image=True), ""]
        for group, caption in ((lattice, "The lattice (centering with the quantized mean token, the paper's):"),
                               (corrected, "The centering points with the other corrections ([fp]: `fp_token`, "
                                           "[exact]: `exact`; — a cell the study does not run):")):
            if not group:
                continue
            lines += [caption, "", "| role | " + " | ".join(md.cell(_column_title(c)) for c in group) + " |",
                      "|---|" + "---|" * len(group)]
            lines += [f"| {md.cell(r)} | " + " | ".join(_fmt(tables["roles"][r][c]) if [r, c] not in not_run else "—"
                                                       for c in group) + " |" for r in role_rows]
            lines.append("")
        lines += [f"## {model} · {md.text(precision)}: blocks x roles, {md.code(study['block_view'])}", "",
                  md.link("blocks x roles", block_name, out, out, image=True), "",
                  "| role | " + " | ".join(md.cell(f"block {b}") for b in blocks) + " |",
                  "|---|" + "---|" * len(blocks)]
        lines += [f"| {md.cell(r)} | " + " | ".join(_fmt(tables["blocks"][r][b]) for b in blocks) + " |"
                  for r in role_rows[1:]]
        lines += ["", *_claims_markdown(tables["claims"])]
    write_atomic(out / "README.md", "\n".join(lines) + "\n")


STUDY_COMMAND = "python -m benchmark sensitivity --config leaderboard/sensitivity/study.toml --fresh"


def _p(ci: dict | None) -> str:
    """"Holm p = 0.0012" (or the raw p outside a family), "no test" when there is none."""
    if ci is None or ci.get("p") is None:
        return "no test"
    return f"Holm p = {ci['p_holm']:.2g}" if "p_holm" in ci else f"p = {ci['p']:.2g}"


def _headline(claims: dict, precision) -> list[str]:
    """The sentence that says whether the correction mode decides HadaNorm against QuaRot (all row)."""
    h = claims.get("hadanorm_vs_quarot") or {}
    if not h.get("winner"):
        return []
    parts = []
    for correction, tag in CORRECTION_TAGS.items():
        ci = h["comparisons"].get(correction, {}).get("C+S+R" + tag)
        if ci is None:
            continue
        winner = h["winner"].get(correction)
        what = (f"HadaNorm ({'C+S+R' + tag}) beats QuaRot (R±) by {ci['mean']:.2f} dB" if winner == "hadanorm" else
                f"QuaRot (R±) beats HadaNorm ({'C+S+R' + tag}) by {-ci['mean']:.2f} dB" if winner == "quarot" else
                f"HadaNorm ({'C+S+R' + tag}) minus QuaRot (R±) is {ci['mean']:.2f} dB, not significant")
        paper = " (the paper's)" if not tag else ""
        parts.append(f"with {md.code(correction)}{paper}, {what} ({_p(ci)})")
    mode = "the correction mode (how a centering transform adds W mu back)"
    lead = (f"{mode} decides whether HadaNorm or QuaRot wins" if h["correction_decides"] else
            f"{mode} does not change which of HadaNorm and QuaRot wins" if len(h["winner"]) > 1 else
            f"{mode} was not varied (one correction run), so whether it decides HadaNorm against QuaRot is "
            "not tested")
    # in the order of CORRECTION_TAGS (a study file's own keys are read only through them)
    signed = [f"{md.code(c)} {ci['mean']:.2f} dB ({_p(ci)})" for c, tag in CORRECTION_TAGS.items()
              if (ci := h["comparisons"].get(c, {}).get("C+S+R±" + tag)) is not None]
    lines = [f"**Headline ({md.text(precision)}, every role quantized, the `all` row)**: on this model {lead}: "
             + "; ".join(parts) + "."
             + (f" HadaNorm with random signs (C+S+R±) minus QuaRot: {'; '.join(signed)}." if signed else "")
             + f" Holm's correction over these {sum(len(v) for v in h['comparisons'].values())} comparisons.", ""]
    same = {k: v for k, v in (claims.get("exact_minus_fp_token") or {}).items() if v.get("mean") is not None}
    if same:
        significant = [k for k, v in same.items() if _sign(v) != 0]
        tested = [v for v in same.values() if v.get("p") is not None]
        lines += ["**`exact` against `fp_token`** (the `all` row, where both ran): with the weights in full "
                  "precision both add the same W mu in exact arithmetic; in floating point they round "
                  "differently, and the 4-bit quantizers downstream turn that into per-caption differences of up "
                  f"to {max(v['max_abs'] for v in same.values()):.2f} dB. Exact minus fp_token, mean per point: "
                  + ", ".join(f"{md.text(k)} {v['mean']:+.2f} dB" for k, v in same.items())
                  + f"; {len(significant)} of {len(tested)} significant (Holm over them"
                  + (f", smallest Holm p = {min(v['p_holm'] for v in tested):.2g}" if tested else "") + "). "
                  + ("So the role rows run `fp_token` alone and stand for both." if not significant else
                     "They differ significantly on " + ", ".join(map(md.text, significant)) + ": the role rows, "
                     "which run `fp_token` alone, do not stand for `exact` there."), ""]
    return lines


def _tested(claims: dict) -> list[dict]:
    """Every tested difference of the claims."""
    out = [p["other_minus_worse"] for r in claims["worst_quantizers"]["readings"].values() for p in r["pairs"]]
    for part in claims.get("corrections", {}).values():
        out += list(part.get("hadanorm_helps_all_but_text", {}).get("per_role", {}).values())
        out += [v["composition_minus_best_single"]
                for v in part.get("composition_beats_single", {}).get("per_row", {}).values()]
        out += [ci for c in part.get("centering_makes_rotation_work", {}).get("comparisons", {}).values()
                for ci in c.values()]
    out += [ci for c in claims.get("hadanorm_vs_quarot", {}).get("comparisons", {}).values() for ci in c.values()]
    return [ci for ci in out if ci is not None and ci.get("p") is not None]


def _captions(study: dict, n: int) -> list[str]:
    """How far the study's captions go: the claims' significant differences, and the captions for 80%
    power at the observed size of the others (``captions_for_power`` at each family's strictest
    Holm threshold)."""
    tested = [ci for tables in study["tables"].values() for ci in _tested(tables["claims"])]
    if not tested:
        return []
    significant = sum(ci["p_holm"] <= ALPHA for ci in tested if "p_holm" in ci)
    needs = sorted(ci["captions_80"] for ci in tested
                   if ci.get("captions_80") is not None and ci.get("p_holm", 1) > ALPHA)
    reachable = [k for k in needs if k <= 2 * n]
    line = (f"**Captions**: the claims below make {len(tested)} paired comparisons at {n} captions; "
            f"{significant} are significant after Holm's correction within their claim.")
    if needs:
        line += (f" For the other {len(needs)}, 80% power at the observed difference (two-sided, at the "
                 f"claim's strictest Holm threshold) needs a median of {needs[len(needs) // 2]} captions "
                 f"(from {needs[0]} to {needs[-1]}); {len(reachable)} of them would be reached by doubling the "
                 f"captions to {2 * n}. `python -m benchmark power` prints the same for every cell and pair.")
    return [line, ""]


def _claims_markdown(claims: dict) -> list[str]:
    lines = ["### The paper's claims, tested", "",
             "Each verdict comes from paired differences over the same captions (mean and "
             f"{describe_interval()}, dB; * significant: {describe_test()}, with Holm's correction "
             f"over the comparisons of the claim at family-wise {ALPHA:g}): *holds* when every "
             "difference it needs is significant on the claimed side of 0, *does not hold* when one is "
             "significant on the other side, otherwise *undecided*. The Holm p-values are in the "
             "tables; a difference without * is not significant.", ""]

    def listed(names) -> str:
        return md.text(", ".join(map(str, names)))

    worst = claims["worst_quantizers"]
    lines += [f"**1. The worst quantizers** (transform {md.code(worst['transform'])}; worst first: "
              f"{listed(worst['ranking_worst_first'])}). The paper names them by label (the inputs of "
              "the image-token attention and FFN, and the attention output projection, OP); the labels "
              f"map onto this model's roles in {len(worst['readings'])} ways, each tested on its own:", ""]
    for i, (name, reading) in enumerate(worst["readings"].items(), 1):
        mapping = "; ".join(f"{md.text(label)} → {listed(roles)}" for label, roles in reading["mapping"].items())
        lines += [f"- **Reading {i}, {md.text(name)}** ({md.text(reading['description'])}): {mapping}. Claimed worst: "
                  f"{listed(reading['claimed_worst'])}; against {listed(reading['others'])}: "
                  f"**{md.text(reading['verdict'])}** ({len(reading['pairs'])} comparisons, "
                  f"{sum(_sign(p['other_minus_worse']) == 1 for p in reading['pairs'])} significant on the "
                  f"claimed side, {sum(_sign(p['other_minus_worse']) == -1 for p in reading['pairs'])} "
                  "on the other).", ""]
    for i, reading in enumerate(worst["readings"].values(), 1):
        lines += [f"Reading {i}:", "", "| claimed worse | other role | other minus claimed | Holm p |",
                  "|---|---|---|---|"]
        lines += [f"| {md.cell(p['worse'])} | {md.cell(p['other'])} | {_fmt(p['other_minus_worse'])} | "
                  f"{_pvalue(p['other_minus_worse'])} |" for p in reading["pairs"]]
        lines.append("")
    corrections = claims.get("corrections", {})
    helps = {c: part["hadanorm_helps_all_but_text"] for c, part in corrections.items()
             if "hadanorm_helps_all_but_text" in part}
    if helps:
        lines += [f"**2. HadaNorm (C+S+R) helps every quantizer except the text input ({md.text(TEXT_INPUT)})**, "
                  "under each correction:", ""]
        lines += [f"- {md.code(c)}: **{md.text(v['verdict'])}**. Helps: {listed(v['helps']) or 'none'}; hurts: "
                  f"{listed(v['hurts']) or 'none'}." for c, v in helps.items()]
        lines += ["", "| role | " + " | ".join(f"{md.cell(v['difference'])} | Holm p" for v in helps.values()) + " |",
                  "|---|" + "---|---|" * len(helps)]
        roles = list(next(iter(helps.values()))["per_role"])
        lines += [f"| {md.cell(r)} | " + " | ".join(f"{_fmt(v['per_role'][r])} | {_pvalue(v['per_role'][r])}"
                                                   for v in helps.values()) + " |" for r in roles]
        lines.append("")
    composition = {c: part["composition_beats_single"] for c, part in corrections.items()
                   if "composition_beats_single" in part}
    if composition:
        lines += ["**3. The composition beats any single ingredient** (C+S+R against the best of C, S and R on "
                  "each row, C with the same correction):", ""]
        lines += [f"- {md.code(c)}: **{md.text(v['verdict'])}** ({md.text(v['rows_where_it_holds'])} of "
                  f"{md.text(v['rows'])} rows)." for c, v in composition.items()]
        lines += ["", "| row | " + " | ".join(f"best single | {md.cell(v['composition'])} minus it | Holm p"
                                              for v in composition.values()) + " |",
                  "|---|" + "---|---|---|" * len(composition)]
        rows = list(dict.fromkeys(r for v in composition.values() for r in v["per_row"]))
        cells = []
        for r in rows:
            row = []
            for v in composition.values():
                entry = v["per_row"].get(r)
                row.append("— | — | —" if entry is None else
                           f"{md.cell(entry['best_single'])} | {_fmt(entry['composition_minus_best_single'])} | "
                           f"{_pvalue(entry['composition_minus_best_single'])}")
            cells.append(f"| {md.cell(r)} | " + " | ".join(row) + " |")
        lines += cells + [""]
    centering = {c: part["centering_makes_rotation_work"] for c, part in corrections.items()
                 if "centering_makes_rotation_work" in part}
    if centering:
        lines += ["**Centering before rotating** (Figure 4): each centering point minus the same point without "
                  "centering, paired, under each correction (Holm over each correction's table):", ""]
        lines += [f"- {md.code(c)}: **{md.text(v['verdict'])}**: significantly better on {v['better']}, worse on "
                  f"{v['worse']} of {v['tested']} comparisons"
                  + (" (the `all` row alone: no role-by-role verdict)." if v.get("rows") == [ALL] else ".")
                  for c, v in centering.items()]
        lines.append("")
        for c, v in centering.items():
            comparisons = v["comparisons"]
            lines += [f"{md.code(c)}:", "", "| row | " + " | ".join(map(md.cell, comparisons)) + " |",
                      "|---|" + "---|" * len(comparisons)]
            rows = next(iter(comparisons.values()))
            lines += [f"| {md.cell(r)} | " + " | ".join(_fmt(comparisons[k][r]) if comparisons[k][r] else "—"
                                                       for k in comparisons) + " |" for r in rows]
            lines.append("")
    return lines


def _pvalue(ci: dict | None) -> str:
    if ci is None or ci.get("p") is None:
        return "—"
    return f"{ci.get('p_holm', ci['p']):.2g}"


def study(config_path: str | None, flags: dict, block_view: str | None = None, fresh: bool = False,
          report: bool = False) -> int:
    """``hadabench sensitivity``: the run's flags, with the study's defaults under them.
    ``report``: only write the report of the cells finished so far (a study still running)."""
    config = load_config(config_path, flags, defaults=STUDY_DEFAULTS, fresh=fresh)
    if report and fresh:
        raise UserError("--report writes the report of a study's finished cells: not with --fresh")
    run = SensitivityStudy(config, block_view=block_view, fresh=fresh)
    run.prepare()
    return run.report() if report else run.execute()
