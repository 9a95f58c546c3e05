"""Quantize any ``nn.Module`` in place, torchao style, and collect the calibration it needs.

    from benchmark import HadaNormConfig, calibrate, quantize_

    stats = calibrate(pipe.transformer, lambda: pipe("a photo of a cat", num_inference_steps=4))
    with quantize_(pipe.transformer, HadaNormConfig(alpha=0.5), "w4a4", calibration=stats):
        image = pipe("a photo of a cat").images[0]      # quantized
    # restored here; or: handle = quantize_(...); ...; handle.restore()

The targets are the registered family's (``hadabench ls``) when the module is a transformer
one describes, the groups of ``family=`` when given, and otherwise every ``nn.Linear`` as a
group of its own; ``filter_fn(linear, qualified_name)`` narrows them (torchao's convention).

The configs are the points of the one affine design space (``AffineTransform``): each
``...Config`` below is the baseline's own factory (``baselines/``), so ``HadaNormConfig(alpha=0.5)``
is exactly what the registry name ``"hadanorm"`` with ``alpha=0.5`` builds. Any other
``Transform`` instance, or a registered name with its parameters, works too.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from baselines.dyncenter import dyncenter as DynCenterConfig
from baselines.hadanorm import hadanorm as HadaNormConfig
from baselines.none import none as NoTransformConfig
from baselines.quarot import quarot as QuaRotConfig
from baselines.sdcb import sdcb as SDCBConfig
from baselines.smoothquant import smoothquant as SmoothQuantConfig

from .quant import Precision
from .targets import (Family, TargetGroup, discover_targets, install, is_quantized, uninstall,
                      watch_inputs)
from .transform import WORKSPACE, CalibrationStats, QuantizedGroup, Transform, on_kernel

__all__ = ["DynCenterConfig", "HadaNormConfig", "NoTransformConfig", "QuaRotConfig",
           "Quantization", "SDCBConfig", "SmoothQuantConfig", "calibrate", "quantize_"]

FilterFn = Callable[[nn.Linear, str], bool]


class Quantization:
    """What ``quantize_`` did to a module: ``described`` (per group name, what each quantized
    group records: precision, rotation, chosen alpha, ...) and ``restore()``, which puts the
    original linears back. Also a context manager that restores on exit."""

    def __init__(self, module: nn.Module, groups: list[TargetGroup], modules: dict[str, QuantizedGroup]):
        self.module, self.groups, self.modules = module, groups, modules
        self._originals = install(module, groups, modules)
        self.described = {name: m.describe() for name, m in modules.items()}

    @property
    def active(self) -> bool:
        return bool(self._originals)

    def restore(self) -> None:
        """Put the original linears back (again: a no-op), and free the torch path's buffers."""
        uninstall(self.module, self._originals)
        self._originals = {}
        WORKSPACE.clear()

    def __enter__(self) -> "Quantization":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def __repr__(self) -> str:
        state = "active" if self.active else "restored"
        return f"Quantization({len(self.modules)} groups of {type(self.module).__name__}, {state})"


def _targets(module, targets, family, filter_fn) -> list[TargetGroup]:
    if targets is not None:
        if family is not None or filter_fn is not None:
            raise ValueError("give targets, or family / filter_fn to discover them, not both")
        return list(targets)
    return discover_targets(module, family, filter_fn)


def quantize_(module: nn.Module, config: Transform | str = "none", precision: Precision | str = "w4a4",
              calibration: dict[str, CalibrationStats] | None = None,
              filter_fn: FilterFn | None = None, family: Family | None = None,
              targets: Iterable[TargetGroup] | None = None, kernel: str = "auto",
              **params) -> Quantization:
    """Quantize ``module``'s targets in place; returns the handle that restores them.

    config:      a ``Transform`` (e.g. ``HadaNormConfig(alpha=0.5)``, ``AffineTransform(...)``)
                 or a registered name, with its hyper-parameters as ``params``.
    precision:   ``"fp"`` (transforms on, quantizers off: the output must not change),
                 ``"w4a4"``, ``"w6a6"``, ... or a ``Precision``.
    calibration: group name -> ``CalibrationStats`` (``calibrate``); needed by transforms that
                 scale channels; must cover every target then.
    filter_fn, family: which targets (module docstring); ``targets``: an explicit list instead.
    kernel:      the online transform's path, "auto", "torch" or "triton" (fused).
    """
    from .registry import create_transform

    if isinstance(config, str):
        config = create_transform(config, **params)
    elif params:
        raise ValueError("hyper-parameters go to the transform's factory; pass a name, not an instance")
    if not isinstance(config, Transform):
        raise ValueError(f"config must be a benchmark.Transform or a registered name, not {type(config).__name__}")
    if is_quantized(module):
        raise RuntimeError(f"{type(module).__name__} is already quantized: restore() first")
    precision = Precision.parse(precision)
    groups = _targets(module, targets, family, filter_fn)
    if not groups:
        raise ValueError(f"{type(module).__name__} has no quantization targets (filter_fn rejected all?)")
    modules = {}
    with torch.no_grad():
        for group in groups:
            group_stats = None if calibration is None else calibration.get(group.name)
            if calibration is not None and group_stats is None:
                raise ValueError(f"calibration statistics have no entry for {group.name}")
            quantized = config.quantize([lin for _, lin in group.linears], precision, group_stats)
            modules[group.name] = on_kernel(quantized, kernel)
    return Quantization(module, groups, modules)


@torch.no_grad()
def calibrate(module: nn.Module, run_fn: Callable[[], object], filter_fn: FilterFn | None = None,
              family: Family | None = None, targets: Iterable[TargetGroup] | None = None,
              max_sample_tokens: int = 4096, tokens_per_row: int = 256,
              seed: int = 0) -> dict[str, CalibrationStats]:
    """Run ``run_fn()`` (your pipeline, a forward over cached inputs, ...) once, recording the
    input of every target of ``module``; returns the statistics by group name, for
    ``quantize_(..., calibration=...)``. Targets as in ``quantize_``."""
    from .calibration import StatsCollector

    if is_quantized(module):
        raise RuntimeError("calibrate the full-precision module: restore() it first")
    groups = _targets(module, targets, family, filter_fn)
    collector = StatsCollector(groups, max_sample_tokens, tokens_per_row, seed)
    with watch_inputs(module, groups, collector.record):
        run_fn()
    return collector.result()
