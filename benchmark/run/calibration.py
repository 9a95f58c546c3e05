"""Calibration: one pass over the calibration captions through every denoising step, collecting
``CalibrationStats`` for the input of every target group, cached on disk.

    stats, info = calibrate(model, read_captions("benchmark/data/embedded/calibration.txt"))
    described = model.quantize("hadanorm", "w4a4", stats)   # describe() records the alphas

The cache is keyed by the model's fingerprint (weights hash, or path + size + mtime), the
captions (sha256), the steps, the seed, the guidance scale and the sampling budget, so every
transform and precision reuses one pass. A cache whose files are missing, unreadable, altered
or written for another key is reported and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmark.captions import load_captions
from benchmark.errors import UserError
from benchmark.fileio import Each, OptionalKey, read_json, sha256_file, sweep_temporaries, write_atomic
from benchmark.logs import get_logger
from benchmark.quant import numerics
from benchmark.run.distributed import Processes
from benchmark.transform.base import CalibrationStats
from benchmark.transform.calibration import (
    DEFAULT_SAMPLE_TOKENS,
    DEFAULT_TOKENS_PER_ROW,
    Part,
    Sample,
    StatsCollector,
    merge_parts,
)

__all__ = ["CalibrationInfo", "StatsCollector", "calibrate", "caption_seeds", "collect_part", "collect_stats",
           "merge_parts", "read_captions"]

FORMAT = 2  # 2: samples drawn per batch (bottom-k), the same for any process count
DEFAULT_CACHE = Path(".cache") / "calibration"
_FIELDS = ("absmax", "centered_absmax", "mean", "sample")
_HESSIANS = ("hessian", "centered_hessian")
_META = {"payload": dict, "tensors_sha256": str, "tokens": Each(int), "seconds": OptionalKey(float)}


def read_captions(path: str | Path) -> list[str]:
    """The texts of a caption file, one per line (the ``file`` caption source)."""
    return [caption.text for caption in load_captions("file", path)]


def caption_seeds(count: int, seed: int = 0) -> list[int]:
    """The per-caption seeds: caption i is generated from seed + i."""
    return [seed + i for i in range(count)]


@torch.no_grad()
def collect_part(model, captions: Sequence[str], seeds: Sequence[int], steps: int = 20,
                 batch_size: int = 16, guidance_scale: float | None = None,
                 max_sample_tokens: int = DEFAULT_SAMPLE_TOKENS, tokens_per_row: int = DEFAULT_TOKENS_PER_ROW,
                 seed: int = 0, first_batch: int = 0, hessian: bool = False) -> Part:
    """The statistics of each batch of ``captions`` (batch ``first_batch`` onwards of the
    calibration set), and the sample over them all. ``merge_parts`` combines parts."""
    if model.is_quantized:
        raise RuntimeError("calibrate the full-precision model: restore() it first")
    groups = model.targets()
    batches: list[dict[str, CalibrationStats]] = []
    samples: dict[str, Sample] | None = None
    for start in range(0, len(captions), batch_size):
        collector = StatsCollector(groups, max_sample_tokens, tokens_per_row, seed,
                                   batch=first_batch + start // batch_size, hessian=hessian)
        with model.watching_inputs(collector.record):
            model.generate(captions[start:start + batch_size], seeds[start:start + batch_size],
                           steps=steps, batch_size=batch_size, guidance_scale=guidance_scale)
        [stats], sample = collector.part()
        batches.append(stats)
        samples = sample if samples is None else {name: samples[name].merge(s) for name, s in sample.items()}
    return batches, samples


def collect_stats(model, captions: Sequence[str], seeds: Sequence[int], steps: int = 20,
                  batch_size: int = 16, guidance_scale: float | None = None,
                  max_sample_tokens: int = DEFAULT_SAMPLE_TOKENS,
                  tokens_per_row: int = DEFAULT_TOKENS_PER_ROW,
                  seed: int = 0, hessian: bool = False) -> dict[str, CalibrationStats]:
    """Generate from the captions once, recording every target group's input at every step."""
    return merge_parts([collect_part(model, captions, seeds, steps, batch_size, guidance_scale,
                                     max_sample_tokens, tokens_per_row, seed, hessian=hessian)])


