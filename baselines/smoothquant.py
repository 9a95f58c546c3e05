"""SmoothQuant (Xiao et al., 2023): static per-channel scales move outliers into the weights."""

from benchmark.transform.base import AffineTransform


def smoothquant(alpha: float | str = 0.5) -> AffineTransform:
    """SmoothQuant: s_j = max|X_j|^alpha / max|W_:,j|^(1-alpha), no rotation.

    alpha: migration strength in [0, 1], or "auto" to search it per layer group.
    """
    return AffineTransform(name="smoothquant", alpha=alpha)
