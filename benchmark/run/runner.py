"""``hadabench run``: captions -> full-precision reference -> calibration -> cells -> results.

A cell is one precision x one transform. ``Run`` orchestrates; what it keeps is the run
folder's (``benchmark.run.folder``), what a cell does is ``benchmark.run.cells``'s, what made
the numbers is ``benchmark.run.provenance``'s, and the metrics are ``benchmark.run.scoring``'s.

A second run into the same folder skips the finished cells; killing a run loses at most the
cell in flight, since results.json is replaced atomically after each cell. ``fresh=True``
(``--fresh``) starts over instead, once the configuration has been checked.

Subclasses (the sensitivity study) change what the cells are and what follows them through
the public hooks ``config_hash``, ``jobs``, ``after_cells`` and ``annotate``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sys
import time
from datetime import datetime, timezone

import torch
from tqdm import tqdm

from benchmark.captions import load_captions, make_splits
from benchmark.errors import UserError
from benchmark.logs import get_logger
from benchmark.metrics.registry import default_tolerance
from benchmark.models import load_model
from benchmark.plugins import load_plugin_file
from benchmark.quant import numerics
from benchmark.quant.kernels import resolve_kernel
from benchmark.results.schema import OK, SCHEMA
from benchmark.run.calibration import DEFAULT_CACHE, calibrate, caption_seeds
from benchmark.run.cells import CellJob, generate_part, joined, score_cell, summary
from benchmark.run.config import RunConfig, hashed_differences
from benchmark.run.distributed import BATCH_SIZE, Processes, is_main_process
from benchmark.run.folder import RunFolder, check_folder, save_images
from benchmark.run.provenance import environment
from benchmark.run.qat import record_teacher
from benchmark.run.scoring import Scorers
from benchmark.run.subset import Subset
from benchmark.transform import exactness
from benchmark.transform.registry import create_transform, transforms

__all__ = ["Run", "log", "progress"]


def log(message: str) -> None:
    if is_main_process():  # one voice per run, however many processes
        get_logger("run").info(message)


def resolve_device(requested: str | None) -> str:
    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    return requested


@contextlib.contextmanager
def progress(model, captions: int, steps: int, label: str, batch_size: int = 16):
    """A progress bar over denoising steps: it ticks on every call of the transformer,
    which both adapters make once per step for a batch of captions (guidance included)."""
    total = -(-captions // batch_size) * steps
    # disable=None: no bar when stderr is not a terminal; the other processes show none
    with tqdm(total=total, desc=label, unit="step", leave=False, file=sys.stderr,
              disable=None if is_main_process() else True) as bar:
        handle = model.transformer.register_forward_hook(lambda *_: bar.update())
        try:
            yield bar
        finally:
            handle.remove()


class Run:
    """One configured run into one folder."""

    def __init__(self, config: RunConfig, fresh: bool = False):
        self.config, self.fresh = config, fresh
        self.folder = RunFolder(config.out)
        self.out, self.results_path = self.folder.path, self.folder.results_path
        self.failed = 0
        self.done = {"computed": 0, "skipped": 0}  # this invocation's cells
        self.cells_seconds = 0.0

    # -- hooks: what the cells are, what identifies them, what follows them --
    def config_hash(self, config: RunConfig) -> str:
        """What the numbers mean: a folder's results and this run must agree on it."""
        return config.hash()

    def jobs(self, targets) -> list[CellJob]:
        """The cells, in the order they run: every precision x every transform."""
        return [CellJob(precision, spec) for precision in self.config.precisions for spec in self.config.transforms]

    def after_cells(self, reference) -> None:
        """When the cells are done: the paper's Figure 3, one grid per precision."""
        cells = list(self.results["cells"].values())  # every row of the folder, resumed ones too
        for precision in self.config.precisions:
            self.results["grids"][precision] = self.folder.write_grid(precision, cells, reference.images)

    def annotate(self, results: dict) -> None:
        """Add to the results document before each save (a study marks its file)."""

    # -- set-up: everything that can refuse the run happens before anything is written --
    def prepare(self) -> None:
        self.processes = Processes.start()
        self.lock = None
        try:
            self.processes.agree(self._prepare)  # a refusal on one process stops them all
        except BaseException:
            if self.lock is not None:
                self.lock.release(undo=True)  # refused: the folder is left as it was
            raise

    def _prepare(self) -> None:
        config = self.config
        for plugin in config.plugins:
            load_plugin_file(plugin)
        for spec in config.transforms:
            create_transform(spec.name, **dict(spec.params))  # unknown names/params: refuse now
        self.device = self.processes.device(resolve_device(config.device))
        numerics.require(config.numerics, self.device)
        resolve_kernel(config.kernel, self.device)  # triton where it cannot run: refuse now
        self.sources = {spec.label: transforms()[spec.name] for spec in config.transforms}
        self.exactness: dict[str, tuple] = {}  # per transform label, shared by its precisions
        self.hash = self.config_hash(config)
        self.results = None
        self.folder.check()
        check_folder(config.cache_dir or DEFAULT_CACHE, "--cache-dir")
        source_path = {"coco": config.coco_annotations, "file": config.caption_file}.get(config.captions)
        self.splits = make_splits(load_captions(config.captions, source_path), config.calib_size,
                                  config.eval_size, seed=config.seed)
        if self.processes.is_main:  # one run per folder, from here to the end of execute()
            self.lock = self.folder.lock()
        self._resume_or_load()

    def _resume_or_load(self) -> None:
        config = self.config
        previous = None if self.fresh else self.folder.read_results()
        if previous is not None:
            # a run of some of the folder's precisions joins it: the folder's hash covers them all
            recorded = previous["config"].get("precisions", [])
            if set(config.precisions) <= set(recorded) and set(config.precisions) != set(recorded):
                self.hash = self.config_hash(dataclasses.replace(config, precisions=list(recorded)))
            if previous["config_hash"] != self.hash:
                differ = hashed_differences(previous["config"], config.to_json())
                raise UserError(f"{self.out} holds results of another configuration (hash "
                                f"{previous['config_hash']}, this run {self.hash}; different "
                                f"{', '.join(differ) or 'hash definition'}): choose another --out")
            # the device is not in the configuration ("cuda when available"), but its cells
            # and reference would not compare with this run's
            was = torch.device(previous.get("environment", {}).get("device", self.device)).type
            now = torch.device(self.device).type
            if was != now:
                raise UserError(f"{self.out} holds results computed on {was}, and this run is on "
                                f"{now}: use --fresh or another --out")
            self.results = previous
        tick = time.perf_counter()
        self.model = load_model(config.model, dtype=getattr(torch, config.dtype), device=self.device)
        if self.results is not None:  # resuming: the finished cells must be of these weights and captions
            for what, now in (("model", self.model.fingerprint()), ("captions", self.splits.manifest)):
                if self.results[what] != json.loads(json.dumps(now)):
                    raise UserError(f"{self.out} holds results of other {what} than this run's "
                                    "(same configuration): use --fresh or another --out")
        log(f"model: {config.model} ({config.dtype}, {self.device}), loaded in {time.perf_counter() - tick:.1f} s")
        self.model.check_steps(config.steps)  # a count its pipeline cannot run: refuse now
        self.subset = Subset.of(config.roles, config.blocks)
        self.subset.check(self.model.targets())  # roles and blocks of this model: refuse now

    # -- the run: from here on, results are written --
    def execute(self) -> int:
        try:
            with numerics.pinned(self.config.numerics, self.device) as described:
                self.numerics = described
                return self._execute()
        finally:
            if self.lock is not None:
                self.lock.release()

    def _execute(self) -> int:
        config, splits, model, main = self.config, self.splits, self.model, self.processes.is_main
        if self.fresh and main:
            self.folder.clear()
        evaluation = [c.text for c in splits.evaluation]
        seeds = caption_seeds(len(evaluation), config.seed)

        if self.results is None:
            self.results = {
                "schema": SCHEMA, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "config": config.to_json(), "config_hash": self.hash,
                "environment": environment(self.out, self.device, self.processes.count, self.numerics),
                "captions": splits.manifest, "model": model.fingerprint(), "cells": {}, "grids": {},
                "tolerance": default_tolerance(),  # so that this run can serve as a baseline
            }
        else:  # resuming, perhaps with more transforms: the folder's configuration holds them all
            self.results["config"] = _union(self.results["config"], config.to_json())
        self.results = self.processes.broadcast(self.results)  # the main process's, resumed or new
        reference = self._reference(model, evaluation, seeds)  # on the main process only
        scorers = Scorers(config, self.device) if main else None
        if main:
            self.results["metric_setup"] = scorers.setup()
        if main and "reference" not in self.results:
            tick = time.perf_counter()
            self.results["reference"] = {
                "settings": reference.settings,
                "metrics": scorers.reference(reference.images, evaluation),
                "timings": {"generate_s": self._reference_seconds, "metrics_s": time.perf_counter() - tick},
            }
            self.save()

        log(f"calibration: {len(splits.calibration)} captions x {config.steps} steps")
        tick = time.perf_counter()
        with progress(model, len(splits.calibration), config.steps, "calibration"):
            stats, info = calibrate(model, [c.text for c in splits.calibration], steps=config.steps,
                                    seed=config.seed, guidance_scale=config.guidance_scale,
                                    cache_dir=config.cache_dir or DEFAULT_CACHE,
                                    max_sample_tokens=config.calib_sample_tokens, processes=self.processes,
                                    hessian=config.weight_rounding == "gptq")
        log(f"calibration: {'from the cache' if info.status == 'hit' else 'collected'} ({info.path})")
        self.results["calibration"] = {"cache": info.status, "key": info.key, "path": str(info.path),
                                       "sample_tokens": config.calib_sample_tokens,
                                       "collect_s": info.seconds, "seconds": time.perf_counter() - tick}
        self.save()

        tick = time.perf_counter()
        self.run_cells(self.jobs(model.targets()), scorers, evaluation, seeds, reference, stats)
        self.cells_seconds = time.perf_counter() - tick
        if main:
            self.after_cells(reference)
            self.save()
            self._report_times()
        return self.processes.finish(1 if self.failed else 0)

    def _report_times(self) -> None:
        """Where the time went (of the work recorded in the results, resumed cells included),
        and what this invocation did."""
        cells = [c for c in self.results["cells"].values() if c["timings"]]
        reference = self.results["reference"]["timings"]
        parts = {"reference": reference.get("generate_s", 0.0),
                 "calibration": self.results["calibration"].get("collect_s", 0.0),
                 "cells (quantize + fine-tune + generate)": sum(
                     c["timings"].get("quantize_s", 0) + c["timings"].get("qat_s", 0) +
                     c["timings"].get("generate_s", 0) for c in cells),
                 "metrics": reference.get("metrics_s", 0.0) + sum(c["timings"].get("metrics_s", 0) for c in cells)}
        log("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()) +
            f"; this run: {self.done['computed']} cells computed, {self.done['skipped']} done before, "
            f"{self.failed} failed; the folder: {len(self.results['cells'])} cells; results in {self.results_path}")

    # -- the full-precision reference --
    def _reference_key(self, model, captions, seeds) -> str:
        """What the reference depends on, like the calibration cache's key: stored in the
        file's header, and a file with another key is generated again, never reused."""
        guidance = self.config.guidance_scale
        return json.dumps({
            "model": model.fingerprint(),
            "captions_sha256": hashlib.sha256("\n".join(captions).encode("utf-8")).hexdigest(),
            "seeds": list(seeds), "steps": self.config.steps, "dtype": self.config.dtype,
            "guidance_scale": model.default_settings().get("guidance_scale") if guidance is None else guidance,
        }, sort_keys=True)

    def _reference(self, model, captions, seeds):
        key = self._reference_key(model, captions, seeds)
        self._reference_seconds = 0.0
        reused = None
        if self.processes.is_main:
            settings = self.results.get("reference", {}).get("settings", {})
            reused = self.folder.read_reference(key, captions, seeds, settings)
        if self.processes.broadcast(reused is not None):
            return reused
        log(f"reference: full-precision generation of {len(captions)} captions x {self.config.steps} steps")
        tick = time.perf_counter()

        def generate(_, part):
            with progress(model, len(captions[part]), self.config.steps, "reference"):
                return model.generate(captions[part], seeds[part], steps=self.config.steps,
                                      batch_size=BATCH_SIZE, guidance_scale=self.config.guidance_scale)

        outcomes = [outcome for _, outcome in self.processes.map([None], len(captions), generate)]
        if not outcomes:
            return None  # not the main process: its part went to the main one
        if outcomes[0].error is not None:
            raise RuntimeError(f"the full-precision reference failed: {outcomes[0].error}")
        generation = joined(outcomes[0].parts)
        self._reference_seconds = time.perf_counter() - tick
        self.folder.write_reference(generation, key)
        return generation

    # -- the cells --
    def run_cells(self, jobs: list[CellJob], scorers, captions, seeds, reference, stats) -> None:
        """The cells ``jobs`` not done before with the same code, spread over the processes;
        the main process scores and saves each."""
        todo = []
        for job in jobs:
            done = self.results["cells"].get(job.key)
            code = self.sources[job.spec.label].code
            damage = None if done is None or done["status"] != OK or job.subset else \
                self.folder.images_damage(job.precision, job.spec.label, len(captions))
            if damage:
                log(f"{job.key}: done before, but {damage}: computed again")
            elif done is not None and done.get("code") == code:
                log(f"{job.key}: done before ({done['status']}), skipped")
                self.failed += done["status"] != OK
                self.done["skipped"] += 1
                continue
            if done is not None and not damage:
                log(f"{job.key}: its code changed ({done.get('code')} -> {code}), computed again")
            todo.append(job)
        teacher = self._teacher() if todo and self.config.qat_steps else None
        cells = self.processes.map(todo, len(captions), lambda job, part: generate_part(
            self.model, job, self.config, self.subset, stats, self._exact(job.spec, stats),
            captions[part], seeds[part], progress, teacher))
        for job, outcome in cells:  # on the main process, after each round
            self.record_cell(job, outcome, scorers, captions, reference)

    def record_cell(self, job: CellJob, outcome, scorers, captions, reference) -> None:
        """The main process: score a cell from its gathered parts, save it and its images."""
        keep = None if job.subset else \
            (lambda generation: save_images(generation.images, self.folder.cell_images(job.precision, job.spec.label)))
        configured = create_transform(job.spec.name, **dict(job.spec.params)).config()
        configured = json.loads(json.dumps(configured, default=repr))  # a plugin's may hold any object
        cell = score_cell(job, outcome, self.sources[job.spec.label], scorers, captions, reference, self.subset,
                          keep, configured)
        self.failed += cell["status"] != OK
        self.done["computed"] += 1
        self.results["cells"][job.key] = cell
        self.save()
        log(summary(job.key, cell))

    def _teacher(self):
        """Quantization-aware fine-tuning's teacher (``benchmark.run.qat``): the full-precision
        model's calls on the calibration captions, never the evaluation ones; on every process."""
        config, calibration = self.config, [c.text for c in self.splits.calibration]
        log(f"fine-tuning's teacher: {len(calibration)} calibration captions x {config.steps} steps, "
            f"{config.qat_steps} calls drawn")
        with progress(self.model, len(calibration), config.steps, "qat teacher"):
            teacher = record_teacher(self.model, calibration, config.steps, config.qat_steps, seed=config.seed,
                                     guidance_scale=config.guidance_scale, batch_size=BATCH_SIZE)
        self.results["qat_teacher"] = {"captions": "calibration", "calls": len(teacher.calls),
                                       "draws": teacher.draws, "seconds": teacher.seconds}
        return teacher

    def _exact(self, spec, stats) -> tuple[dict[str, float], float]:
        """Per group, the transform's relative error at full precision, and the seconds the
        check took (computed once per transform, for all its precisions)."""
        if spec.label not in self.exactness:
            tick = time.perf_counter()
            transform = create_transform(spec.name, **dict(spec.params))
            errors = exactness.model_exactness(self.model, transform, stats, kernel=self.config.kernel)
            self.exactness[spec.label] = errors, time.perf_counter() - tick
        return self.exactness[spec.label]

    def save(self) -> None:
        if self.processes.is_main:  # the other processes write nothing
            self.annotate(self.results)
            self.folder.write_results(self.results)


def _union(previous: dict, current: dict) -> dict:
    """A resumed folder's configuration: the earlier one, its transforms and plugins joined
    by this run's (not hashed: each cell records its own transform and code)."""
    merged = dict(previous)
    for key in ("transforms", "plugins"):
        merged[key] = list(previous.get(key, [])) + [item for item in current[key]
                                                     if item not in previous.get(key, [])]
    return merged
