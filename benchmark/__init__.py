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

from benchmark import _compat  # noqa: F401  (before anything imports torchvision)
from benchmark._version import __version__
from benchmark.api import Quantization, calibrate, quantize_, quantize_linear
from benchmark.errors import UserError
from benchmark.families.targets import Family, TargetGroup, discover_targets
from benchmark.plugins import load_plugin_file
from benchmark.quant.grid import Precision, quantize_activation, quantize_weight
from benchmark.quant.hadamard import HadamardRotation, hadamard_matrix
from benchmark.transform.base import (
    CORRECTIONS,
    AffineTransform,
    CalibrationStats,
    QuantizedGroup,
    Transform,
    TransformedLinear,
)
from benchmark.transform.registry import CONFIG_ALIASES, config_alias, create_transform, transforms

__all__ = [
    "__version__",
    "AffineTransform", "CalibrationStats", "CORRECTIONS", "Family", "HadamardRotation", "Precision",
    "Quantization", "QuantizedGroup", "TargetGroup", "Transform", "TransformedLinear", "UserError", "calibrate",
    "create_transform", "discover_targets", "hadamard_matrix", "load_plugin_file", "quantize_",
    "quantize_activation", "quantize_linear", "quantize_weight", "transforms", *CONFIG_ALIASES.values(),
]


def __getattr__(name: str):  # HadaNormConfig and the other ...Config aliases (PEP 562)
    return config_alias(name)
