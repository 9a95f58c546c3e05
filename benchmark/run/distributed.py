"""One run over several processes (``accelerate launch`` or ``torchrun``), with the numbers of
one process.

The unit of work is a generation batch of fixed composition: batch j is the captions
[16j, 16j + 16) of a list, each with its own seed, generated together. A caption's numbers
therefore come from the same batch shape and position however many processes there are.
Processes take whole batches, never single captions:

- a job (the reference, the calibration pass, one cell) over B batches is split into
  contiguous runs of batches, one per process (process i of P takes batches
  [i*B//P, (i+1)*B//P));
- when there are fewer batches than processes, several jobs run at once: the processes form
  P // B teams (at most one per job), each team takes one job and splits its batches. With the
  default 16 evaluation captions (one batch) and 2 processes, each process takes a whole cell.

After each round of jobs the results are gathered: on the main process (generations, which it
alone scores and writes), or on every process (calibration statistics, which every process
needs). The exchange happens whether a process's work raised or not, so a failing cell fails on
every process instead of leaving the others waiting; every exchange carries a tag that is
checked, so processes that fall out of step stop with an error rather than mixing up results;
and every collective has a timeout (``HADABENCH_TIMEOUT_S``, default 1800 s).

Objects travel over a gloo group (CPU memory), whatever backend the launcher chose.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

from benchmark.quant.numerics import GENERATION_BATCH

__all__ = ["BATCH_SIZE", "Outcome", "Processes", "failure", "is_main_process", "raised_at", "share"]

BATCH_SIZE = GENERATION_BATCH  # captions generated together (numerics.py): the unit of work


def is_main_process() -> bool:
    """Whether this is the process that logs and writes (rank 0, or the only one)."""
    return int(os.environ.get("RANK", "0")) == 0


def share(batches: int, parts: int, index: int) -> range:
    """The batches part ``index`` of ``parts`` takes: contiguous, sizes differing by one at most."""
    return range(index * batches // parts, (index + 1) * batches // parts)


@dataclass
class Outcome:
    """One job's gathered result: ``parts`` in batch order, or the first error in batch order
    (``"Type: message"``) and where it was raised (``raised_at``)."""

    parts: list
    error: str | None = None
    raised_at: str | None = None


def failure(error: BaseException) -> tuple[str, str | None]:
    """How a failed job is recorded: ``"Type: message"``, and where it was raised."""
    return f"{type(error).__name__}: {error}", raised_at(error)


def raised_at(error: BaseException) -> str | None:
    """``file:line in function`` of the innermost frame of ``error``'s traceback outside the
    installed packages and the standard library (the project's or a plugin's code), else the
    innermost frame: the place to look when a cell fails."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return None
    ours = [f for f in frames if "site-packages" not in f.filename and "/lib/python" not in f.filename]
    frame = (ours or frames)[-1]
    return f"{frame.filename}:{frame.lineno} in {frame.name}"


class Processes:
    """The processes of one run: just this one, or those a launcher started."""

    def __init__(self, index: int = 0, count: int = 1, local_count: int = 1, group=None,
                 device: str | None = None):
        self.index, self.count, self.local_count = index, count, local_count
        self.group, self._device = group, device
        self._round = 0

    @classmethod
    def start(cls) -> Processes:
        """This process's place among the launched ones (one process when nothing launched it)."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        import torch
        import torch.distributed as dist
        from accelerate import PartialState

        timeout = timedelta(seconds=float(os.environ.get("HADABENCH_TIMEOUT_S", 1800)))
        state = PartialState(cpu=not torch.cuda.is_available(), timeout=timeout)
        local = int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes))
        if "OMP_NUM_THREADS" not in os.environ:  # else the launcher or the user chose
            torch.set_num_threads(max(1, _cores() // local))  # this machine's cores, shared
        group = dist.new_group(backend="gloo", timeout=timeout)
        device = str(state.device) if state.device.type != "cpu" else None
        return cls(state.process_index, state.num_processes, local, group, device)

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def device(self, requested: str) -> str:
        """``cuda`` means this process's own GPU when a launcher gave it one."""
        if requested == "cuda" and self._device is not None and self._device.startswith("cuda"):
            return self._device
        return requested

    # -- collectives: every process calls them in the same order -----------------------
    def broadcast(self, obj):
        """The main process's ``obj``, on every process."""
        if self.count == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def _exchange(self, obj, everywhere: bool) -> list | None:
        """Every process's ``obj`` in process order: on every process, or on the main one only."""
        if self.count == 1:
            return [obj]
        import torch.distributed as dist

        if everywhere:
            out = [None] * self.count
            dist.all_gather_object(out, obj, group=self.group)
            return out
        out = [None] * self.count if self.is_main else None
        dist.gather_object(obj, out, dst=0, group=self.group)
        return out

    def agree(self, step: Callable[[], object]):
        """Run ``step`` on every process; if it raised on any, raise on every one (a
        ValueError stays a ValueError, so the command line still answers with exit 2)."""
        error = None
        try:
            result = step()
        except Exception as caught:
            if self.count == 1:
                raise
            error = (isinstance(caught, ValueError), str(caught) if isinstance(caught, ValueError)
                     else f"{type(caught).__name__}: {caught}")
        errors = [e for e in self._exchange(error, everywhere=True) if e is not None]
        if errors:
            if error is not None:
                raise (ValueError if error[0] else RuntimeError)(error[1]) from None
            raise (ValueError if errors[0][0] else RuntimeError)(errors[0][1])
        return result

    def map(self, jobs: Sequence, items: int, work: Callable[[object, slice], object],
            everywhere: bool = False, batch_size: int = BATCH_SIZE) -> Iterator[tuple[object, Outcome]]:
        """Run ``work(job, part)`` over the batches of ``items`` captions for every job, spread
        over the processes; ``part`` is a slice of whole batches. Yields ``(job, Outcome)`` in
        job order, on the main process (on every process with ``everywhere``), each after the
        round that ran it; the other processes get nothing but take part."""
        batches = -(-items // batch_size)
        teams = max(1, min(len(jobs), self.count // batches))
        size = self.count // teams
        team, member = divmod(self.index, size)
        for start in range(0, len(jobs), teams):
            round_jobs = list(jobs[start:start + teams])
            self._round += 1
            mine = None
            if team < len(round_jobs):
                taken = share(batches, size, member)
                if taken:
                    part = slice(taken.start * batch_size, min(taken.stop * batch_size, items))
                    try:
                        mine = (team, taken.start, None, work(round_jobs[team], part))
                    except Exception as error:  # reported to the others, who fail the job too
                        mine = (team, taken.start, failure(error), None)
            gathered = self._exchange((self._round, len(round_jobs), mine), everywhere)
            if gathered is None:
                continue
            tags = {(tag, count) for tag, count, _ in gathered}
            if len(tags) != 1:
                raise RuntimeError(f"the processes are out of step (rounds {sorted(tags)}): "
                                   "they were given different work")
            for index, job in enumerate(round_jobs):
                pieces = sorted((first, error, payload) for _, _, got in gathered
                                if got is not None and got[0] == index
                                for _, first, error, payload in [got])
                errors = [error for _, error, _ in pieces if error is not None]
                yield job, Outcome([payload for _, _, payload in pieces], *(errors[0] if errors else ()))

    def finish(self, code: int) -> int:
        """The main process's exit code on every process, once all have arrived."""
        return self.broadcast(code)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
