"""``hadabench run``: captions -> full-precision reference -> calibration -> cells -> results.

A cell is one precision x one transform. The run folder holds everything a run makes:

    results.json            the results (benchmark/results/schema.py), rewritten after every cell
    reference.safetensors   the full-precision generation, reused by every cell and by reruns
    images/<cell>/NN.png    the generated images of each cell (and images/fp/ for the reference)
    grid_<precision>.png    the paper's Figure 3: a row per caption, a column per transform
    .hadabench.lock         locked by the run in progress: one run per folder (runfolder.py)

A second run into the same folder skips the finished cells; killing a run loses at most the
cell in flight, since results.json is replaced atomically after each cell. ``fresh=True``
(``--fresh``) starts over instead, once the configuration has been checked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import platform
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from benchmark._version import __version__
from benchmark.captions import load_captions, make_splits
from benchmark.errors import UserError
from benchmark.fileio import write_atomic, write_json
from benchmark.metrics.registry import default_tolerance, metric_specs
from benchmark.models import load_model
from benchmark.models.base import Generation
from benchmark.plugins import load_plugin_file
from benchmark.quant import numerics
from benchmark.quant.grid import Precision
from benchmark.quant.kernels import resolve_kernel
from benchmark.results.schema import FAILED, OK, SCHEMA, cell_key, metric_value, read_results
from benchmark.results.stats import recorded_half_width
from benchmark.run.calibration import DEFAULT_CACHE, calibrate, caption_seeds
from benchmark.run.config import RunConfig, hashed_differences
from benchmark.run.distributed import BATCH_SIZE, Processes, failure, is_main_process
from benchmark.run.folder import FolderLock, check_folder
from benchmark.run.scoring import Scorers
from benchmark.run.subset import Subset
from benchmark.transform import exactness
from benchmark.transform.registry import create_transform, transforms

RUN_FILES = ("results.json", "reference.safetensors", "images", "grid_*.png")  # what --fresh clears

GRID_CAPTIONS = 8  # rows of the Figure-3 grid


def log(message: str) -> None:
    if is_main_process():  # one voice per run, however many processes
        print(message, file=sys.stderr, flush=True)


def _versions() -> dict:
    out = {"hadabench": __version__, "python": platform.python_version()}
    for dist in ("torch", "diffusers", "transformers", "open_clip_torch", "pyiqa", "triton"):
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out


def _git_commit(out: Path) -> str | None:
    """HEAD of the checkout the package runs from, "-dirty" when tracked files changed
    (the run's own folder aside: a run into leaderboard/ rewrites tracked files)."""
    root = Path(__file__).resolve().parents[1]
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5)
        if done.returncode != 0:
            return None
        exclude = []
        with contextlib.suppress(ValueError):
            exclude = [f":(exclude){out.resolve().relative_to(root).as_posix()}"]
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no",
                                "--", ".", *exclude], capture_output=True, text=True, timeout=5).stdout.strip()
        return done.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def resolve_device(requested: str | None) -> str:
    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    return requested


