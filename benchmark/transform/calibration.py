"""Recording the inputs of target groups into ``CalibrationStats``: per-group running statistics
and a bounded, uniform, mergeable sample of raw tokens (for ``alpha="auto"``).

``StatsCollector`` is the one recorder: ``benchmark.calibrate`` runs one over any module, the
benchmark's cached calibration pass (``benchmark.run.calibration``) one per generation batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from benchmark.transform.base import CalibrationStats

__all__ = ["DEFAULT_SAMPLE_TOKENS", "DEFAULT_TOKENS_PER_ROW", "Part", "Sample", "StatsCollector", "merge_parts"]

# The raw sample kept per group for alpha="auto": 512 tokens in rows of 64 (8 rows, drawn
# uniformly over every call and step). At PixArt-Sigma's size (28 blocks: 168 groups 1152
# wide, 28 FFN groups 4608 wide) that is 0.66 GB in fp32, in memory and in the cache file.
DEFAULT_SAMPLE_TOKENS = 512
DEFAULT_TOKENS_PER_ROW = 64

class Sample:
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

    def merge(self, other: Sample) -> Sample:
        merged = Sample(self.max_tokens, self.tokens_per_row)
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
Part = tuple[list[dict[str, CalibrationStats]], dict[str, Sample]]


class StatsCollector:
    """``record(group, x)`` for every input of every target group; ``part()`` what it recorded,
    for ``merge_parts``; ``result()`` the statistics.

    The one recorder: ``collect_part`` uses one per generation batch (``batch`` seeds its
    sample, so the sample is the same for any process count), ``benchmark.calibrate`` one for
    a whole run of any module.

    ``hessian``: also accumulate each group's two Hessians (``CalibrationStats.hessian``, for
    GPTQ): two channels x channels float64 matrices per group, however many tokens."""

    def __init__(self, groups, max_sample_tokens: int = DEFAULT_SAMPLE_TOKENS,
                 tokens_per_row: int = DEFAULT_TOKENS_PER_ROW, seed: int = 0, batch: int = 0, *,
                 hessian: bool = False):
        self.hessian = hessian
        self.stats: dict[str, CalibrationStats | None] = {g.name: None for g in groups}
        self.samples = {g.name: Sample(max_sample_tokens, tokens_per_row, _generator(seed, batch, i))
                        for i, g in enumerate(groups)}

    def record(self, group, x: torch.Tensor) -> None:
        if x.dim() == 2:
            x = x[None]
        new = CalibrationStats.from_activations(x, max_sample_tokens=x.shape[0], hessian=self.hessian)
        new.sample = None  # the Sample keeps the sample
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
