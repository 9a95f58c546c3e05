"""A model family from a plugin file: a toy transformer whose blocks hold a pre-norm MLP and a
gate. ``hadabench validate tests/plugins/toy_family.py`` checks it; ``--plugin`` registers it."""

import torch
from torch import nn

from benchmark.families.targets import Family


class ToyBlock(nn.Module):
    def __init__(self, dim=24, hidden=48):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, hidden)      # up and gate read the same normed input
        self.gate = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        self.modulation = nn.Linear(8, dim)   # reads a per-sample condition: excluded

    def forward(self, x, cond):
        h = self.norm(x) + self.modulation(cond)[:, None]
        return x + self.down(torch.nn.functional.silu(self.gate(h)) * self.up(h))


class ToyTransformer(nn.Module):
    def __init__(self, depth=3):
        super().__init__()
        self.embed = nn.Linear(4, 24)
        self.blocks = nn.ModuleList(ToyBlock() for _ in range(depth))
        self.out = nn.Linear(24, 4)

    def forward(self, x, cond):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h, cond)
        return self.out(h)


def _example():
    torch.manual_seed(0)
    return ToyTransformer()


FAMILIES = {"toy": Family(
    name="toy", description="a toy gated-MLP transformer (tests)", transformer=("ToyTransformer",),
    blocks={"blocks": {"mlp_in": ("up", "gate"), "mlp_out": ("down",)}},
    exclude={"modulation": "reads a per-sample condition vector, not tokens"},
    example=_example)}
