"""SDCB, ViDiT-Q's static-dynamic channel balancing (Zhao et al., 2025): scale, then rotate."""

from benchmark.transform.base import AffineTransform


def sdcb(alpha: float | str = 0.5, hadamard: str = "full", block_size: int = 128,
         random_signs: bool = False, seed: int = 0) -> AffineTransform:
    """SDCB: SmoothQuant's static scales followed by a Hadamard rotation; no centering.

    alpha: migration strength in [0, 1], or "auto".
    hadamard: "full" or "block" (I (x) H_block_size).
    random_signs: R = H D with random signs D (as QuaRot), drawn with ``seed``; off by
                  default (the published numbers).
    """
    return AffineTransform(name="sdcb", alpha=alpha, rotation=hadamard, block_size=block_size,
                           random_signs=random_signs, seed=seed)
