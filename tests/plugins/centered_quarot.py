"""An exact plugin that is a point of the affine design space: QuaRot's randomized Hadamard
after dynamic centering (cheap to build: ``scripts/time_add_row.py`` times adding its row)."""

from benchmark import AffineTransform


def centered_quarot(seed: int = 0, correction: str = "quantized_token") -> AffineTransform:
    """Centre each sample's channels, then a Hadamard rotation with random signs."""
    return AffineTransform(name="centered_quarot", center=True, rotation="full", random_signs=True,
                           seed=seed, correction=correction)


TRANSFORMS = {"centered_quarot": centered_quarot}
