"""Which quantization targets a run quantizes: a subset by role and by block.

``--roles self_attn_qkv,cross_attn_kv`` and ``--blocks 0-3`` (ranges and lists, e.g.
``0,2-3``) pick target groups by their ``(role, block_index)``; every other linear stays the
original ``nn.Linear``. ``None`` means every role (every block). A role list naming every
known role is the default itself, so it is stored as ``None`` and hashes like it.

The filter only reads ``TargetGroup.role`` and ``TargetGroup.block_index``, so it does not
care how a model family discovers its targets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from benchmark.errors import UserError
from benchmark.models.base import ROLES

__all__ = ["Subset", "parse_blocks", "parse_roles"]


def parse_roles(value: str | Sequence[str] | None) -> list[str] | None:
    """``"a,b"`` or ``["a", "b"]`` -> the roles; None when every role.

    Which roles exist is the loaded model's family's business (``Subset.check`` refuses the
    others once the model is loaded). PixArt's roles (the default family's) are put in block
    order, and a list of all of them is the default itself, so that such lists hash alike."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    roles = list(dict.fromkeys(str(r).strip() for r in items if str(r).strip()))
    if not roles:
        raise UserError("--roles: the role list is empty (omit it to quantize every role)")
    if not set(roles) <= set(ROLES):
        return roles
    chosen = [r for r in ROLES if r in roles]
    return None if len(chosen) == len(ROLES) else chosen


def parse_blocks(value: str | int | Sequence | None) -> list[int] | None:
    """``"0-3"``, ``"0,2-3"``, ``2`` or ``[0, 1]`` -> sorted block indices; None when all."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else [value] if isinstance(value, int) else list(value)
    blocks: set[int] = set()
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        first, dash, last = text.partition("-")
        try:
            low, high = int(first), int(last if dash else first)
        except ValueError:
            raise UserError(f"--blocks: cannot read {text!r}: write indices and ranges, e.g. 0-3 or 0,2") from None
        if low < 0 or high < low:
            raise UserError(f"--blocks: {text!r} is not a range of block indices from 0 up")
        blocks.update(range(low, high + 1))
    if not blocks:
        raise UserError("--blocks: the block list is empty (omit it to quantize every block)")
    return sorted(blocks)


def _ranges(blocks: Iterable[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    out, run = [], []
    for b in sorted(blocks):
        if run and b == run[-1] + 1:
            run.append(b)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [b]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


@dataclass(frozen=True)
class Subset:
    roles: tuple[str, ...] | None = None   # None: every role
    blocks: tuple[int, ...] | None = None  # None: every block

    @classmethod
    def of(cls, roles=None, blocks=None) -> Subset:
        roles, blocks = parse_roles(roles), parse_blocks(blocks)
        return cls(None if roles is None else tuple(roles), None if blocks is None else tuple(blocks))

    @property
    def everything(self) -> bool:
        return self.roles is None and self.blocks is None

    @property
    def label(self) -> str:
        """"all", or e.g. "roles=self_attn_qkv;blocks=0-1" (used in cell keys)."""
        parts = ([f"roles={'+'.join(self.roles)}"] if self.roles is not None else []) + \
                ([f"blocks={_ranges(self.blocks)}"] if self.blocks is not None else [])
        return ";".join(parts) or "all"

    def to_json(self) -> dict:
        return {"roles": None if self.roles is None else list(self.roles),
                "blocks": None if self.blocks is None else list(self.blocks)}

    def check(self, targets: Sequence) -> None:
        """Refuse roles the loaded model does not have and blocks beyond its last."""
        roles = {g.role for g in targets}
        missing = [r for r in self.roles or () if r not in roles]
        if missing:
            raise UserError(f"--roles: this model has no {missing[0]!r} targets; its roles: "
                             f"{', '.join(sorted(roles))}")
        count = 1 + max(g.block_index for g in targets)
        beyond = [b for b in self.blocks or () if b >= count]
        if beyond:
            raise UserError(f"--blocks: block {beyond[0]} is out of range: this model has "
                             f"{count} blocks (0-{count - 1})")

    def select(self, targets: Sequence) -> list:
        return [g for g in targets if (self.roles is None or g.role in self.roles)
                and (self.blocks is None or g.block_index in self.blocks)]

    def only(self, targets: Sequence) -> list[str] | None:
        """The group names to pass to ``ModelAdapter.quantize(only=...)``; None for all."""
        return None if self.everything else [g.name for g in self.select(targets)]
