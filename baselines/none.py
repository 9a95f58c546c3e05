"""No transform: the activations are quantized as they are."""

from benchmark.transform.base import AffineTransform


def none() -> AffineTransform:
    """No transform (mu = 0, s = 1, R = I)."""
    return AffineTransform(name="none")