def save_images(images: torch.Tensor, folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for index, array in enumerate(pixels):
        with Image.fromarray(array) as image:
            write_atomic(folder / f"{index:02d}.png", lambda tmp: image.save(tmp, format="PNG"))


def save_grid(columns: list[tuple[str, torch.Tensor]], path: Path, rows: int = GRID_CAPTIONS) -> None:
    """One row per caption, one column per (label, images), with labels above the columns."""
    from PIL import Image, ImageDraw

    size = 128
    label_height = 26  # two lines of about 20 characters
    grid = Image.new("RGB", (size * len(columns), label_height + size * min(rows, len(columns[0][1]))), "white")
    draw = ImageDraw.Draw(grid)
    for col, (label, images) in enumerate(columns):
        for line, text in enumerate(textwrap.wrap(label, 20, break_on_hyphens=False)[:2]):
            draw.text((col * size + 3, 1 + 12 * line), text, fill="black")
        pixels = (images[:rows].clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for row, array in enumerate(pixels):
            tile = Image.fromarray(array).resize((size, size), Image.NEAREST)
            grid.paste(tile, (col * size, label_height + row * size))
    write_atomic(path, lambda tmp: grid.save(tmp, format="PNG"))


@contextlib.contextmanager
def progress(model, captions: int, steps: int, label: str, batch_size: int = 16):
    """A progress bar over denoising steps: it ticks on every call of the transformer,
    which both adapters make once per step for a batch of captions (guidance included)."""
    from tqdm import tqdm

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
        self.out = Path(config.out)
        self.results_path = self.out / "results.json"
        self.failed = 0

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

        for plugin in self.config.plugins:
            load_plugin_file(plugin)
        for spec in self.config.transforms:
            create_transform(spec.name, **dict(spec.params))  # unknown names/params: refuse now
        self.device = self.processes.device(resolve_device(self.config.device))
        numerics.require(self.config.numerics, self.device)
        resolve_kernel(self.config.kernel, self.device)  # triton where it cannot run: refuse now
        self.sources = {spec.label: transforms()[spec.name] for spec in self.config.transforms}
        self.exactness: dict[str, tuple] = {}  # per transform label, shared by its precisions
        self.hash = self._config_hash()
        self.results = None
        check_folder(self.out, "--out")
        check_folder(self.config.cache_dir or DEFAULT_CACHE, "--cache-dir")
        config = self.config
        source_path = {"coco": config.coco_annotations, "file": config.caption_file}.get(config.captions)
        self.splits = make_splits(load_captions(config.captions, source_path), config.calib_size,
                                  config.eval_size, seed=config.seed)
        if self.processes.is_main:  # one run per folder, from here to the end of execute()
            lock = FolderLock(self.out)
            lock.acquire()
            self.lock = lock
        self._resume_or_load(load_model)

    def _resume_or_load(self, load_model) -> None:

        config = self.config
        if self.results_path.exists() and not self.fresh:
            previous = read_results(self.results_path)
            if previous["config_hash"] != self.hash:
                differ = hashed_differences(previous["config"], self.config.to_json())
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
        self.subset = Subset.of(config.roles, config.blocks)
        self.subset.check(self.model.targets())  # roles and blocks of this model: refuse now

    def _config_hash(self) -> str:
        return self.config.hash()

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
            self._clear()
        evaluation = [c.text for c in splits.evaluation]
        seeds = caption_seeds(len(evaluation), config.seed)

        if self.results is None:
            self.results = {
                "schema": SCHEMA, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "config": config.to_json(), "config_hash": self.hash,
                "environment": {**_versions(), "git_commit": _git_commit(self.out), "device": self.device,
                                "torch_threads": torch.get_num_threads(), "processes": self.processes.count,
                                "platform": platform.platform(), "numerics": self.numerics},
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
            self._save()

        log(f"calibration: {len(splits.calibration)} captions x {config.steps} steps")
        tick = time.perf_counter()
        with progress(model, len(splits.calibration), config.steps, "calibration"):
            stats, info = calibrate(model, [c.text for c in splits.calibration], steps=config.steps,
                                    seed=config.seed, guidance_scale=config.guidance_scale,
                                    cache_dir=config.cache_dir or DEFAULT_CACHE,
                                    max_sample_tokens=config.calib_sample_tokens, processes=self.processes)
        log(f"calibration: {'from the cache' if info.status == 'hit' else 'collected'} ({info.path})")
        self.results["calibration"] = {"cache": info.status, "key": info.key, "path": str(info.path),
                                       "sample_tokens": config.calib_sample_tokens,
                                       "collect_s": info.seconds, "seconds": time.perf_counter() - tick}
        self._save()

        self._cells(model, scorers, evaluation, seeds, reference, stats)
        if main:
            self._save()
            self._report_times()
        return self.processes.finish(1 if self.failed else 0)

    def _cells(self, model, scorers, evaluation, seeds, reference, stats) -> None:
        jobs = [(precision, spec, None) for precision in self.config.precisions for spec in self.config.transforms]
        self._run_cells(model, scorers, jobs, evaluation, seeds, reference, stats)
        if self.processes.is_main:
            for precision in self.config.precisions:
                self._grid(precision, reference)

    def _report_times(self) -> None:
        """Where the time went (of the work recorded in the results, resumed cells included)."""
        cells = [c for c in self.results["cells"].values() if c["timings"]]
        reference = self.results["reference"]["timings"]
        parts = {"reference": reference.get("generate_s", 0.0),
                 "calibration": self.results["calibration"].get("collect_s", 0.0),
                 "cells (quantize + generate)": sum(c["timings"].get("quantize_s", 0) +
                                                    c["timings"].get("generate_s", 0) for c in cells),
                 "metrics": reference.get("metrics_s", 0.0) + sum(c["timings"].get("metrics_s", 0) for c in cells)}
        log("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()) +
            f"; {len(cells)} cells, {self.failed} failed; results in {self.results_path}")

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
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file


        path = self.out / "reference.safetensors"
        key = self._reference_key(model, captions, seeds)
        self._reference_seconds = 0.0
        reused = None
        if self.processes.is_main and path.exists():
            try:
                with safe_open(path, "pt") as handle:
                    stored = (handle.metadata() or {}).get("key")
                if stored == key:
                    tensors = load_file(path)
                    log(f"reference: reusing {path}")
                    reused = Generation(captions, seeds, tensors["latents"], tensors["images"],
                                        self.results.get("reference", {}).get("settings", {}))
                else:
                    log(f"reference: {path} was generated with other settings; generating again")
            except Exception as error:  # a damaged cache is regenerated, never trusted
                log(f"reference: {path} unreadable ({error}); generating again")
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
        generation = _joined(outcomes[0].parts)
        self._reference_seconds = time.perf_counter() - tick
        tensors = {"latents": generation.latents.contiguous(), "images": generation.images.contiguous()}
        write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata={"key": key}))
        save_images(generation.images, self.out / "images" / "fp")
        return generation

    def _run_cells(self, model, scorers, jobs, captions, seeds, reference, stats) -> None:
        """The cells ``jobs`` (precision, spec, subset) not done before with the same code,
        spread over the processes; the main process scores and saves each. A subset (a study's
        cell: keyed by it, no images) stands instead of the run's; None: the run's."""
        todo = []
        for precision, spec, subset in jobs:
            key = self._cell_key(precision, spec, subset)
            done = self.results["cells"].get(key)
            code = self.sources[spec.label].code
            if done is not None and done.get("code") == code:
                log(f"{key}: done before ({done['status']}), skipped")
                self.failed += done["status"] != OK
                continue
            if done is not None:
                log(f"{key}: its code changed ({done.get('code')} -> {code}), computed again")
            todo.append((precision, spec, subset))
        cells = self.processes.map(todo, len(captions), lambda job, part: self._generate_cell(
            model, *job, stats, captions[part], seeds[part]))
        for (precision, spec, subset), outcome in cells:  # on the main process, after each round
            self._cell(scorers, precision, spec, outcome, captions, reference, subset)

    def _cell_key(self, precision, spec, subset: Subset | None) -> str:
        return cell_key(precision, spec.label) + (f" [{subset.label}]" if subset else "")

    def _generate_cell(self, model, precision, spec, subset, stats, captions, seeds) -> dict:
        """This process's part of a cell: the exactness check, then quantize and generate its
        batches (none when the transform is not exact and that is not allowed)."""
        errors, seconds = self._exact(model, spec, stats)
        part = {"exact_errors": errors, "exactness": {**exactness.summarize(errors), "check_s": seconds}}
        if not part["exactness"]["exact"] and not self.config.allow_inexact:
            return part  # the main process fails the cell
        tick = time.perf_counter()
        quantized = dataclasses.replace(Precision.parse(precision), grid=self.config.grid)
        with model.quantized(spec.name, quantized, stats, kernel=self.config.kernel,
                             only=(subset or self.subset).only(model.targets()), **dict(spec.params)) as groups:
            timings = {"quantize_s": time.perf_counter() - tick}
            tick = time.perf_counter()
            with progress(model, len(captions), self.config.steps, self._cell_key(precision, spec, subset)):
                generation = model.generate(captions, seeds, steps=self.config.steps, batch_size=BATCH_SIZE,
                                            guidance_scale=self.config.guidance_scale)
            timings["generate_s"] = time.perf_counter() - tick
        return {**part, "groups": groups, "kernel": sorted({g.get("kernel", "plugin") for g in groups.values()}),
                "timings": timings, "generation": generation}

    def _cell(self, scorers, precision, spec, outcome, captions, reference, subset: Subset | None) -> None:
        """The main process: score a cell from its gathered parts, save it and its images."""
        key = self._cell_key(precision, spec, subset)
        source = self.sources[spec.label]
        cell = {"precision": precision, "transform": spec.name, "label": spec.label,
                "params": dict(spec.params), "source": source.source, "code": source.code,
                "status": OK, "reason": None, "metrics": {}, "per_sample": {}, "groups": {}, "timings": {},
                "subset": (subset or self.subset).to_json()}
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
                # wall times of the slowest process
                cell["timings"] = {k: max(p["timings"][k] for p in outcome.parts) for k in first["timings"]}
                generation = _joined([p["generation"] for p in outcome.parts])
                if not (torch.isfinite(generation.latents).all() and torch.isfinite(generation.images).all()):
                    raise FloatingPointError("the generation produced NaN or Inf")
                tick = time.perf_counter()
                cell["metrics"], cell["per_sample"] = scorers.cell(reference, generation, captions)
                cell["timings"]["metrics_s"] = time.perf_counter() - tick
                if subset is None:
                    save_images(generation.images, self.out / "images" / precision / _safe(spec.label))
            except Exception as error:
                reason, where = failure(error)
        if reason is not None:
            cell["status"], cell["reason"], cell["raised_at"] = FAILED, reason, where
            self.failed += 1
        self.results["cells"][key] = cell
        self._save()
        log(_summary(key, cell))

    def _grid(self, precision, reference) -> None:
        import numpy as np
        from PIL import Image

        columns = [("full precision", reference.images)]
        for cell in self.results["cells"].values():  # every row of the folder, resumed ones too
            folder = self.out / "images" / precision / _safe(cell["label"])
            if cell["precision"] != precision or cell["status"] != OK or not folder.exists():
                continue
            files = sorted(folder.glob("*.png"))[:GRID_CAPTIONS]
            images = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1)
                                  for f in files]).float() / 255
            columns.append((cell["label"], images))
        name = f"grid_{precision}.png"
        save_grid(columns, self.out / name)
        self.results["grids"][precision] = name

    def _clear(self) -> None:
        import shutil

        for pattern in RUN_FILES:
            for path in self.out.glob(pattern):
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    def _exact(self, model, spec, stats) -> tuple[dict[str, float], float]:
        """Per group, the transform's relative error at full precision, and the seconds the
        check took (computed once per transform, for all its precisions)."""

        if spec.label not in self.exactness:
            tick = time.perf_counter()
            transform = create_transform(spec.name, **dict(spec.params))
            errors = exactness.model_exactness(model, transform, stats, kernel=self.config.kernel)
            self.exactness[spec.label] = errors, time.perf_counter() - tick
        return self.exactness[spec.label]

    def _save(self) -> None:
        if self.processes.is_main:  # the other processes write nothing
            write_json(self.results_path, self.results)


