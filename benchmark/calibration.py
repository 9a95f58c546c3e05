"""Calibration: one pass over the calibration captions through every denoising step, collecting
``CalibrationStats`` for the input of every target group, cached on disk.

    stats, info = calibrate(model, read_captions("datasets/embedded/calibration.txt"))
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
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .captions import load_captions
from .results import Each, OptionalKey, read_json, sha256_file, write_atomic
from .transform import CalibrationStats

__all__ = ["CalibrationInfo", "StatsCollector", "calibrate", "caption_seeds", "collect_part", "collect_stats",
           "merge_parts", "read_captions"]

FORMAT = 2  # 2: samples drawn per batch (bottom-k), the same for any process count
DEFAULT_CACHE = Path(".cache") / "calibration"
# The raw sample kept per group for alpha="auto": 512 tokens in rows of 64 (8 rows, drawn
# uniformly over every call and step). At PixArt-Sigma's size (28 blocks: 168 groups 1152
# wide, 28 FFN groups 4608 wide) that is 0.66 GB in fp32, in memory and in the cache file.
DEFAULT_SAMPLE_TOKENS = 512
DEFAULT_TOKENS_PER_ROW = 64
_FIELDS = ("absmax", "centered_absmax", "mean", "sample")
_META = {"payload": dict, "tensors_sha256": str, "tokens": Each(int), "seconds": OptionalKey(float)}


def read_captions(path: str | Path) -> list[str]:
    """The texts of a caption file, one per line (the ``file`` caption source)."""
    return [caption.text for caption in load_captions("file", path)]


def caption_seeds(count: int, seed: int = 0) -> list[int]:
    """The per-caption seeds: caption i is generated from seed + i."""
    return [seed + i for i in range(count)]


class _Sample:
    """A bounded, uniform sample of whole rows (one sample's tokens) over all calls and steps,
    that merges exactly: every row gets a random key and the sample keeps the rows of smallest
    key ("bottom-k" sampling). The sample of a union is the bottom-k of the parts' samples, so
    it does not depend on how the batches were split between processes.

    ``CalibrationStats.merge`` keeps only the newest samples, which over a denoising pass
    would be the last steps only; here every step is equally likely.
    """

    def __init__(self, max_tokens: int, tokens_per_row: int, generator: torch.Generator | None = None):
        self.max_tokens, self.tokens_per_row, self.gen = max_tokens, tokens_per_row, generator
        self.rows: list[torch.Tensor] = []
        self.keys = torch.empty(0, dtype=torch.float64)

    def _capacity(self) -> int:
        return max(1, self.max_tokens // self.rows[0].shape[0]) if self.rows else 0

    def _keep_smallest(self) -> None:
        order = torch.sort(self.keys, stable=True).indices[:self._capacity()]
        self.rows, self.keys = [self.rows[i] for i in order.tolist()], self.keys[order]

    def add(self, x: torch.Tensor) -> None:
        tokens = min(x.shape[1], self.tokens_per_row)
        keys = torch.rand(x.shape[0], generator=self.gen, dtype=torch.float64)
        for row in x:
            keep = torch.randperm(x.shape[1], generator=self.gen)[:tokens].sort().values
            self.rows.append(row[keep].float().cpu().clone())
        self.keys = torch.cat([self.keys, keys])
        self._keep_smallest()

    def merge(self, other: "_Sample") -> "_Sample":
        merged = _Sample(self.max_tokens, self.tokens_per_row)
        merged.rows, merged.keys = self.rows + other.rows, torch.cat([self.keys, other.keys])
        merged._keep_smallest()
        return merged

    def tensor(self) -> torch.Tensor:
        return torch.stack(self.rows)


def _generator(seed: int, batch: int, group: int) -> torch.Generator:
    """The sampling randomness of one group in one batch: the same on whichever process."""
    digest = hashlib.sha256(f"{seed}/{batch}/{group}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


# What ``collect_part`` returns and ``merge_parts`` combines: the statistics of each batch, in
# batch order, and the sample over those batches.
Part = tuple[list[dict[str, CalibrationStats]], dict[str, _Sample]]


class StatsCollector:
    """``record(group, x)`` for every input of every target group; ``part()`` what it recorded,
    for ``merge_parts``; ``result()`` the statistics.

    The one recorder: ``collect_part`` uses one per generation batch (``batch`` seeds its
    sample, so the sample is the same for any process count), ``benchmark.calibrate`` one for
    a whole run of any module."""

    def __init__(self, groups, max_sample_tokens: int = DEFAULT_SAMPLE_TOKENS,
                 tokens_per_row: int = DEFAULT_TOKENS_PER_ROW, seed: int = 0, batch: int = 0):
        self.stats: dict[str, CalibrationStats | None] = {g.name: None for g in groups}
        self.samples = {g.name: _Sample(max_sample_tokens, tokens_per_row, _generator(seed, batch, i))
                        for i, g in enumerate(groups)}

    def record(self, group, x: torch.Tensor) -> None:
        if x.dim() == 2:
            x = x[None]
        new = CalibrationStats.from_activations(x, max_sample_tokens=x.shape[0])
        new.sample = None  # the _Sample keeps the sample
        old = self.stats[group.name]
        self.stats[group.name] = new if old is None else old.merge(new)
        self.samples[group.name].add(x)

    def part(self) -> Part:
        missing = [name for name, s in self.stats.items() if s is None]
        if missing:
            raise RuntimeError(f"calibration never reached {missing[:3]}: the run does not call them")
        return [dict(self.stats)], dict(self.samples)

    def result(self) -> dict[str, CalibrationStats]:
        return merge_parts([self.part()])


@torch.no_grad()
def collect_part(model, captions: Sequence[str], seeds: Sequence[int], steps: int = 20,
                 batch_size: int = 16, guidance_scale: float | None = None,
                 max_sample_tokens: int = DEFAULT_SAMPLE_TOKENS, tokens_per_row: int = DEFAULT_TOKENS_PER_ROW,
                 seed: int = 0, first_batch: int = 0) -> Part:
    """The statistics of each batch of ``captions`` (batch ``first_batch`` onwards of the
    calibration set), and the sample over them all. ``merge_parts`` combines parts."""
    if model.is_quantized:
        raise RuntimeError("calibrate the full-precision model: restore() it first")
    groups = model.targets()
    batches: list[dict[str, CalibrationStats]] = []
    samples: dict[str, _Sample] | None = None
    for start in range(0, len(captions), batch_size):
        collector = StatsCollector(groups, max_sample_tokens, tokens_per_row, seed,
                                   batch=first_batch + start // batch_size)
        with model.watching_inputs(collector.record):
            model.generate(captions[start:start + batch_size], seeds[start:start + batch_size],
                           steps=steps, batch_size=batch_size, guidance_scale=guidance_scale)
        [stats], sample = collector.part()
        batches.append(stats)
        samples = sample if samples is None else {name: samples[name].merge(s) for name, s in sample.items()}
    return batches, samples


def merge_parts(parts: Sequence[Part]) -> dict[str, CalibrationStats]:
    """The statistics of all batches from ``collect_part``'s parts, given in batch order: merged
    batch after batch, so the floating-point sums do not depend on how they were split."""
    batches = [stats for part, _ in parts for stats in part]
    merged = dict(batches[0])
    for stats in batches[1:]:
        merged = {name: merged[name].merge(s) for name, s in stats.items()}
    for name in merged:
        sample = parts[0][1][name]
        for _, other in parts[1:]:
            sample = sample.merge(other[name])
        merged[name].sample = sample.tensor()
    return merged


def collect_stats(model, captions: Sequence[str], seeds: Sequence[int], steps: int = 20,
                  batch_size: int = 16, guidance_scale: float | None = None,
                  max_sample_tokens: int = DEFAULT_SAMPLE_TOKENS,
                  tokens_per_row: int = DEFAULT_TOKENS_PER_ROW,
                  seed: int = 0) -> dict[str, CalibrationStats]:
    """Generate from the captions once, recording every target group's input at every step."""
    return merge_parts([collect_part(model, captions, seeds, steps, batch_size, guidance_scale,
                                     max_sample_tokens, tokens_per_row, seed)])


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
    paths (benchmark/numerics.py), so that a pinned run never reads statistics collected
    natively or on a GPU (their bits differ)."""
    from . import numerics

    device = next((linear.weight.device.type for group in model.targets()
                   for _, linear in group.linears), "cpu")
    if device != "cpu":
        return {"device": device}
    paths = numerics.describe("")
    return {"device": device, **{k: paths[k] for k in ("aten_cpu_capability", "mkl_cbwr", "mkldnn", "threads")}}


def _read_cache(base: Path, payload: dict) -> dict[str, CalibrationStats]:
    """The cached statistics, or a ValueError saying why the cache cannot be used."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta_path, tensor_path = base.with_suffix(".json"), base.with_suffix(".safetensors")
    meta = read_json(meta_path, _META, "calibration cache")
    if meta["payload"] != payload:
        raise ValueError("written for another model, captions or settings")
    if not tensor_path.is_file() or sha256_file(tensor_path) != meta.get("tensors_sha256"):
        raise ValueError(f"{tensor_path.name} is missing or altered")
    try:
        tensors = load_file(tensor_path)
    except (SafetensorError, OSError) as error:
        raise ValueError(f"unreadable {tensor_path.name}: {error}") from None
    stats = {}
    for name in payload["groups"]:
        try:
            fields = {f: tensors[f"{name}/{f}"] for f in _FIELDS}
            stats[name] = CalibrationStats(tokens=int(meta["tokens"][name]), **fields)
        except KeyError as error:
            raise ValueError(f"no entry {error} for group {name}") from None
    return stats


def _write_cache(base: Path, payload: dict, stats: dict[str, CalibrationStats], seconds: float) -> None:
    from safetensors.torch import save_file

    base.parent.mkdir(parents=True, exist_ok=True)
    tensor_path, meta_path = base.with_suffix(".safetensors"), base.with_suffix(".json")
    tensors = {f"{name}/{f}": getattr(s, f).contiguous() for name, s in stats.items() for f in _FIELDS}
    write_atomic(tensor_path, lambda tmp: save_file(tensors, str(tmp)))
    meta = {"payload": payload, "tensors_sha256": sha256_file(tensor_path),
            "tokens": {name: s.tokens for name, s in stats.items()}, "seconds": round(seconds, 2)}
    # The json goes last: a pass interrupted while writing leaves no json, hence a miss.
    write_atomic(meta_path, json.dumps(meta, indent=1))


def calibrate(model, captions: Sequence[str], seed: int = 0, steps: int = 20,
              guidance_scale: float | None = None, cache_dir: str | Path | None = DEFAULT_CACHE,
              batch_size: int = 16, max_sample_tokens: int = DEFAULT_SAMPLE_TOKENS,
              tokens_per_row: int = DEFAULT_TOKENS_PER_ROW,
              processes=None) -> tuple[dict[str, CalibrationStats], CalibrationInfo]:
    """Calibration statistics for every target group, from the cache when it is valid.

    Caption i is generated from seed + i (``caption_seeds``). ``cache_dir=None`` skips the
    cache. ``processes`` (``benchmark.distributed.Processes``) share the batches; the main one
    reads and writes the cache, and every one gets the same statistics. Returns the statistics
    by group name, and where they came from.
    """
    from .distributed import Processes

    processes = processes or Processes()
    captions = list(captions)
    if not captions:
        raise ValueError("calibration needs at least one caption")
    payload = _payload(model, captions, steps, seed, guidance_scale, max_sample_tokens, tokens_per_row)
    payload["batch_size"] = batch_size  # the batches seed the sample
    payload["computed_on"] = _computed_on(model)
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]
    base = Path(cache_dir or ".") / f"calibration-{key}"
    status, cached = "miss", None
    if processes.is_main and cache_dir is not None and base.with_suffix(".json").exists():
        try:
            cached = _read_cache(base, payload)
        except ValueError as error:
            status = f"rebuilt: {error}"
            warnings.warn(f"calibration cache {base}: {error}; rebuilding it", stacklevel=2)
    status, cached = processes.broadcast((status, cached))
    if cached is not None:
        return cached, CalibrationInfo("hit", key, base, payload, 0.0)
    start = time.perf_counter()
    seeds = caption_seeds(len(captions), seed)

    def part(_, batches: slice) -> Part:
        return collect_part(model, captions[batches], seeds[batches], steps, batch_size, guidance_scale,
                            max_sample_tokens, tokens_per_row, seed, first_batch=batches.start // batch_size)

    ((_, outcome),) = processes.map([None], len(captions), part, everywhere=True, batch_size=batch_size)
    if outcome.error is not None:
        raise RuntimeError(f"calibration failed: {outcome.error}")
    stats = merge_parts(outcome.parts)
    seconds = time.perf_counter() - start
    if cache_dir is not None and processes.is_main:
        _write_cache(base, payload, stats, seconds)
    return stats, CalibrationInfo(status, key, base, payload, seconds)
