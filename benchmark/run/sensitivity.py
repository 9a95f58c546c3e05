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
hadanorm = C+S+R) and quarot is R+-.

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
from benchmark.results import markdown as md
from benchmark.results.schema import OK, cell_key, metric_value
from benchmark.results.stats import (
    ALPHA,
    BOOTSTRAP,
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

__all__ = ["LATTICE", "BOOTSTRAP", "SensitivityStudy", "mean_ci", "paired_ci", "point_name", "study"]

_POINTS = [dict(center=c, alpha=s, rotation=r) for r in (False, True) for s in (False, True)
           for c in (False, True)]
_SIGNED = [p for p in _POINTS if p["rotation"]]


def _spec(center=False, alpha=False, rotation=False, signs=False) -> str:
    params = [k for k, on in (("center=true", center), ("alpha=0.5", alpha), ("rotation=full", rotation),
                              ("random_signs=true", signs)) if on]
    return f"affine({', '.join(params)})" if params else "affine"


LATTICE = ([_spec(**p) for p in sorted(_POINTS, key=lambda p: (sum(p.values()), p["rotation"], p["alpha"]))]
           + [_spec(**p, signs=True) for p in sorted(_SIGNED, key=lambda p: (sum(p.values()), p["alpha"]))])
# The baselines that are points of the lattice (at their default hyper-parameters).
BASELINE_OF = {"none": "none", "C": "dyncenter", "S": "smoothquant", "S+R": "sdcb",
               "C+S+R": "hadanorm", "R±": "quarot"}
POINT_OF = {baseline: point for point, baseline in BASELINE_OF.items()}
STUDY_DEFAULTS = {"precisions": ["a4"], "transforms": LATTICE, "metrics": ["sqnr"],
                  "out": "results/sensitivity"}
ALL = "all"  # the row with every role quantized at once

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
    """Adds "p_holm" to each tested difference of one claim: Holm's correction over them all."""
    tested = [ci for ci in family if ci is not None and ci.get("p") is not None]
    for ci, q in zip(tested, holm_adjusted([ci["p"] for ci in tested]), strict=True):
        ci["p_holm"] = q


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
    baseline at its defaults); the label for anything else."""
    params = dict(spec.params)
    if spec.name in POINT_OF and not params:
        return POINT_OF[spec.name]
    if spec.name != "affine" or set(params) - {"center", "alpha", "rotation", "random_signs"} \
            or params.get("alpha") not in (None, 0.5) or params.get("rotation") not in (None, "full"):
        return spec.label
    name = "+".join(letter for letter, on in (("C", params.get("center")), ("S", params.get("alpha") is not None),
                                              ("R", params.get("rotation"))) if on) or "none"
    return name + ("±" if params.get("random_signs") else "")


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
        # What the claims need first (so that an interrupted study already answers them), then
        # the blocks view, the other columns, and the all-roles row.
        order = {name: i for i, name in enumerate(CLAIM_COLUMNS)}
        columns = sorted(self.config.transforms, key=lambda s: order.get(point_name(s), len(order)))
        cells = [(spec, Subset((role,), self.subset.blocks)) for spec in columns for role in roles]
        first = sum(point_name(s) in CLAIM_COLUMNS for s in columns) * len(roles)
        cells[first:first] = \
            [(self.block_spec, Subset((role,), (block,))) for role in roles for block in blocks]
        cells += [(spec, None) for spec in self.config.transforms]  # None: the plain run's cell
        return cells

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
    out = {"rows": [ALL, *roles], "blocks": blocks,
           "columns": [{"name": n, "label": s.label} for n, s in columns], "tables": {}}
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
# output projection, are the worst quantizers; HadaNorm helps every quantizer but the text
# input of cross-attention. Figure 4: the composition beats any single ingredient, and
# centering is what makes the Hadamard rotation work.
# Read as: the image-token inputs of attention (q/k/v, cross-attention q) and of the FFN (both
# linears), and the self-attention output projection; the others are cross-attention's text
# input and output projection.
PAPER_WORST = ("self_attn_qkv", "self_attn_out", "cross_attn_q", "ffn_up", "ffn_down")
TEXT_INPUT = "cross_attn_kv"
SINGLES = ("C", "S", "R")
CLAIM_COLUMNS = ("none", *SINGLES, "C+S+R", "C+R", "S+R")  # in the order they run
VERDICT = {1: "holds", -1: "does not hold", 0: "undecided (no significant difference decides it)"}


def claims(per_sample: dict, roles: list[str], names: list[str]) -> dict:
    def diff(row, a, b):
        if per_sample.get((row, a)) is None or per_sample.get((row, b)) is None:
            return None
        return paired_ci(per_sample[row, a], per_sample[row, b])

    out = {}
    # 1. worst quantizers, without a transform: every claimed-worst role below every other
    base = "none" if "none" in names else names[0]
    claimed = [r for r in PAPER_WORST if r in roles]
    others = [r for r in roles if r not in claimed]
    pairs = []
    for c in claimed:
        for o in others:
            if per_sample.get((o, base)) and per_sample.get((c, base)):
                pairs.append({"worse": c, "other": o,
                              "other_minus_worse": paired_ci(per_sample[o, base], per_sample[c, base])})
    _holm([p["other_minus_worse"] for p in pairs])
    ranking = sorted((r for r in roles if per_sample.get((r, base))),
                     key=lambda r: float(np.mean(per_sample[r, base])))
    signs = [_sign(p["other_minus_worse"]) for p in pairs]
    verdict = -1 if -1 in signs else (1 if signs and all(s == 1 for s in signs) else 0)
    out["worst_quantizers"] = {"transform": base, "claimed_worst": claimed, "ranking_worst_first": ranking,
                               "pairs": pairs, "verdict": VERDICT[verdict]}
    # 2. HadaNorm (C+S+R) against no transform, per role
    if "C+S+R" in names and base in names:
        per_role = {r: diff(r, "C+S+R", base) for r in roles}
        _holm(per_role.values())
        signs = {r: _sign(ci) for r, ci in per_role.items()}
        helped = [r for r in roles if r != TEXT_INPUT]
        ok = all(signs[r] == 1 for r in helped) and signs.get(TEXT_INPUT, 0) != 1
        bad = any(signs[r] == -1 for r in helped) or signs.get(TEXT_INPUT) == 1
        out["hadanorm_helps_all_but_text"] = {
            "difference": "C+S+R minus none", "per_role": per_role,
            "helps": [r for r in roles if signs[r] == 1], "hurts": [r for r in roles if signs[r] == -1],
            "verdict": VERDICT[1 if ok else -1 if bad else 0]}
    # 3. the composition against the best single ingredient, and centering before rotating
    if "C+S+R" in names and all(s in names for s in SINGLES):
        rows, signs = {}, []
        for row in [ALL, *roles]:
            if per_sample.get((row, "C+S+R")) is None:
                continue
            best = max(SINGLES, key=lambda s: float(np.mean(per_sample[row, s]))
                       if per_sample.get((row, s)) else -math.inf)
            ci = diff(row, "C+S+R", best)
            rows[row] = {"best_single": best, "composition_minus_best_single": ci}
        _holm([v["composition_minus_best_single"] for v in rows.values()])
        signs = [_sign(v["composition_minus_best_single"]) for v in rows.values()]
        verdict = 1 if signs and all(s == 1 for s in signs) else -1 if -1 in signs else 0
        out["composition_beats_single"] = {"per_row": rows, "verdict": VERDICT[verdict],
                                           "rows_where_it_holds": sum(s == 1 for s in signs),
                                           "rows": len(signs)}
    centering = {}
    for with_c, without in (("C+R", "R"), ("C+S+R", "S+R"), ("C+R±", "R±"), ("C+S+R±", "S+R±")):
        if with_c in names and without in names:
            centering[f"{with_c} minus {without}"] = {row: diff(row, with_c, without) for row in [ALL, *roles]}
    if centering:
        _holm([ci for comparison in centering.values() for ci in comparison.values()])
        out["centering_makes_rotation_work"] = centering
    return out


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
             "same point.", "",
             *([f"**Partial: {md.text(study['cells']['finished'])} of {md.text(study['cells']['planned'])} "
                "cells finished**; the command below, without `--fresh`, resumes the rest.", ""]
               if study["cells"]["finished"] < study["cells"]["planned"] else []),
             f"Time (torch threads: {md.text(results['environment']['torch_threads'])}; a 2-core machine "
             "shared with "
             f"other work, so under load): {timing['per_cell_s']:.0f} s per cell on average "
             f"({n} captions x {md.text(config['steps'])} steps), reference {timing['reference_s']:.0f} s, "
             f"calibration {timing['calibration_s']:.0f} s; all {md.text(study['cells']['planned'])} cells about "
             f"{timing['study_min']:.0f} minutes. Regenerate:", "",
             "```bash", STUDY_COMMAND, "```", ""]
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
        lines += [f"## {model} · {md.text(precision)}: roles x transforms", "",
                  md.link("roles x transforms", name, out, out, image=True), "",
                  "| role | " + " | ".join(md.cell(_column_title(c)) for c in columns) + " |",
                  "|---|" + "---|" * len(columns)]
        lines += [f"| {md.cell(r)} | " + " | ".join(_fmt(tables["roles"][r][c]) for c in columns) + " |"
                  for r in role_rows]
        lines += ["", f"## {model} · {md.text(precision)}: blocks x roles, {md.code(study['block_view'])}", "",
                  md.link("blocks x roles", block_name, out, out, image=True), "",
                  "| role | " + " | ".join(md.cell(f"block {b}") for b in blocks) + " |",
                  "|---|" + "---|" * len(blocks)]
        lines += [f"| {md.cell(r)} | " + " | ".join(_fmt(tables["blocks"][r][b]) for b in blocks) + " |"
                  for r in role_rows[1:]]
        lines += ["", *_claims_markdown(tables["claims"])]
    write_atomic(out / "README.md", "\n".join(lines) + "\n")


STUDY_COMMAND = "python -m benchmark sensitivity --config leaderboard/sensitivity/study.toml --fresh"


def _claims_markdown(claims: dict) -> list[str]:
    lines = ["### The paper's claims, tested", "",
             "Each verdict comes from paired differences over the same captions (mean and "
             f"{describe_interval()}, dB; * significant: {describe_test()}, with Holm's correction "
             f"over the comparisons of the claim at family-wise {ALPHA:g}): *holds* when every "
             "difference it needs is significant on the claimed side of 0, *does not hold* when one is "
             "significant on the other side, otherwise *undecided*.", ""]
    def listed(names) -> str:
        return md.text(", ".join(map(str, names)))

    worst = claims["worst_quantizers"]
    lines += [f"**1. The worst quantizers are {listed(worst['claimed_worst'])}** (the image-token inputs "
              f"of attention and of the FFN, and the self-attention output projection; transform "
              f"{md.code(worst['transform'])}): **{md.text(worst['verdict'])}**. Worst first: "
              f"{listed(worst['ranking_worst_first'])}.", "",
              "| claimed worse | other role | other minus claimed |", "|---|---|---|"]
    lines += [f"| {md.cell(p['worse'])} | {md.cell(p['other'])} | {_fmt(p['other_minus_worse'])} |"
              for p in worst["pairs"]]
    lines.append("")
    if "hadanorm_helps_all_but_text" in claims:
        c = claims["hadanorm_helps_all_but_text"]
        lines += [f"**2. HadaNorm (C+S+R) helps every quantizer except the text input ({md.text(TEXT_INPUT)})**: "
                  f"**{md.text(c['verdict'])}**. Helps: {listed(c['helps']) or 'none'}; hurts: "
                  f"{listed(c['hurts']) or 'none'}.", "", "| role | C+S+R minus none |", "|---|---|"]
        lines += [f"| {md.cell(r)} | {_fmt(ci)} |" for r, ci in c["per_role"].items()]
        lines.append("")
    if "composition_beats_single" in claims:
        c = claims["composition_beats_single"]
        lines += [f"**3. The composition beats any single ingredient**: **{md.text(c['verdict'])}** "
                  f"({md.text(c['rows_where_it_holds'])} of {md.text(c['rows'])} rows).", "",
                  "| row | best single | C+S+R minus it |", "|---|---|---|"]
        lines += [f"| {md.cell(r)} | {md.cell(v['best_single'])} | {_fmt(v['composition_minus_best_single'])} |"
                  for r, v in c["per_row"].items()]
        lines.append("")
    if "centering_makes_rotation_work" in claims:
        comparisons = claims["centering_makes_rotation_work"]
        lines += ["**Centering before rotating** (Figure 4): paired differences.", "",
                  "| row | " + " | ".join(map(md.cell, comparisons)) + " |", "|---|" + "---|" * len(comparisons)]
        rows = next(iter(comparisons.values()))
        lines += [f"| {md.cell(r)} | " + " | ".join(_fmt(comparisons[k][r]) for k in comparisons) + " |"
                  for r in rows]
        lines.append("")
    return lines


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
