"""Where the quantization targets of a module are, and swapping them for quantized modules.

A **model family** is a declaration, like diffusers' ``_no_split_modules``: which module lists
hold the transformer blocks, and for each *role* the linears of a block that read one input
(so one transform of that input serves them all), plus the linears of a block that are left
in full precision on purpose, each with its reason. A block list may be nested (a UNet's
``down_blocks.*.resnets``: ``*`` stands for every index of a module list). A target may also
be a 1x1 convolution (Sana's feed-forward): a linear over the channels of each pixel, quantized
through a view of its weight, with the pixels of its (N, C, H, W) input as the tokens; or a
k x k convolution with ``groups=1`` (a UNet's ResNet convolutions): a group of its own, its
``linears`` its tap linear (``benchmark.transform.conv.ConvTaps``), quantized by
``benchmark.transform.conv.quantize_conv``; grouped and depthwise convolutions are never
targets (a channel transform cannot fold into them). ``discover_targets`` reads a module with
a family and returns its ``TargetGroup``s; it refuses a block holding a linear or convolution
that neither a role nor an exclusion names, so a model whose blocks differ from the
declaration is never quantized partially. Without a family, every ``nn.Linear`` and every
``groups=1`` ``nn.Conv2d`` is a group of its own. ``Targets.skipped`` says what was left out and why.

``install`` puts one ``QuantizedMember`` in place of each linear of a group (all members share
one quantized group module, run once per input) and returns what ``uninstall`` needs to put
the originals back, without reloading anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from benchmark.errors import UserError
from benchmark.transform.base import QuantizedGroup
from benchmark.transform.conv import ConvTaps, conv_refusal
from benchmark.transform.exactness import check_outputs

__all__ = ["ChannelsFirst", "Family", "QuantizedMember", "TargetGroup", "Targets", "discover_targets", "install",
           "is_pointwise_conv", "is_quantized", "uninstall", "watch_inputs"]


@dataclass(frozen=True)
class Family:
    """A declaration of where a transformer's quantization targets are.

    transformer: class names of the transformer module this family describes.
    blocks:      block list (an ``nn.ModuleList`` of the transformer) -> role -> paths, inside
                 one block, of the linears (or convolutions) that read that role's input, in
                 output order. A block list is an attribute (``"transformer_blocks"``) or a
                 dotted path in which ``*`` is every index of a module list
                 (``"down_blocks.*.resnets"``: one list per down block; parents without the
                 list are skipped). Lists may nest (``"down_blocks.*.attentions"`` and
                 ``"down_blocks.*.attentions.*.transformer_blocks"``): a block's modules inside
                 a nested block are that block's. Blocks are numbered across the lists in this
                 order (a wildcard's lists in index order).
    exclude:     path pattern inside a block (fnmatch) -> why that linear stays full precision.
    optional:    roles some blocks lack (e.g. the last MMDiT block has no text output); a
                 wildcard block list whose roles are all optional may match no list at all.
    pipelines:   diffusers pipeline classes that carry this transformer.
    pipeline_kwargs: extra arguments of the pipeline call, so that it is deterministic and
                 needs nothing from the hub (e.g. no resolution binning, no caption cleaning).
    example:     builds a small random transformer of the family (``hadabench validate``).
    """

    name: str
    description: str
    transformer: tuple[str, ...]
    blocks: dict[str, dict[str, tuple[str, ...]]]
    exclude: dict[str, str] = field(default_factory=dict)
    optional: tuple[str, ...] = ()
    pipelines: tuple[str, ...] = ()
    pipeline_kwargs: dict = field(default_factory=dict)
    example: Callable[[], nn.Module] | None = None

    def __post_init__(self):
        if not self.blocks or not all(self.blocks.values()):
            raise UserError(f"family {self.name!r}: blocks must map block lists to role tables")
        for roles in self.blocks.values():
            for role, paths in roles.items():
                if not paths or not all(isinstance(p, str) and p for p in paths):
                    raise UserError(f"family {self.name!r}: role {role!r} needs linear paths")
        unknown = set(self.optional) - set(self.roles)
        if unknown:
            raise UserError(f"family {self.name!r}: optional roles {sorted(unknown)} are not roles")
        if not all(isinstance(r, str) and r.strip() for r in self.exclude.values()):
            raise UserError(f"family {self.name!r}: every exclusion needs its reason")

    @property
    def roles(self) -> tuple[str, ...]:
        """All roles, in block order."""
        return tuple(dict.fromkeys(role for roles in self.blocks.values() for role in roles))

    def matches(self, module: nn.Module) -> bool:
        return type(module).__name__ in self.transformer


@dataclass
class TargetGroup:
    """Linears inside one transformer block that read the same input.

    name: unique, e.g. ``"transformer_blocks.3.self_attn_qkv"``; role: one of the family's
    roles; block_index: the block's position across the family's block lists;
    linears: ``(qualified name in the transformer, module)`` pairs, in output order.
    """

    name: str
    role: str
    block_index: int
    linears: list[tuple[str, nn.Linear]]
    # True when the targets are convolutions reading (N, C, H, W): ``linears`` then holds
    # linear views of their weights (1x1) or the tap linear of one k x k convolution
    # (``ConvTaps``), and the group sees its input as (N, H*W, C) tokens.
    channels_first: bool = False

    @property
    def in_features(self) -> int:
        return self.linears[0][1].in_features

    @property
    def conv(self) -> bool:
        """A k x k convolution (``linears``: its ``ConvTaps``): ``quantize_conv`` quantizes it."""
        return any(isinstance(linear, ConvTaps) for _, linear in self.linears)


class Targets(list):
    """``discover_targets``' groups (a list), and ``skipped``: qualified name -> why that
    linear or convolution is not a target (a family's exclusion, a grouped convolution)."""

    def __init__(self, groups: Iterable[TargetGroup] = (), skipped: dict[str, str] | None = None):
        super().__init__(groups)
        self.skipped = dict(skipped or {})


def is_pointwise_conv(module: nn.Module) -> bool:
    """A 1x1 convolution without groups: a linear over the channels of every pixel."""
    return (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1
            and module.stride == (1, 1) and module.padding in ((0, 0), "valid"))


def _linear_view(conv: nn.Conv2d) -> nn.Linear:
    """An ``nn.Linear`` sharing a pointwise convolution's weight and bias (views, no copy)."""
    view = nn.Linear(conv.in_channels, conv.out_channels, bias=False, device="meta")
    view.weight = nn.Parameter(conv.weight.detach().flatten(1), requires_grad=False)
    view.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach(), requires_grad=False)
    return view


def _linear(root: nn.Module, qualified: str) -> nn.Linear | ConvTaps:
    module = root.get_submodule(qualified)
    if is_pointwise_conv(module):
        return _linear_view(module)
    if isinstance(module, nn.Conv2d):
        reason = conv_refusal(module)
        if reason is not None:
            raise UserError(f"{qualified} cannot be a target: {reason}; exclude it with that reason")
        return ConvTaps(module)
    if not isinstance(module, nn.Linear):
        raise UserError(f"{qualified} is a {type(module).__name__}, not an nn.Linear or a "
                         "convolution (already quantized? restore() first)")
    return module


def _kind(module: nn.Module) -> str:
    return "pointwise" if is_pointwise_conv(module) else "conv" if isinstance(module, nn.Conv2d) else "linear"


def discover_targets(module: nn.Module, family: Family | None = None,
                     filter_fn: Callable[[nn.Module, str], bool] | None = None) -> list[TargetGroup]:
    """The target groups of ``module``.

    family: a ``Family``; None: every ``nn.Linear`` (role ``"linear"``) and every ``groups=1``
    ``nn.Conv2d`` (role ``"conv"``) as a group of its own; grouped and depthwise convolutions
    are skipped, with the reason in ``Targets.skipped``.
    (``benchmark.families.registry.family_for`` finds the registered family of a module.)
    filter_fn: ``(linear, qualified name) -> bool``, torchao's convention; a group keeps the
    linears it accepts and is dropped when it accepts none.
    """
    groups = _all_linears(module) if family is None else _declared(module, family)
    if filter_fn is None:
        return groups
    kept = Targets(skipped=groups.skipped)
    for group in groups:
        linears = [(name, lin) for name, lin in group.linears if filter_fn(lin, name)]
        if linears:
            kept.append(dataclasses.replace(group, linears=linears))
    return kept


def _all_linears(module: nn.Module) -> Targets:
    if is_quantized(module):
        raise UserError(f"{type(module).__name__} is already quantized: restore() first")
    groups = Targets()
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            groups.append(TargetGroup(name, "linear", -1, [(name, m)]))
        elif isinstance(m, nn.Conv2d):
            reason = conv_refusal(m)
            if reason is not None:
                groups.skipped[name] = reason
            else:
                groups.append(TargetGroup(name, "conv", -1, [(name, _linear(module, name))], channels_first=True))
    return groups


def _block_lists(root: nn.Module, key: str) -> list[tuple[str, nn.ModuleList]]:
    """The non-empty module lists that a block-list key names, with their paths (``*``: every
    index of a module list; a parent without the next attribute is skipped)."""
    found = [("", root)]
    for part in key.split("."):
        step = []
        for path, parent in found:
            if part == "*":
                if isinstance(parent, nn.ModuleList):
                    step += [(f"{path}.{i}" if path else str(i), child) for i, child in enumerate(parent)]
            elif isinstance(getattr(parent, part, None), nn.Module):
                step.append((f"{path}.{part}" if path else part, getattr(parent, part)))
        found = step
    return [(path, blocks) for path, blocks in found if isinstance(blocks, nn.ModuleList) and len(blocks)]


def _declared(module: nn.Module, family: Family) -> Targets:
    groups, index = Targets(), 0
    lists = {}
    for attr, roles in family.blocks.items():
        lists[attr] = _block_lists(module, attr)
        if not lists[attr] and not ("*" in attr and set(roles) <= set(family.optional)):
            raise UserError(f"{type(module).__name__} has no {attr}: not a {family.name} transformer")
    prefixes = [f"{path}.{position}" for found in lists.values() for path, blocks in found
                for position in range(len(blocks))]
    for attr, roles in family.blocks.items():
        for path, blocks in lists[attr]:
            for position, block in enumerate(blocks):
                prefix = f"{path}.{position}"
                nested = [p[len(prefix) + 1:] for p in prefixes if p.startswith(prefix + ".")]
                present = {name for name, _ in block.named_modules()}
                found = set()
                for role, paths in roles.items():
                    missing = [p for p in paths if p not in present]
                    if len(missing) == len(paths) and role in family.optional:
                        continue
                    if missing:
                        raise UserError(f"{prefix} has no {', '.join(missing)}: not a {family.name} block")
                    linears = [(f"{prefix}.{p}", _linear(module, f"{prefix}.{p}")) for p in paths]
                    kinds = {_kind(block.get_submodule(p)) for p in paths}
                    if len(kinds) > 1:
                        raise UserError(f"{prefix}.{role} mixes linears and convolutions: they cannot share an input")
                    if kinds == {"conv"} and len(paths) > 1:
                        raise UserError(f"{prefix}.{role}: a k x k convolution is a group of its own, one per role")
                    groups.append(TargetGroup(f"{prefix}.{role}", role, index, linears,
                                              channels_first=kinds != {"linear"}))
                    found.update(paths)
                extra = []
                for name, m in block.named_modules():
                    if (not isinstance(m, (nn.Linear, nn.Conv2d, QuantizedMember)) or name in found
                            or any(name == n or name.startswith(n + ".") for n in nested)):
                        continue
                    reason = next((why for pattern, why in family.exclude.items()
                                   if fnmatch.fnmatchcase(name, pattern)), None)
                    reason = reason or (conv_refusal(m) if isinstance(m, nn.Conv2d) else None)
                    if reason is None:
                        extra.append(name)
                    else:
                        groups.skipped[f"{prefix}.{name}"] = reason
                if extra:
                    raise UserError(f"{prefix} has linears that no role of {family.name} covers "
                                     f"and no exclusion names: {extra}")
                index += 1
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
            if not self.group.channels_first:  # ChannelsFirst checks its module on the tokens
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


def _module_of(root: nn.Module, group: TargetGroup) -> nn.Module:
    return root.get_submodule(group.linears[0][0]) if group.channels_first else group.linears[0][1]


def is_quantized(module: nn.Module) -> bool:
    return any(isinstance(m, QuantizedMember) for m in module.modules())


def _set(root: nn.Module, qualified: str, module: nn.Module) -> None:
    parent, _, child = qualified.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def install(root: nn.Module, groups: Iterable[TargetGroup],
            modules: dict[str, QuantizedGroup]) -> dict[str, nn.Linear]:
    """Put each quantized group module (by group name) in place of its linears; returns the
    originals by qualified name, for ``uninstall``."""
    by_name = {g.name: g for g in groups}
    unknown = sorted(set(modules) - set(by_name))
    if unknown:
        raise UserError(f"unknown target groups {unknown[:3]}; see discover_targets()")
    originals = {}
    for name, module in modules.items():
        group = by_name[name]
        if group.channels_first and not group.conv:  # a k x k convolution's module reads (N, C, H, W) itself
            module = ChannelsFirst(module, group)
        shared = _SharedCall(module, group)
        for index, (qualified, linear) in enumerate(group.linears):
            originals[qualified] = root.get_submodule(qualified)  # the convolution, for a view
            _set(root, qualified, QuantizedMember(module, shared, index, linear))
    return originals


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H*W, C): every pixel a token."""
    return x.flatten(2).transpose(1, 2)


class ChannelsFirst(QuantizedGroup):
    """Runs a group of pointwise convolutions' quantized module on (N, C, H, W) inputs."""

    def __init__(self, group: QuantizedGroup, target: TargetGroup):
        super().__init__()
        self.group, self.target = group, target

    def forward(self, x: torch.Tensor):
        tokens = _tokens(x)
        outputs = self.group(tokens)
        check_outputs(outputs, [linear for _, linear in self.target.linears], tokens, self.target.name)
        return tuple(y.transpose(1, 2).unflatten(2, x.shape[2:]) for y in outputs)

    def describe(self) -> dict:
        return self.group.describe()


def uninstall(root: nn.Module, originals: dict[str, nn.Linear]) -> None:
    for qualified, linear in originals.items():
        _set(root, qualified, linear)


@contextlib.contextmanager
def watch_inputs(root: nn.Module, groups: Iterable[TargetGroup],
                 record: Callable[[TargetGroup, torch.Tensor], None]):
    """Inside the block, ``record(group, x)`` sees every input of every target group of
    ``root``, as (..., tokens, channels)."""
    def hook(group):
        if group.channels_first:  # hook the convolution itself; the group sees pixels as tokens
            return lambda _module, args: record(group, _tokens(args[0].detach()))
        return lambda _module, args: record(group, args[0].detach())

    # The group's first member sees the input every member of the group reads.
    handles = [_module_of(root, group).register_forward_pre_hook(hook(group)) for group in groups]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
