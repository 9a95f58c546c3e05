"""Dynamic centering alone: the paper's "Dyn. Center" ablation."""

from benchmark.transform.base import AffineTransform


def dyncenter(correction: str = "quantized_token") -> AffineTransform:
    """Dyn. Center: subtract each sample's channel means; no scaling, no rotation.

    correction: how W mu is added back ("quantized_token", "fp_token" or "exact").
    """
    return AffineTransform(name="dyncenter", center=True, correction=correction)
