"""Two transforms that fail on purpose: one raises, one makes NaN."""

import torch

from benchmark import AffineTransform, QuantizedGroup, Transform


class Raises(Transform):
    name = "raises"

    def quantize(self, linears, precision, stats):
        raise RuntimeError("this transform always fails")


class _NaN(QuantizedGroup):
    def __init__(self, linears):
        super().__init__()
        self.linears = list(linears)

    def forward(self, x):
        return tuple(torch.full_like(lin(x), float("nan")) for lin in self.linears)


class MakesNaN(AffineTransform):
    def quantize(self, linears, precision, stats=None):
        return _NaN(linears)


def raises() -> Raises:
    """Raises in quantize."""
    return Raises()


def makes_nan() -> MakesNaN:
    """Outputs NaN."""
    return MakesNaN(name="makes_nan")


TRANSFORMS = {"raises": raises, "makes_nan": makes_nan}
