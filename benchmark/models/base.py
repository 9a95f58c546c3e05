"""What the harness needs from a text-to-image diffusion transformer.

A model adapter loads a pipeline, generates, and fingerprints its weights; subclasses
implement ``generate`` and ``fingerprint``. Where the quantization targets are is the model
family's declaration (``benchmark.families.builtin``), and discovering and swapping them is
``benchmark.families.targets`` / ``benchmark.quantize_``: the adapter's ``targets``, ``quantize`` and
``restore`` delegate to them.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from benchmark.api import quantize_
from benchmark.errors import UserError
from benchmark.families.builtin import PIXART_ROLES
from benchmark.families.registry import family_for
from benchmark.families.targets import (
    Family,
    QuantizedMember,
    TargetGroup,
    _SharedCall,  # noqa: F401  (tests reach _SharedCall here)
    discover_targets,
    watch_inputs,
)
from benchmark.quant.grid import Precision
from benchmark.transform.base import CalibrationStats, Transform

__all__ = ["ROLES", "Generation", "ModelAdapter", "QuantizedMember", "TargetGroup", "find_targets"]

# PixArt's roles (the embedded model's and PixArt-Sigma's), in block order; every family's
# own roles: ``benchmark.families.registry.families()[name].value.roles``.
ROLES = tuple(PIXART_ROLES)


@dataclass
class Generation:
    """The result of ``ModelAdapter.generate``: one entry per caption, in order."""

    captions: list[str]
    seeds: list[int]
    latents: torch.Tensor  # final latents (pixels for a pixel-space model), float32, CPU
    images: torch.Tensor   # decoded images, (N, 3, H, W) float32 in [0, 1], CPU
    settings: dict = field(default_factory=dict)  # steps, guidance, resolution: record them


def find_targets(transformer: nn.Module, family: Family | None = None) -> list[TargetGroup]:
    """The target groups of a transformer of a registered family (``discover_targets``);
    refuses a transformer that no family describes."""

    family = family or family_for(transformer)
    if family is None:
        raise UserError(f"no registered model family describes {type(transformer).__name__} "
                         "(see 'hadabench ls')")
    return discover_targets(transformer, family)


class ModelAdapter(abc.ABC):
    """One loaded text-to-image pipeline, as the benchmark sees it.

    Subclasses set ``self.transformer`` and implement ``generate`` and ``fingerprint``;
    ``family`` is the registered family of the transformer's class unless they set it.
    """

    name: str = "model"
    transformer: nn.Module
    family: Family | None = None

    def __init__(self):
        self._targets: list[TargetGroup] | None = None
        self._quantization = None  # the active benchmark.api.Quantization

    # -- targets ---------------------------------------------------------------------
    def targets(self) -> list[TargetGroup]:
        """The quantization targets, discovered once on the full-precision model."""
        if self._targets is None:
            self._targets = find_targets(self.transformer, self.family)
        return self._targets

    def watching_inputs(self, record: Callable[[TargetGroup, torch.Tensor], None]):
        """Inside the block, ``record(group, x)`` sees every input of every target group."""
        return watch_inputs(self.transformer, self.targets(), record)

    # -- generation ------------------------------------------------------------------
    @abc.abstractmethod
    def generate(self, captions: Sequence[str], seeds: Sequence[int], steps: int = 20,
                 batch_size: int = 16, guidance_scale: float | None = None) -> Generation:
        """Denoise ``steps`` steps from each caption's own seed; deterministic on the CPU."""

    @abc.abstractmethod
    def fingerprint(self) -> dict:
        """What identifies this model's weights, for caches (JSON-serialisable)."""

    def default_settings(self) -> dict:
        return {}

    def check_steps(self, steps: int) -> None:
        """Refuse (``UserError``) a step count this model's pipeline cannot generate with, before
        anything runs; every count from 1 up is fine unless an adapter says otherwise."""
        return None  # an optional hook, not an abstract one

    # -- quantizing ------------------------------------------------------------------
    @property
    def is_quantized(self) -> bool:
        return self._quantization is not None

    @property
    def quantization(self):
        """The active ``benchmark.api.Quantization`` (its groups and modules), or None."""
        return self._quantization

    def quantize(self, transform: Transform | str, precision: Precision | str,
                 stats: dict[str, CalibrationStats] | None = None,
                 only: Iterable[str] | None = None, kernel: str = "auto", **params) -> dict[str, dict]:
        """Quantize the targets (all, or the group names / roles in ``only``) and install them.

        ``stats`` maps group names to calibration statistics (``benchmark.run.calibration``).
        ``kernel``: the online transform's path, "auto", "torch", "triton" (fused) or "compile".
        Returns each group's ``describe()`` (precision, chosen alpha, ...) to record.
        """

        if self._quantization is not None:
            raise RuntimeError("the model is already quantized: call restore() first")
        chosen = self.targets()
        if only is not None:
            only = set(only)
            chosen = [g for g in chosen if g.name in only or g.role in only]
            if not chosen:
                roles = dict.fromkeys(g.role for g in self.targets())
                raise UserError(f"no target group or role matches {sorted(only)}; roles: {', '.join(roles)}")
        self._quantization = quantize_(self.transformer, transform, precision, calibration=stats,
                                       targets=chosen, kernel=kernel, **params)
        return self._quantization.described

    def restore(self) -> None:
        """Put the original linears back (a no-op on a full-precision model)."""
        if self._quantization is not None:
            self._quantization.restore()
            self._quantization = None

    @contextlib.contextmanager
    def quantized(self, transform: Transform | str, precision: Precision | str,
                  stats: dict[str, CalibrationStats] | None = None,
                  only: Iterable[str] | None = None, kernel: str = "auto", **params):
        """``with adapter.quantized("hadanorm", "w4a4", stats) as described: ...``"""
        described = self.quantize(transform, precision, stats, only, kernel, **params)
        try:
            yield described
        finally:
            self.restore()
