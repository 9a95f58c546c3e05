"""A transform for testing the gate: QuaRot whose quantized output gets a small deterministic
error, scaled by HADABENCH_TEST_DEGRADE (0, the default: honest QuaRot). It stays exact at
full precision, so only the gate, not the exactness check, can catch it."""

import os

import torch

from benchmark import AffineTransform, TransformedLinear


class Degraded(TransformedLinear):
    def forward(self, x):
        outputs = super().forward(x)
        level = float(os.environ.get("HADABENCH_TEST_DEGRADE", "0"))
        if not level or self.precision.activation_bits is None:
            return outputs
        noise = torch.Generator().manual_seed(0)
        return tuple(y + level * y.std() * torch.randn(y.shape, generator=noise).to(y) for y in outputs)


class DegradedQuaRot(AffineTransform):
    def _build(self, linears, precision, scale, rotation, info):
        return Degraded(linears, precision, center=self.center, scale=scale, rotation=rotation,
                        correction=self.correction, info=info)


def degraded() -> DegradedQuaRot:
    """QuaRot plus an error of HADABENCH_TEST_DEGRADE times each output's std when quantized."""
    return DegradedQuaRot(name="degraded", rotation="full", random_signs=True)


TRANSFORMS = {"degraded": degraded}
