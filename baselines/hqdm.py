"""HQ-DM's "single Hadamard transformation" (HQ-DM): one Hadamard rotation of the input
channels, folded into the weights; no scaling, no centering, no random signs."""

from benchmark.transform.base import AffineTransform


def hqdm() -> AffineTransform:
    """HQ-DM: x~ = H x, W~ = W H^T, with H the full Hadamard matrix (``affine(rotation=full)``).

    It is QuaRot without QuaRot's random signs (QuaRot: R = H D, D a random +-1 diagonal drawn
    with a seed) and SDCB without SDCB's SmoothQuant scales (SDCB: R diag(s)^-1 with the
    alpha rule); on a UNet's convolutions it rotates the input channels of every tap.
    """
    return AffineTransform(name="hqdm", rotation="full")
