"""QuaRot (Ashkboos et al., 2024): a randomized Hadamard rotation spreads outliers."""

from benchmark.transform.base import AffineTransform


def quarot(hadamard: str = "full", block_size: int = 128, seed: int = 0) -> AffineTransform:
    """QuaRot: R = H D, a Hadamard matrix times random signs; no scaling, no centering.

    hadamard: "full" (all channels, H_K (x) H_2^m) or "block" (I (x) H_block_size).
    seed: draws the random signs.
    """
    return AffineTransform(name="quarot", rotation=hadamard, block_size=block_size,
                           random_signs=True, seed=seed)
