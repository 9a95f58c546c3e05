"""An example plugin that replaces the quantized linear as a whole.

It keeps a rank-r branch of each weight in full precision and quantizes the rest (the idea
of SVDQuant, Li et al. 2024): W = U V + (W - U V), with only the residual quantized.
"""

import torch
from torch import nn

from benchmark import QuantizedGroup, Transform, quantize_activation, quantize_weight


class LowRankGroup(QuantizedGroup):
    def __init__(self, linears, precision, rank):
        super().__init__()
        weight = torch.cat([lin.weight.detach() for lin in linears])
        u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
        low = (u[:, :rank] * s[:rank]) @ vh[:rank]
        residual = (weight.double() - low).to(weight.dtype)
        if precision.weight_bits is not None:  # the weight grid the precision asks for
            residual = quantize_weight(residual, precision.weight_bits, precision.weight_block,
                                       precision.weight_symmetric)
        self.register_buffer("down", vh[:rank].to(weight.dtype))
        self.register_buffer("up", (u[:, :rank] * s[:rank]).to(weight.dtype))
        self.register_buffer("residual", residual.contiguous())
        # Linears without a bias (diffusers' attention projections often have none) add zero.
        bias = [lin.bias.detach() if lin.bias is not None else weight.new_zeros(lin.out_features)
                for lin in linears]
        self.register_buffer("bias", torch.cat(bias) if any(lin.bias is not None for lin in linears) else None)
        self.bits, self.rank = precision.activation_bits, rank
        self.widths = [lin.out_features for lin in linears]

    def forward(self, x):
        xq = x if self.bits is None else quantize_activation(x, self.bits)
        y = nn.functional.linear(xq, self.residual, self.bias) + (x @ self.down.T) @ self.up.T
        return tuple(y.split(self.widths, dim=-1))

    def describe(self):
        return {"rank": self.rank}


class LowRank(Transform):
    name = "lowrank"

    def __init__(self, rank=8):
        self.rank = rank

    def quantize(self, linears, precision, stats=None):
        return LowRankGroup(linears, precision, self.rank)

    def config(self):
        return {"rank": self.rank}


def lowrank(rank: int = 8) -> LowRank:
    """Low-rank full-precision branch plus a quantized residual."""
    return LowRank(rank)


TRANSFORMS = {"lowrank": lowrank}
