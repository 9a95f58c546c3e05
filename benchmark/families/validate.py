"""``hadabench validate FAMILY``: checks of a model family declaration on its example transformer."""

from __future__ import annotations

import fnmatch
import re

import torch

from benchmark.errors import UserError
from benchmark.families.registry import families
from benchmark.families.targets import discover_targets
from benchmark.quant.grid import Precision
from benchmark.transform.base import CalibrationStats
from benchmark.transform.exactness import EXACT_TOLERANCE, relative_error
from benchmark.transform.registry import BASELINES, create_transform
from benchmark.transform.validate import Check, synthetic_activations

__all__ = ["excluded_summary", "validate_family"]


def excluded_summary(family, skipped: dict[str, str]) -> str:
    """What discovery left out (``Targets.skipped``), by the family's exclusion that matched each
    layer (a refused convolution by its name, indices as *), with how many layers: "none" if none.
    From the discovery's own record: a family whose blocks are patterns (the UNet's
    ``down_blocks.*.resnets``) is read as its discovery read it."""
    counts: dict[str, int] = {}
    for qualified in skipped:
        name = next((pattern for pattern in family.exclude if fnmatch.fnmatchcase(qualified, f"*.{pattern}")),
                    re.sub(r"\.\d+(?=\.|$)", ".*", qualified))
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{name} ({count})" for name, count in sorted(counts.items())) or "none"


@torch.no_grad()
def validate_family(name: str) -> list[Check]:
    """Checks of a model family declaration on its ``example`` transformer: discovery covers
    every linear of every block (a role or a named exclusion), the groups read one width, and
    every baseline is exact at fp and finite at w4a4 on every group."""
    checks: list[Check] = []
    entry = families().get(name)
    if entry is None or entry.value is None:
        reason = "not registered" if entry is None else entry.error
        return [Check("loads", False, f"family {name!r}: {reason}")]
    family = entry.value
    checks.append(Check("loads", True, f"{len(family.roles)} roles: {', '.join(family.roles)}"))
    try:
        if family.example is None:
            raise UserError("the declaration has no example= (a small random transformer to check)")
        module = family.example()
        if not family.matches(module):
            raise UserError(f"example is a {type(module).__name__}, not one of {family.transformer}")
        groups = discover_targets(module, family)
    except Exception as error:
        checks.append(Check("covers every block linear", False, f"{type(error).__name__}: {error}"))
        return checks
    linears = sum(len(g.linears) for g in groups)
    excluded = excluded_summary(family, groups.skipped)
    checks.append(Check("covers every block linear", True,
                        f"{len(groups)} groups, {linears} linears; excluded: {excluded}"))
    widths = [g.name for g in groups if len({lin.in_features for _, lin in g.linears}) != 1]
    checks.append(Check("one input width per group", not widths, ", ".join(widths) or f"{len(groups)} groups"))

    def exact():
        worst = 0.0
        for transform in BASELINES:
            for group in groups:
                layers = [lin for _, lin in group.linears]
                x = synthetic_activations(group.in_features)
                stats = CalibrationStats.from_activations(synthetic_activations(group.in_features, seed=1))
                fp = create_transform(transform).quantize(layers, Precision.parse("fp"), stats)
                err = relative_error(fp(x), [lin(x) for lin in layers])
                if not err < EXACT_TOLERANCE:
                    return False, f"{transform} on {group.name}: relative error {err:.2e}"
                worst = max(worst, err)
                q = create_transform(transform).quantize(layers, Precision.parse("w4a4"), stats)
                if not all(torch.isfinite(o).all() for o in q(x)):
                    return False, f"{transform} on {group.name}: non-finite output at w4a4"
        return True, f"the {len(BASELINES)} baselines on every group: worst fp relative error {worst:.1e}"

    try:
        checks.append(Check("exact at fp, finite at w4a4", *exact()))
    except Exception as error:
        checks.append(Check("exact at fp, finite at w4a4", False, f"{type(error).__name__}: {error}"))
    return checks
