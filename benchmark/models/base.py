"""What the harness needs from a text-to-image diffusion transformer, and the parts every
model family shares: finding the quantization targets inside the transformer blocks, and
swapping them for quantized modules and back without reloading the model.

A model family subclasses ``ModelAdapter`` and implements ``generate`` (and ``fingerprint``
for caches). Both shipped families use diffusers' ``PixArtTransformer2DModel``, whose blocks
are ``BasicTransformerBlock``s: self-attention ``attn1``, cross-attention ``attn2`` (keys and
values from the text), and a GELU feed-forward ``ff``.
"""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from ..exactness import check_outputs
from ..quant import Precision
from ..transform import CalibrationStats, QuantizedGroup, Transform, TransformedLinear

__all__ = ["ROLES", "Generation", "ModelAdapter", "QuantizedMember", "TargetGroup", "find_targets"]

# Roles of the target groups, in block order. Each group is the set of linears that read one
# input tensor, so one transform of that input serves all of them.
ROLES = ("self_attn_qkv", "self_attn_out", "cross_attn_q", "cross_attn_kv", "cross_attn_out",
         "ffn_up", "ffn_down")
# Where each role's linears live inside a BasicTransformerBlock.
_BLOCK_LAYOUT = {
    "self_attn_qkv": ("attn1.to_q", "attn1.to_k", "attn1.to_v"),
    "self_attn_out": ("attn1.to_out.0",),
    "cross_attn_q": ("attn2.to_q",),
    "cross_attn_kv": ("attn2.to_k", "attn2.to_v"),
    "cross_attn_out": ("attn2.to_out.0",),
    "ffn_up": ("ff.net.0.proj",),
    "ffn_down": ("ff.net.2",),
}


@dataclass
class TargetGroup:
    """Linears inside one transformer block that read the same input.

    name: unique, e.g. ``"transformer_blocks.3.self_attn_qkv"``; role: one of ``ROLES``;
    linears: ``(qualified name in the transformer, module)`` pairs, in output order.
    """

    name: str
    role: str
    block_index: int
    linears: list[tuple[str, nn.Linear]]

    @property
    def in_features(self) -> int:
        return self.linears[0][1].in_features


@dataclass
class Generation:
    """The result of ``ModelAdapter.generate``: one entry per caption, in order."""

    captions: list[str]
    seeds: list[int]
    latents: torch.Tensor  # final latents (pixels for a pixel-space model), float32, CPU
    images: torch.Tensor   # decoded images, (N, 3, H, W) float32 in [0, 1], CPU
    settings: dict = field(default_factory=dict)  # steps, guidance, resolution: record them