@dataclass
class CalibrationInfo:
    """Where the statistics came from: ``status`` is "hit", "miss" or "rebuilt: <reason>"."""

    status: str
    key: str
    path: Path
    payload: dict
    seconds: float


def _payload(model, captions, steps, seed, guidance_scale, max_sample_tokens, tokens_per_row) -> dict:
    return {
        "format": FORMAT,
        "model": model.fingerprint(),
        "captions_sha256": hashlib.sha256("\n".join(captions).encode("utf-8")).hexdigest(),
        "captions": len(captions),
        "steps": steps,
        "seed": seed,
        "guidance_scale": model.default_settings().get("guidance_scale") if guidance_scale is None
        else float(guidance_scale),
        "max_sample_tokens": max_sample_tokens,
        "tokens_per_row": tokens_per_row,
        "groups": [g.name for g in model.targets()],
    }


def _computed_on(model) -> dict:
    """What else decides the statistics' bits: the device, and on the CPU the floating-point
    paths (benchmark/quant/numerics.py), so that a pinned run never reads statistics collected
    natively or on a GPU (their bits differ)."""

    device = next((linear.weight.device.type for group in model.targets()
                   for _, linear in group.linears), "cpu")
    if device != "cpu":
        return {"device": device}
    paths = numerics.describe("")
    return {"device": device, **{k: paths[k] for k in ("aten_cpu_capability", "mkl_cbwr", "mkldnn", "threads")}}


def _stats_damage(stats: CalibrationStats, channels: int) -> str | None:
    """What is wrong with cached statistics whose key and checksum match (written by hand, or
    damaged with the checksum updated), or None: each vector has the group's channels, the
    sample (samples, tokens, channels), the Hessians channels x channels, all finite, a positive
    token count. Trusted, such a cache would fail the next cell and blame its transform."""
    if stats.tokens <= 0:
        return f"{stats.tokens} tokens"
    shapes = {"absmax": (channels,), "centered_absmax": (channels,), "mean": (channels,),
              "hessian": (channels, channels), "centered_hessian": (channels, channels)}
    for name, shape in shapes.items():
        tensor = getattr(stats, name)
        if tensor is not None and tuple(tensor.shape) != shape:
            return f"{name} of shape {tuple(tensor.shape)}, not {shape}"
    if stats.sample is not None and (stats.sample.dim() != 3 or stats.sample.shape[-1] != channels):
        return f"sample of shape {tuple(stats.sample.shape)}, not (samples, tokens, {channels})"
    for name in ("absmax", "centered_absmax", "mean", "sample", "hessian", "centered_hessian"):
        tensor = getattr(stats, name)
        if tensor is not None and not bool(torch.isfinite(tensor).all()):
            return f"{name} holds values that are not finite"
    return None