def _union(previous: dict, current: dict) -> dict:
    """A resumed folder's configuration: the earlier one, its transforms and plugins joined
    by this run's (not hashed: each cell records its own transform and code)."""
    merged = dict(previous)
    for key in ("transforms", "plugins"):
        merged[key] = list(previous.get(key, [])) + [item for item in current[key]
                                                     if item not in previous.get(key, [])]
    return merged


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


def _joined(parts: list) -> Generation:
    """One generation from the generations of consecutive batches."""

    return Generation([c for p in parts for c in p.captions], [s for p in parts for s in p.seeds],
                      torch.cat([p.latents for p in parts]), torch.cat([p.images for p in parts]),
                      parts[0].settings)


def _safe(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_.=" else "_" for ch in label)


def _summary(key: str, cell: dict) -> str:
    if cell["status"] != OK:
        return f"{key}: FAILED ({cell['reason']})"
    shown = []
    for spec in metric_specs().values():
        entry = cell["metrics"].get(spec.key)
        if entry is not None and spec.per_sample:
            half = recorded_half_width(entry)
            spread = f" ± {half:.3f}" if half is not None else ""
            shown.append(f"{spec.key} {spec.show(metric_value(entry))}{spread}")
    seconds = sum(cell["timings"].values())
    inexact = "" if cell.get("exactness", {}).get("exact", True) else \
        f"  INEXACT at fp (relative error {cell['exactness']['worst_relative_error']:.2e}, allowed)"
    return f"{key}: {', '.join(shown)}  ({seconds:.1f} s){inexact}"
