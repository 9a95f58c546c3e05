"""A cell: one precision x one transform (x, in a study, one subset of the targets).

``generate_part`` is one process's share of a cell: the exactness check, then quantize and
generate its captions. ``score_cell`` (the main process) joins the parts, scores them against
the full-precision reference and builds the cell's record; a transform that raises, is not
exact, or generates NaN fails its own cell, never the run.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from benchmark.metrics.registry import metric_specs
from benchmark.models.base import Generation
from benchmark.quant.grid import Precision
from benchmark.results.schema import FAILED, OK, cell_key, metric_value
from benchmark.results.stats import recorded_spread
from benchmark.run.config import RunConfig, TransformSpec
from benchmark.run.distributed import BATCH_SIZE, failure
from benchmark.run.qat import Teacher, finetune
from benchmark.run.subset import Subset
from benchmark.transform import exactness

__all__ = ["CellJob", "generate_part", "joined", "same_alphas", "score_cell", "summary"]


@dataclass(frozen=True)
class CellJob:
    precision: str
    spec: TransformSpec
    subset: Subset | None = None  # a study's cell: keyed by it, no images; None: the run's own

    @property
    def key(self) -> str:
        return cell_key(self.precision, self.spec.label) + (f" [{self.subset.label}]" if self.subset else "")


def generate_part(model, job: CellJob, config: RunConfig, run_subset: Subset, stats, exact: tuple[dict, float],
                  captions, seeds, progress, teacher: Teacher | None = None) -> dict:
    """This process's part of a cell: the exactness check's outcome (``exact``: per group error
    and seconds), then quantize, fine-tune on the ``teacher``'s calls when there is one
    (``--qat-steps``), and generate its captions (none when the transform is not exact and
    that is not allowed)."""
    errors, seconds = exact
    part = {"exact_errors": errors, "exactness": {**exactness.summarize(errors), "check_s": seconds}}
    if not part["exactness"]["exact"] and not config.allow_inexact:
        return part  # the main process fails the cell
    tick = time.perf_counter()
    quantized = dataclasses.replace(Precision.parse(job.precision), grid=config.grid,
                                    weight_rounding=config.weight_rounding or "rtn")
    with model.quantized(job.spec.name, quantized, stats, kernel=config.kernel,
                         only=(job.subset or run_subset).only(model.targets()), **dict(job.spec.params)) as groups:
        timings = {"quantize_s": time.perf_counter() - tick}
        if teacher is not None:
            part["qat"] = finetune(model, teacher, label=job.key)
            timings["qat_s"] = part["qat"]["seconds"]
        tick = time.perf_counter()
        with progress(model, len(captions), config.steps, job.key):
            generation = model.generate(captions, seeds, steps=config.steps, batch_size=BATCH_SIZE,
                                        guidance_scale=config.guidance_scale)
        timings["generate_s"] = time.perf_counter() - tick
    return {**part, "groups": groups, "kernel": sorted({g.get("kernel", "plugin") for g in groups.values()}),
            "timings": timings, "generation": generation}


def score_cell(job: CellJob, outcome, source, scorers, captions, reference, run_subset: Subset,
               keep: Callable[[Generation], None] | None = None, transform_config: dict | None = None) -> dict:
    """The cell's record from its gathered parts; ``keep(generation)`` (its images, saved)
    runs when it succeeded, and an error there fails the cell too. ``transform_config``: what
    the transform reports of itself (``Transform.config()``: constructor parameters too)."""
    cell = {"precision": job.precision, "transform": job.spec.name, "label": job.spec.label,
            "params": dict(job.spec.params), "transform_config": transform_config or {},
            "source": source.source, "code": source.code,
            "status": OK, "reason": None, "metrics": {}, "per_sample": {}, "groups": {}, "timings": {},
            "subset": (job.subset or run_subset).to_json()}
    # the transform is under test: fail its cell, go on
    reason, where = outcome.error, outcome.raised_at
    if reason is None:
        try:
            first = outcome.parts[0]
            errors = first["exact_errors"]
            cell["groups"] = {name: {"exact_error": error} for name, error in errors.items()}
            cell["exactness"] = first["exactness"]
            if any("generation" not in p for p in outcome.parts):
                raise exactness.NotExact(exactness.describe_failure(first["exactness"]))
            same_alphas(outcome.parts)
            cell["groups"] = {name: {**described, "exact_error": errors.get(name)}
                              for name, described in first["groups"].items()}
            cell["kernel"] = first["kernel"]
            if "qat" in first:
                cell["qat"] = first["qat"]
            # wall times of the slowest process
            cell["timings"] = {k: max(p["timings"][k] for p in outcome.parts) for k in first["timings"]}
            generation = joined([p["generation"] for p in outcome.parts])
            if not (torch.isfinite(generation.latents).all() and torch.isfinite(generation.images).all()):
                raise FloatingPointError("the generation produced NaN or Inf")
            tick = time.perf_counter()
            cell["metrics"], cell["per_sample"] = scorers.cell(reference, generation, captions)
            cell["timings"]["metrics_s"] = time.perf_counter() - tick
            if keep is not None:
                keep(generation)
        except Exception as error:
            reason, where = failure(error)
    if reason is not None:
        cell["status"], cell["reason"], cell["raised_at"] = FAILED, reason, where
    return cell


def same_alphas(parts: list[dict]) -> None:
    """Raise unless every process's part of a cell was generated with the same alphas:
    alpha="auto" is searched on each process, and processes whose numerics differ (other
    machines, other GPUs) could choose differently, making one cell of two models."""
    chosen = [{name: group.get("alpha") for name, group in part["groups"].items()} for part in parts]
    for other in chosen[1:]:
        for name, alpha in chosen[0].items():
            if other.get(name) != alpha:
                raise RuntimeError(f"the processes chose different alphas for {name} ({alpha} and "
                                   f"{other.get(name)}): run them on one kind of machine, or fix alpha")


def joined(parts: list) -> Generation:
    """One generation from the generations of consecutive batches."""
    return Generation([c for p in parts for c in p.captions], [s for p in parts for s in p.seeds],
                      torch.cat([p.latents for p in parts]), torch.cat([p.images for p in parts]),
                      parts[0].settings)


def summary(key: str, cell: dict) -> str:
    """The one line a finished cell prints."""
    if cell["status"] != OK:
        return f"{key}: FAILED ({cell['reason']})"
    shown = []
    for spec in metric_specs().values():
        entry = cell["metrics"].get(spec.key)
        if entry is not None and spec.per_sample:
            shown.append(f"{spec.key} {spec.show(metric_value(entry))}{recorded_spread(entry)}")
    if cell.get("qat"):
        shown.append(f"qat loss {cell['qat']['initial_loss']:.4g} -> {cell['qat']['final_loss']:.4g}")
    seconds = sum(cell["timings"].values())
    inexact = "" if cell.get("exactness", {}).get("exact", True) else \
        f"  INEXACT at fp (relative error {cell['exactness']['worst_relative_error']:.2e}, allowed)"
    return f"{key}: {', '.join(shown)}  ({seconds:.1f} s){inexact}"
