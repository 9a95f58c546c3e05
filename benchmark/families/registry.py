"""The model-family registry: the built-in families (``benchmark.families.builtin``), entry
points of the ``hadabench.families`` group (a ``Family``), and plugin files'
``FAMILIES = {"name": Family(...)}`` (``benchmark.plugins``)."""

from __future__ import annotations

from torch import nn

from benchmark.errors import UserError
from benchmark.families.builtin import FAMILIES as BUILT_IN_FAMILIES
from benchmark.families.targets import Family
from benchmark.registry import Entry, Registry

__all__ = ["FAMILIES", "families", "family_for"]


def _check_family(name: str, family) -> None:
    if not isinstance(family, Family):
        raise UserError(f"family {name!r} is a {type(family).__name__}, not a benchmark.Family")


FAMILIES = Registry("model family", "hadabench.families", BUILT_IN_FAMILIES, check=_check_family)


def families() -> dict[str, Entry]:
    """All known model families by name."""
    return FAMILIES.entries()


def family_for(module: nn.Module) -> Family | None:
    """The registered family whose transformer class ``module`` is, or None."""
    for entry in families().values():
        if entry.value is not None and entry.value.matches(module):
            return entry.value
    return None
