"""HadaNorm (Federici et al., 2025): centre and rescale each channel, then rotate."""

from benchmark.transform.base import AffineTransform


def hadanorm(alpha: float | str = 0.5, hadamard: str = "full", block_size: int = 128,
             correction: str = "quantized_token", random_signs: bool = False,
             seed: int = 0) -> AffineTransform:
    """HadaNorm: x~ = H diag(s)^-1 (x - mu), mu dynamic, s from centred calibration absmax.

    alpha: migration strength in [0, 1], or "auto".
    hadamard: "full" or "block" (I (x) H_block_size).
    correction: how W mu is added back: "quantized_token" (the paper's appended token),
                "fp_token" or "exact".
    random_signs: R = H D with random signs D (as QuaRot), drawn with ``seed``; off by
                  default (the published numbers).
    """
    return AffineTransform(name="hadanorm", center=True, alpha=alpha, rotation=hadamard,
                           block_size=block_size, correction=correction, random_signs=random_signs,
                           seed=seed)
