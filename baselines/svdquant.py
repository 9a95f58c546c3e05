"""SVDQuant (Li et al., 2024; deepcompressor / nunchaku): smooth, then absorb the outliers
into a full-precision low-rank branch and quantize only the residual."""

from dataclasses import dataclass

from benchmark.errors import UserError
from benchmark.transform.base import AffineTransform
from benchmark.transform.lowrank import LowRankResidual


@dataclass
class SVDQuant(AffineTransform):
    """SmoothQuant's scales (``AffineTransform``'s alpha, "auto" included: the search then
    measures each alpha with the low-rank branch in place), an optional Hadamard rotation,
    and a rank-``rank`` branch (``benchmark.transform.lowrank.LowRankResidual``)."""

    name: str = "svdquant"
    rank: int = 32

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise UserError(f"rank must be a positive integer, got {self.rank!r}")
        if self.center:
            raise UserError("svdquant does not centre its input")

    def _build(self, linears, precision, scale, rotation, info, stats=None) -> LowRankResidual:
        return LowRankResidual(linears, precision, self.rank, scale=scale, rotation=rotation, info=info,
                               stats=stats)


def svdquant(alpha: float | str | None = 0.5, rank: int = 32, rotation: str | None = None,
             block_size: int = 128) -> SVDQuant:
    """SVDQuant: x~ = x / s, W~ = W diag(s) = L1 L2 + E, y = L1 (L2 x~) + Q(E) Q(x~) + b.

    s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha) from calibration (SmoothQuant's rule);
    L1 L2 the top-``rank`` SVD of W~, kept in the model's dtype and fed the unquantized x~;
    E quantized on the weight grid (blocks of 128), x~ per token. deepcompressor's PixArt
    recipe is this (smoothing + low rank, no rotation), the default here.

    alpha: migration strength in [0, 1], "auto" (searched per group), or None (no smoothing).
    rank: the branch's rank (cut to the layer's smaller side).
    rotation: None, or "full" / "block" (I (x) H_block_size): a Hadamard after the smoothing.
    """
    return SVDQuant(name="svdquant", alpha=alpha, rotation=rotation, block_size=block_size, rank=rank)