def find_targets(transformer: nn.Module) -> list[TargetGroup]:
    """Every linear of every transformer block, grouped by shared input and tagged by role.

    Raises when a block holds a linear that no role accounts for, so a model whose blocks
    differ from PixArt's is refused rather than quantized partially.
    """
    blocks = getattr(transformer, "transformer_blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ValueError(f"{type(transformer).__name__} has no transformer_blocks: not a PixArt-style transformer")
    groups = []
    for index, block in enumerate(blocks):
        prefix = f"transformer_blocks.{index}"
        found = set()
        for role, paths in _BLOCK_LAYOUT.items():
            linears = []
            for path in paths:
                try:
                    module = block.get_submodule(path)
                except AttributeError:
                    raise ValueError(f"block {index} has no {path}: not a PixArt BasicTransformerBlock") from None
                if not isinstance(module, nn.Linear):
                    raise ValueError(f"{prefix}.{path} is a {type(module).__name__}, not an nn.Linear "
                                     "(already quantized? restore() first)")
                linears.append((f"{prefix}.{path}", module))
                found.add(path)
            groups.append(TargetGroup(f"{prefix}.{role}", role, index, linears))
        extra = [name for name, m in block.named_modules() if isinstance(m, nn.Linear) and name not in found]
        if extra:
            raise ValueError(f"block {index} has linears no role covers: {extra}")
    return groups


class _SharedCall:
    """Runs a group module once per distinct input and hands each member its own output.

    diffusers calls to_q, to_k and to_v one after the other with the same tensor. The cache
    keeps a reference to that tensor (so its identity cannot be reused by a new tensor) and
    its version counter (so an in-place change is noticed), and is dropped as soon as every
    member has taken its output, so no activations outlive the call.
    """

    def __init__(self, module: QuantizedGroup, group: TargetGroup):
        self.module, self.members, self.group = module, len(group.linears), group
        self._clear()

    def _clear(self):
        self._input, self._version, self._outputs, self._taken = None, None, None, set()

    @staticmethod
    def _version_of(x: torch.Tensor) -> int:
        try:
            return x._version
        except RuntimeError:  # inference-mode tensors have no version counter
            return -1

    def output(self, index: int, x: torch.Tensor) -> torch.Tensor:
        hit = (self._input is x and self._version == self._version_of(x) and index not in self._taken)
        if not hit:
            outputs = self.module(x)
            check_outputs(outputs, [linear for _, linear in self.group.linears], x, self.group.name)
            self._input, self._version, self._outputs, self._taken = x, self._version_of(x), outputs, set()
        self._taken.add(index)
        out = self._outputs[index]
        if len(self._taken) == self.members:
            self._clear()
        return out


class QuantizedMember(nn.Module):
    """Stands in for one linear of a quantized group: returns that linear's output."""

    def __init__(self, group: QuantizedGroup, shared: _SharedCall, index: int, original: nn.Linear):
        super().__init__()
        self.group = group  # registered in every member; parameters() deduplicates it
        self.index = index
        self._shared = shared
        self.in_features, self.out_features = original.in_features, original.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._shared.output(self.index, x)

    def extra_repr(self) -> str:
        return f"output {self.index} of {type(self.group).__name__}"


class ModelAdapter(abc.ABC):
    """One loaded text-to-image pipeline, as the benchmark sees it.

    Subclasses set ``self.transformer`` and implement ``generate`` and ``fingerprint``.
    """

    name: str = "model"
    transformer: nn.Module

    def __init__(self):
        self._originals: dict[str, nn.Linear] = {}
        self._targets: list[TargetGroup] | None = None
        self._installed: dict[str, QuantizedGroup] = {}

    # -- targets ---------------------------------------------------------------------
    def targets(self) -> list[TargetGroup]:
        """The quantization targets, discovered once on the full-precision model."""
        if self._targets is None:
            self._targets = find_targets(self.transformer)
        return self._targets

    @contextlib.contextmanager
    def watching_inputs(self, record: Callable[[TargetGroup, torch.Tensor], None]):
        """Inside the block, ``record(group, x)`` sees every input of every target group."""
        # The group's first linear sees the input every member of the group reads.
        handles = [group.linears[0][1].register_forward_pre_hook(
                   lambda _module, args, group=group: record(group, args[0].detach()))
                   for group in self.targets()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    # -- generation ------------------------------------------------------------------
    @abc.abstractmethod
    def generate(self, captions: Sequence[str], seeds: Sequence[int], steps: int = 20,
                 batch_size: int = 16, guidance_scale: float | None = None) -> Generation:
        """Denoise ``steps`` steps from each caption's own seed; deterministic on the CPU."""

    @abc.abstractmethod
    def fingerprint(self) -> dict:
        """What identifies this model's weights, for caches (JSON-serialisable)."""

    def default_settings(self) -> dict:
        return {}

    # -- swapping --------------------------------------------------------------------
    @property
    def is_quantized(self) -> bool:
        return bool(self._originals)

    def install(self, modules: dict[str, QuantizedGroup]) -> None:
        """Put quantized group modules (by group name) in place of their linears."""
        if self._originals:
            raise RuntimeError("the model is already quantized: call restore() first")
        by_name = {g.name: g for g in self.targets()}
        unknown = sorted(set(modules) - set(by_name))
        if unknown:
            raise ValueError(f"unknown target groups {unknown[:3]}; see adapter.targets()")
        for name, module in modules.items():
            group = by_name[name]
            shared = _SharedCall(module, group)
            for index, (qualified, linear) in enumerate(group.linears):
                self._set(qualified, QuantizedMember(module, shared, index, linear))
                self._originals[qualified] = linear
        self._installed = dict(modules)

    def quantize(self, transform: Transform | str, precision: Precision | str,
                 stats: dict[str, CalibrationStats] | None = None,
                 only: Iterable[str] | None = None, kernel: str = "auto", **params) -> dict[str, dict]:
        """Quantize the targets (all, or the group names / roles in ``only``) and install them.

        ``stats`` maps group names to calibration statistics (``benchmark.calibration``).
        ``kernel``: the online transform's path, "auto", "torch", "triton" (fused) or "compile".
        Returns each group's ``describe()`` (precision, chosen alpha, ...) to record.
        """
        from ..registry import create_transform

        if isinstance(transform, str):
            transform = create_transform(transform, **params)
        elif params:
            raise ValueError("hyper-parameters go to the transform's factory; pass a name, not an instance")
        precision = Precision.parse(precision)
        chosen = self.targets()
        if only is not None:
            only = set(only)
            chosen = [g for g in chosen if g.name in only or g.role in only]
            if not chosen:
                raise ValueError(f"no target group or role matches {sorted(only)}; roles: {', '.join(ROLES)}")
        modules = {}
        with torch.no_grad():
            for group in chosen:
                group_stats = None if stats is None else stats.get(group.name)
                if stats is not None and group_stats is None:
                    raise ValueError(f"calibration statistics have no entry for {group.name}")
                module = transform.quantize([lin for _, lin in group.linears], precision, group_stats)
                if isinstance(module, TransformedLinear):  # a plugin's own module runs its own code
                    module.use_kernel(kernel)
                modules[group.name] = module
        self.install(modules)
        return {name: module.describe() for name, module in modules.items()}

    def restore(self) -> None:
        """Put the original linears back (a no-op on a full-precision model)."""
        for qualified, linear in self._originals.items():
            self._set(qualified, linear)
        self._originals, self._installed = {}, {}

    @contextlib.contextmanager
    def quantized(self, transform: Transform | str, precision: Precision | str,
                  stats: dict[str, CalibrationStats] | None = None,
                  only: Iterable[str] | None = None, kernel: str = "auto", **params):
        """``with adapter.quantized("hadanorm", "w4a4", stats) as described: ...``"""
        described = self.quantize(transform, precision, stats, only, kernel, **params)
        try:
            yield described
        finally:
            self.restore()

    def _set(self, qualified: str, module: nn.Module) -> None:
        parent, _, child = qualified.rpartition(".")
        setattr(self.transformer.get_submodule(parent), child, module)
