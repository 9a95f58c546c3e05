"""hadabench: activation transforms for low-bit diffusion transformers, benchmarked.

The public API::

    from benchmark import quantize_linear
    q = quantize_linear(linear, "hadanorm", "w4a4", calibration=x_calib, alpha=0.5)
    y = q(x)

    from benchmark import HadaNormConfig, calibrate, quantize_     # any nn.Module, in place
    stats = calibrate(pipe.transformer, lambda: pipe(prompts))
    with quantize_(pipe.transformer, HadaNormConfig(alpha=0.5), "w4a4", calibration=stats):
        images = pipe(prompts).images
"""

from __future__ import annotations

from . import _compat  # noqa: F401  (before anything imports torchvision)
from .hadamard import HadamardRotation, hadamard_matrix
from .quant import Precision, quantize_activation, quantize_weight
from .registry import create_transform, load_plugin_file, transforms
from .transform import (CORRECTIONS, AffineTransform, CalibrationStats, QuantizedGroup,
                        Transform, TransformedLinear)
from .quantize_api import (DynCenterConfig, HadaNormConfig, NoTransformConfig, Quantization,
                           QuaRotConfig, SDCBConfig, SmoothQuantConfig, calibrate, quantize_)
from .targets import Family, TargetGroup, discover_targets

__version__ = "0.1.0"

__all__ = [
    "AffineTransform", "CalibrationStats", "CORRECTIONS", "DynCenterConfig", "Family",
    "HadaNormConfig", "HadamardRotation", "NoTransformConfig", "Precision", "QuaRotConfig",
    "Quantization", "QuantizedGroup", "SDCBConfig", "SmoothQuantConfig", "TargetGroup",
    "Transform", "TransformedLinear", "calibrate", "create_transform", "discover_targets",
    "hadamard_matrix", "load_plugin_file", "quantize_", "quantize_activation", "quantize_linear",
    "quantize_weight", "transforms",
]


def quantize_linear(linear, transform="none", precision="w4a4", calibration=None, **params):
    """Quantize one linear, or a list of linears that read the same input, under a transform.

    linear:      an ``nn.Linear`` or a list of them (same ``in_features``).
    transform:   a registered name (``hadabench ls``) or a ``Transform`` instance.
    precision:   ``"fp"``, ``"w4a4"``, ``"w6a6"``, ... or a ``Precision``.
    calibration: activations of the input, (samples, tokens, channels), or
                 ``CalibrationStats``; needed by transforms that scale channels.
    params:      the transform's hyper-parameters (e.g. ``alpha=0.5``).

    Returns a module: ``q(x)`` gives ``linear(x)``'s shape, or a tuple with one output per
    linear when a list was given.
    """
    import torch

    if isinstance(transform, str):
        transform = create_transform(transform, **params)
    elif params:
        raise ValueError("hyper-parameters go to the transform's factory; pass a name, not an instance")
    if isinstance(calibration, torch.Tensor):
        calibration = CalibrationStats.from_activations(calibration)
    linears = list(linear) if isinstance(linear, (list, tuple)) else [linear]
    if not linears:
        raise ValueError("quantize_linear needs at least one linear")
    with torch.no_grad():
        group = transform.quantize(linears, Precision.parse(precision), calibration)
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
