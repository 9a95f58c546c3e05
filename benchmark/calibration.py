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

__all__ = ["CalibrationInfo", "StatsCollector", "calibrate", "caption_seeds", "collect_stats", "read_captions"]

FORMAT = 1
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


class _Reservoir:
    """A bounded, uniform sample of whole rows (one sample's tokens) over all calls and steps.

    ``CalibrationStats.merge`` keeps only the newest samples, which over a denoising pass
    would be the last steps only; reservoir sampling keeps every step equally likely.
    """

    def __init__(self, max_tokens: int, tokens_per_row: int, generator: torch.Generator):
        self.max_tokens, self.tokens_per_row, self.gen = max_tokens, tokens_per_row, generator
        self.rows: list[torch.Tensor] = []
        self.seen = 0

    def add(self, x: torch.Tensor) -> None:
        tokens = min(x.shape[1], self.tokens_per_row)
        capacity = max(1, self.max_tokens // tokens)
        for row in x:
            self.seen += 1
            slot = len(self.rows) if len(self.rows) < capacity else \
                int(torch.randint(self.seen, (1,), generator=self.gen))
            if slot < capacity:
                keep = torch.randperm(x.shape[1], generator=self.gen)[:tokens].sort().values
                picked = row[keep].float().cpu().clone()
                if slot == len(self.rows):
                    self.rows.append(picked)
                else:
                    self.rows[slot] = picked

    def tensor(self) -> torch.Tensor:
        return torch.stack(self.rows)


class StatsCollector:
    """``record(group, x)`` for every input of every target group; ``result()`` the statistics.

    Shared by ``collect_stats`` (a model's generation) and ``benchmark.calibrate`` (any run)."""

    def __init__(self, groups, max_sample_tokens: int = 4096, tokens_per_row: int = 256, seed: int = 0):
        self.stats: dict[str, CalibrationStats | None] = {g.name: None for g in groups}
        self.reservoirs = {g.name: _Reservoir(max_sample_tokens, tokens_per_row,
                                              torch.Generator().manual_seed(seed + i))
                           for i, g in enumerate(groups)}

    def record(self, group, x: torch.Tensor) -> None:
        if x.dim() == 2:
            x = x[None]
        new = CalibrationStats.from_activations(x, max_sample_tokens=x.shape[0])
        new.sample = None  # the reservoir keeps the sample
        old = self.stats[group.name]
        self.stats[group.name] = new if old is None else old.merge(new)
        self.reservoirs[group.name].add(x)

    def result(self) -> dict[str, CalibrationStats]:
        missing = [name for name, s in self.stats.items() if s is None]
        if missing:
            raise RuntimeError(f"calibration never reached {missing[:3]}: the run does not call them")
        for name, s in self.stats.items():
            s.sample = self.reservoirs[name].tensor()
        return dict(self.stats)


@torch.no_grad()
def collect_stats(model, captions: Sequence[str], seeds: Sequence[int], steps: int = 20,
                  batch_size: int = 16, guidance_scale: float | None = None,
                  max_sample_tokens: int = DEFAULT_SAMPLE_TOKENS,
                  tokens_per_row: int = DEFAULT_TOKENS_PER_ROW,
                  seed: int = 0) -> dict[str, CalibrationStats]:
    """Generate from the captions once, recording every target group's input at every step."""
    if model.is_quantized:
        raise RuntimeError("calibrate the full-precision model: restore() it first")
    collector = StatsCollector(model.targets(), max_sample_tokens, tokens_per_row, seed)
    with model.watching_inputs(collector.record):
        model.generate(captions, seeds, steps=steps, batch_size=batch_size, guidance_scale=guidance_scale)
    return collector.result()


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
              tokens_per_row: int = DEFAULT_TOKENS_PER_ROW) -> tuple[dict[str, CalibrationStats], CalibrationInfo]:
    """Calibration statistics for every target group, from the cache when it is valid.

    Caption i is generated from seed + i (``caption_seeds``). ``cache_dir=None`` skips the
    cache. Returns the statistics by group name, and where they came from.
    """
    captions = list(captions)
    if not captions:
        raise ValueError("calibration needs at least one caption")
    payload = _payload(model, captions, steps, seed, guidance_scale, max_sample_tokens, tokens_per_row)
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]
    base = Path(cache_dir or ".") / f"calibration-{key}"
    status = "miss"
    if cache_dir is not None and base.with_suffix(".json").exists():
        try:
            stats = _read_cache(base, payload)
            return stats, CalibrationInfo("hit", key, base, payload, 0.0)
        except ValueError as error:
            status = f"rebuilt: {error}"
            warnings.warn(f"calibration cache {base}: {error}; rebuilding it", stacklevel=2)
    start = time.perf_counter()
    stats = collect_stats(model, captions, caption_seeds(len(captions), seed), steps=steps,
                          batch_size=batch_size, guidance_scale=guidance_scale,
                          max_sample_tokens=max_sample_tokens, tokens_per_row=tokens_per_row, seed=seed)
    seconds = time.perf_counter() - start
    if cache_dir is not None:
        _write_cache(base, payload, stats, seconds)
    return stats, CalibrationInfo(status, key, base, payload, seconds)
