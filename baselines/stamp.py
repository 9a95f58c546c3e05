"""STaMP (Federici et al., 2025, arXiv 2510.26771): a transform along the sequence and
mixed precision, its first (low-frequency) tokens at 8 bits."""

from benchmark.quant.grid import Precision
from benchmark.transform.base import AffineTransform, Transform
from benchmark.transform.sequence import SequenceMixedPrecision, check_sequence_options

KEEP_BITS = 8


class STaMP(Transform):
    """X~ = T X per sample (T orthogonal over tokens), the first ``keep`` tokens of X~
    quantized at 8 bits and the rest at the activation precision, Y = T^T (Q(W~) Q(X~ R^T)) + b,
    with an optional Hadamard channel rotation R (``benchmark.transform.sequence``)."""

    name = "stamp"

    def __init__(self, keep: int | float = 64, sequence: str = "dwt", layout: str = "auto",
                 rotation: str | None = None, block_size: int = 128):
        check_sequence_options(keep, sequence, layout)
        self.keep, self.sequence, self.layout = keep, sequence, layout
        # the channel part, a point of the affine design space (it checks rotation, block_size)
        self.channel = AffineTransform(name="stamp", rotation=rotation, block_size=block_size)

    def quantize(self, linears, precision, stats=None) -> SequenceMixedPrecision:
        inner = self.channel.quantize(linears, Precision.parse(precision), stats)
        return SequenceMixedPrecision(inner, self.keep, self.sequence, self.layout, KEEP_BITS)

    def config(self) -> dict:
        return {"keep": self.keep, "keep_bits": KEEP_BITS, "sequence": self.sequence, "layout": self.layout,
                "rotation": self.channel.rotation, "block_size": self.channel.block_size}


def stamp(keep: int | float = 64, sequence: str = "dwt", layout: str = "auto", rotation: str | None = None,
          block_size: int = 128) -> STaMP:
    """STaMP: Y = T^T Q(W~) Q(T X R^T) + b, T orthogonal over each sample's tokens.

    keep: the first ``keep`` transformed tokens of each sample are quantized at 8 bits, the
          rest at the precision's activation bits; a float in (0, 1) is a fraction of the
          tokens instead (rounded up). 64 of PixArt-Sigma 1024's 4096 image tokens is the
          paper's 1.6%; a sequence of at most ``keep`` tokens is all at 8 bits.
    sequence: "dwt" (multi-level Haar, O(tokens): 2-D on a square n x n patch grid down to an
              LL band of at most ``keep`` tokens, else 1-D) or "dct" (orthonormal DCT-II).
    layout: "auto" (a square token count is an image grid), "1d" or "2d".
    rotation: None, or "full" / "block" (I (x) H_block_size): a Hadamard over the channels too.
    """
    return STaMP(keep=keep, sequence=sequence, layout=layout, rotation=rotation, block_size=block_size)
