"""Quantize any ``nn.Module`` in place, torchao style, and collect the calibration it needs.

    from benchmark import HadaNormConfig, calibrate, quantize_

    stats = calibrate(pipe.transformer, lambda: pipe("a photo of a cat", num_inference_steps=4))
    with quantize_(pipe.transformer, HadaNormConfig(alpha=0.5), "w4a4", calibration=stats):
        image = pipe("a photo of a cat").images[0]      # quantized
    # restored here; or: handle = quantize_(...); ...; handle.restore()

The targets are the groups of ``family=`` when given (a ``Family`` or a registered name), the
registered family's (``hadabench ls``) when the module is a transformer one describes, or when
it holds one such transformer (a wrapper: that submodule's groups), and otherwise every
``nn.Linear`` and every ``groups=1`` ``nn.Conv2d`` as a group of its own (a k x k convolution
quantized per pixel, ``benchmark.transform.conv``; grouped and depthwise ones skipped, the
reason in ``Quantization.skipped``); ``filter_fn(linear, qualified_name)`` narrows them (torchao's convention).

The configs are the points of the one affine design space (``AffineTransform``): each
``...Config`` is the baseline's own factory (``baselines/``, found through the transform
registry), so ``HadaNormConfig(alpha=0.5)`` is exactly what the registry name ``"hadanorm"``
with ``alpha=0.5`` builds. Any other ``Transform`` instance, or a registered name with its
parameters, works too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import torch
from torch import nn

from benchmark.errors import UserError
from benchmark.families.registry import FAMILIES, family_for
from benchmark.families.targets import (
    Family,
    TargetGroup,
    discover_targets,
    install,
    is_quantized,
    uninstall,
    watch_inputs,
)
from benchmark.quant.grid import WEIGHT_ROUNDINGS, Precision
from benchmark.transform.base import WORKSPACE, CalibrationStats, QuantizedGroup, Transform, on_kernel
from benchmark.transform.calibration import StatsCollector
from benchmark.transform.conv import quantize_conv
from benchmark.transform.registry import CONFIG_ALIASES, config_alias, create_transform

__all__ = ["Quantization", "SingleOutput", "calibrate", "quantize_", "quantize_linear", *CONFIG_ALIASES.values()]


def __getattr__(name: str):  # the ...Config aliases (PEP 562)
    return config_alias(name)

FilterFn = Callable[[nn.Linear, str], bool]


class Quantization:
    """What ``quantize_`` did to a module: ``described`` (per group name, what each quantized
    group records: precision, rotation, chosen alpha, ...), ``skipped`` (qualified name -> why a
    linear or convolution was left out: a family's exclusion, a grouped or depthwise convolution)
    and ``restore()``, which puts the original linears back. Also a context manager that restores
    on exit."""

    def __init__(self, module: nn.Module, groups: list[TargetGroup], modules: dict[str, QuantizedGroup]):
        self.module, self.groups, self.modules = module, groups, modules
        self.skipped = dict(getattr(groups, "skipped", {}))
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

    def __enter__(self) -> Quantization:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def __repr__(self) -> str:
        state = "active" if self.active else "restored"
        return f"Quantization({len(self.modules)} groups of {type(self.module).__name__}, {state})"


def _family(module: nn.Module, family: Family | str | None) -> tuple[Family | None, str]:
    """The family of ``module``'s targets and the path of the module it describes ("" for
    ``module`` itself): ``family`` given (a ``Family`` or a registered name), else the registered
    family of ``module``, else that of the one submodule a family describes (a pipeline's
    transformer inside a wrapper); none: every ``nn.Linear``."""
    if isinstance(family, str):
        return FAMILIES.get(family), ""
    if family is not None or family_for(module) is not None:
        return family or family_for(module), ""
    found = [(name, family_for(sub)) for name, sub in module.named_modules() if name and family_for(sub) is not None]
    outermost = [(name, fam) for name, fam in found
                 if not any(name.startswith(other + ".") for other, _ in found if other != name)]
    if len(outermost) > 1:
        places = ", ".join(f"{name} ({fam.name})" for name, fam in outermost)
        raise UserError(f"{type(module).__name__} holds several transformers that a family describes: {places}; "
                        "quantize each submodule on its own, or pass family= or targets=")
    return (outermost[0][1], outermost[0][0]) if outermost else (None, "")


def _targets(module, targets, family, filter_fn) -> list[TargetGroup]:
    if targets is not None:
        if family is not None or filter_fn is not None:
            raise UserError("give targets, or family / filter_fn to discover them, not both")
        return list(targets)
    family, path = _family(module, family)
    if not path:
        return discover_targets(module, family, filter_fn)
    prefix = path + "."
    inner = None if filter_fn is None else (lambda linear, name: filter_fn(linear, prefix + name))
    return [dataclasses.replace(group, name=prefix + group.name,
                                linears=[(prefix + name, linear) for name, linear in group.linears])
            for group in discover_targets(module.get_submodule(path), family, inner)]


def _check_calibration(calibration) -> None:
    if isinstance(calibration, torch.Tensor):
        raise UserError("calibration= takes statistics by group name, not a tensor of activations: "
                        "stats = benchmark.calibrate(module, run_fn) records them (quantize_linear takes a tensor)")
    if calibration is not None and not isinstance(calibration, dict):
        raise UserError(f"calibration= must be a dict of group name -> CalibrationStats (from benchmark.calibrate), "
                        f"not a {type(calibration).__name__}")


def _with_rounding(precision: Precision | str, weight_rounding: str) -> Precision:
    """``precision`` with its weights rounded as ``weight_rounding`` says ("rtn" keeps a
    ``Precision`` that already asks for GPTQ as it is)."""
    if weight_rounding not in WEIGHT_ROUNDINGS:
        raise UserError(f"unknown weight_rounding {weight_rounding!r}: use {' or '.join(map(repr, WEIGHT_ROUNDINGS))}")
    precision = Precision.parse(precision)
    if weight_rounding != "rtn":
        precision = dataclasses.replace(precision, weight_rounding=weight_rounding)
    return precision


def _check_rounding(module: QuantizedGroup, precision: Precision, transform: Transform) -> None:
    """A transform's own module (a plugin's) must say that it did GPTQ, rather than round to
    nearest under a GPTQ label."""
    if precision.weight_rounding != "rtn" and module.describe().get("weight_rounding") != precision.weight_rounding:
        raise UserError(f"transform {getattr(transform, 'name', type(transform).__name__)!r} builds its own "
                        f"module, which does not do weight_rounding={precision.weight_rounding!r} (its describe() "
                        "does not record it); GPTQ applies to the AffineTransform design space")


def quantize_(module: nn.Module, config: Transform | str = "none", precision: Precision | str = "w4a4",
              calibration: dict[str, CalibrationStats] | None = None,
              filter_fn: FilterFn | None = None, family: Family | str | None = None,
              targets: Iterable[TargetGroup] | None = None, kernel: str = "auto",
              weight_rounding: str = "rtn", **params) -> Quantization:
    """Quantize ``module``'s targets in place; returns the handle that restores them.

    config:      a ``Transform`` (e.g. ``HadaNormConfig(alpha=0.5)``, ``AffineTransform(...)``)
                 or a registered name, with its hyper-parameters as ``params``.
    precision:   ``"fp"`` (transforms on, quantizers off: the output must not change),
                 ``"w4a4"``, ``"w6a6"``, ..., ``"mxfp4"``, ``"nvfp4"`` (FP4 block formats, both
                 sides), ``"wmxfp4a8"`` (a side in FP4), ... or a ``Precision``.
    calibration: group name -> ``CalibrationStats`` (``calibrate``); needed by transforms that
                 scale channels; must cover every target then.
    filter_fn, family: which targets (module docstring; ``family`` a ``Family`` or a registered
                 name); ``targets``: an explicit list instead.
    kernel:      the online transform's path, "auto", "torch", "triton" (fused; INT
                 activations only: refused for FP4, where "auto" is torch) or "compile".
    weight_rounding: "rtn" (round to nearest) or "gptq" (INT weights only): GPTQ with the
                 Hessian of each group's transformed input, from calibration statistics
                 collected with ``calibrate(..., hessian=True)``.
    """
    if isinstance(config, str):
        config = create_transform(config, **params)
    elif params:
        raise UserError("hyper-parameters go to the transform's factory; pass a name, not an instance")
    if not isinstance(config, Transform):
        raise UserError(f"config must be a benchmark.Transform or a registered name, not {type(config).__name__}")
    if is_quantized(module):
        raise RuntimeError(f"{type(module).__name__} is already quantized: restore() first")
    precision = _with_rounding(precision, weight_rounding)
    _check_calibration(calibration)
    groups = _targets(module, targets, family, filter_fn)
    if not groups:
        raise UserError(f"{type(module).__name__} has no quantization targets (filter_fn rejected all?)")
    modules = {}
    with torch.no_grad():
        for group in groups:
            group_stats = None if calibration is None else calibration.get(group.name)
            if calibration is not None and group_stats is None:
                held = ", ".join(sorted(map(str, calibration))[:8]) + (", ..." if len(calibration) > 8 else "")
                raise UserError(f"calibration statistics have no entry for group {group.name!r} (role {group.role}); "
                                f"they hold {len(calibration)} groups: {held or 'none'}")
            if precision.weight_rounding == "gptq" and (group_stats is None or group_stats.hessian is None):
                raise UserError(f"weight_rounding='gptq' needs each group's input Hessian, and group {group.name!r} "
                                f"has {'no calibration statistics' if group_stats is None else 'none'}: calibrate "
                                "with benchmark.calibrate(module, run_fn, hessian=True)")
            if group.conv:  # a k x k convolution (its tap linear in linears): its own module
                quantized = quantize_conv(config, group.linears[0][1], precision, group_stats, kernel)
            else:
                quantized = config.quantize([lin for _, lin in group.linears], precision, group_stats)
            _check_rounding(quantized, precision, config)
            modules[group.name] = on_kernel(quantized, kernel)
    return Quantization(module, groups, modules)


@torch.no_grad()
def calibrate(module: nn.Module, run_fn: Callable[[], object], filter_fn: FilterFn | None = None,
              family: Family | str | None = None, targets: Iterable[TargetGroup] | None = None,
              max_sample_tokens: int = 4096, tokens_per_row: int = 256,
              seed: int = 0, hessian: bool = False) -> dict[str, CalibrationStats]:
    """Run ``run_fn()`` (your pipeline, a forward over cached inputs, ...) once, recording the
    input of every target of ``module``; returns the statistics by group name, for
    ``quantize_(..., calibration=...)``. Targets as in ``quantize_``. ``hessian``: also each
    group's input Hessians (two channels x channels float64 matrices per group), which
    ``quantize_(..., weight_rounding="gptq")`` needs."""
    if is_quantized(module):
        raise RuntimeError("calibrate the full-precision module: restore() it first")
    groups = _targets(module, targets, family, filter_fn)
    collector = StatsCollector(groups, max_sample_tokens, tokens_per_row, seed, hessian=hessian)
    with watch_inputs(module, groups, collector.record):
        run_fn()
    return collector.result()


def quantize_linear(linear, transform="none", precision="w4a4", calibration=None, weight_rounding="rtn",
                    **params):
    """Quantize one linear, or a list of linears that read the same input, under a transform.

    linear:      an ``nn.Linear`` or a list of them (same ``in_features``).
    transform:   a registered name (``hadabench ls``) or a ``Transform`` instance.
    precision:   ``"fp"``, ``"w4a4"``, ``"w6a6"``, ..., ``"mxfp4"``, ``"nvfp4"``, ``"wmxfp4a8"``,
                 ... or a ``Precision`` (``quantize_``).
    calibration: activations of the input, (samples, tokens, channels), or
                 ``CalibrationStats``; needed by transforms that scale channels, and by GPTQ.
    weight_rounding: "rtn" (round to nearest) or "gptq" (INT weights only): GPTQ with the
                 Hessian of the transformed input, from every token of the calibration
                 activations (or ``CalibrationStats.hessian``).
    params:      the transform's hyper-parameters (e.g. ``alpha=0.5``).

    Returns a module: ``q(x)`` gives ``linear(x)``'s shape, or a tuple with one output per
    linear when a list was given.
    """
    if isinstance(transform, str):
        transform = create_transform(transform, **params)
    elif params:
        raise UserError("hyper-parameters go to the transform's factory; pass a name, not an instance")
    precision = _with_rounding(precision, weight_rounding)
    gptq = precision.weight_rounding == "gptq"
    if isinstance(calibration, torch.Tensor):
        calibration = CalibrationStats.from_activations(calibration, hessian=gptq)
    if gptq and (calibration is None or calibration.hessian is None):
        raise UserError("weight_rounding='gptq' needs the Hessian of the input: pass calibration activations "
                        "(samples, tokens, channels), or CalibrationStats with a hessian")
    linears = list(linear) if isinstance(linear, (list, tuple)) else [linear]
    if not linears:
        raise UserError("quantize_linear needs at least one linear")
    with torch.no_grad():
        group = transform.quantize(linears, precision, calibration)
    _check_rounding(group, precision, transform)
    return group if isinstance(linear, (list, tuple)) else SingleOutput(group)


class SingleOutput(QuantizedGroup):
    """A one-linear group that returns its output itself rather than a 1-tuple."""

    def __init__(self, group: QuantizedGroup):
        super().__init__()
        self.group = group

    def forward(self, x):
        (y,) = self.group(x)
        return y

    def describe(self) -> dict:
        return self.group.describe()