def _read_cache(base: Path, payload: dict, channels: dict[str, int]) -> dict[str, CalibrationStats]:
    """The cached statistics, checked against the groups' ``channels``, or a ValueError saying
    why the cache cannot be used."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta_path, tensor_path = base.with_suffix(".json"), base.with_suffix(".safetensors")
    meta = read_json(meta_path, _META, "calibration cache")
    if meta["payload"] != payload:
        raise UserError("written for another model, captions or settings")
    if not tensor_path.is_file() or sha256_file(tensor_path) != meta.get("tensors_sha256"):
        raise UserError(f"{tensor_path.name} is missing or altered")
    try:
        tensors = load_file(tensor_path)
    except (SafetensorError, OSError) as error:
        raise UserError(f"unreadable {tensor_path.name}: {error}") from None
    stats = {}
    for name in payload["groups"]:
        try:
            fields = {f: tensors[f"{name}/{f}"] for f in _FIELDS}
            fields.update({f: tensors[f"{name}/{f}"] for f in _HESSIANS if payload.get("hessian")})
            stats[name] = CalibrationStats(tokens=int(meta["tokens"][name]), **fields)
        except KeyError as error:
            raise UserError(f"no entry {error} for group {name}") from None
        damage = _stats_damage(stats[name], channels[name])
        if damage:
            raise UserError(f"group {name}: {damage}")
    return stats


def _write_cache(base: Path, payload: dict, stats: dict[str, CalibrationStats], seconds: float) -> None:
    from safetensors.torch import save_file

    base.parent.mkdir(parents=True, exist_ok=True)
    tensor_path, meta_path = base.with_suffix(".safetensors"), base.with_suffix(".json")
    tensors = {f"{name}/{f}": getattr(s, f).contiguous() for name, s in stats.items()
               for f in _FIELDS + (_HESSIANS if payload.get("hessian") else ())}
    write_atomic(tensor_path, lambda tmp: save_file(tensors, str(tmp)))
    meta = {"payload": payload, "tensors_sha256": sha256_file(tensor_path),
            "tokens": {name: s.tokens for name, s in stats.items()}, "seconds": round(seconds, 2)}
    # The json goes last: a pass interrupted while writing leaves no json, hence a miss.
    write_atomic(meta_path, json.dumps(meta, indent=1))


def calibrate(model, captions: Sequence[str], seed: int = 0, steps: int = 20,
              guidance_scale: float | None = None, cache_dir: str | Path | None = DEFAULT_CACHE,
              batch_size: int = 16, max_sample_tokens: int = DEFAULT_SAMPLE_TOKENS,
              tokens_per_row: int = DEFAULT_TOKENS_PER_ROW, processes=None,
              hessian: bool = False) -> tuple[dict[str, CalibrationStats], CalibrationInfo]:
    """Calibration statistics for every target group, from the cache when it is valid.

    Caption i is generated from seed + i (``caption_seeds``). ``cache_dir=None`` skips the
    cache. ``processes`` (``benchmark.run.distributed.Processes``) share the batches; the main one
    reads and writes the cache, and every one gets the same statistics. ``hessian``: also each
    group's input Hessians, for GPTQ (two C x C float64 matrices per group; cached apart).
    Returns the statistics by group name, and where they came from.
    """

    processes = processes or Processes()
    captions = list(captions)
    if not captions:
        raise UserError("calibration needs at least one caption")
    payload = _payload(model, captions, steps, seed, guidance_scale, max_sample_tokens, tokens_per_row)
    payload["batch_size"] = batch_size  # the batches seed the sample
    payload["computed_on"] = _computed_on(model)
    if hessian:  # a key of its own: caches without the Hessians stay valid for every other run
        payload["hessian"] = True
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]
    base = Path(cache_dir or ".") / f"calibration-{key}"
    status, cached = "miss", None
    if processes.is_main and cache_dir is not None:
        sweep_temporaries(base.parent)  # a killed collection's half-written cache files
    if processes.is_main and cache_dir is not None and base.with_suffix(".json").exists():
        try:
            cached = _read_cache(base, payload, {g.name: g.in_features for g in model.targets()})
        except ValueError as error:
            status = f"rebuilt: {error}"
            get_logger("calibration").warning(f"calibration cache {base}: {error}; rebuilding it")
    status, cached = processes.broadcast((status, cached))
    if cached is not None:
        return cached, CalibrationInfo("hit", key, base, payload, 0.0)
    start = time.perf_counter()
    seeds = caption_seeds(len(captions), seed)

    def part(_, batches: slice) -> Part:
        return collect_part(model, captions[batches], seeds[batches], steps, batch_size, guidance_scale,
                            max_sample_tokens, tokens_per_row, seed, first_batch=batches.start // batch_size,
                            hessian=hessian)

    ((_, outcome),) = processes.map([None], len(captions), part, everywhere=True, batch_size=batch_size)
    if outcome.error is not None:
        raise RuntimeError(f"calibration failed: {outcome.error}")
    stats = merge_parts(outcome.parts)
    seconds = time.perf_counter() - start
    if cache_dir is not None and processes.is_main:
        _write_cache(base, payload, stats, seconds)
    return stats, CalibrationInfo(status, key, base, payload, seconds)
