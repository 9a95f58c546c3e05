"""The run configuration: defaults, a TOML file, then command-line flags, in that order.

A transform is written ``name`` or ``name(key=value, ...)``, e.g.
``hadanorm(correction=exact)``, so one run can hold several points of one transform.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field

import tomllib

from benchmark.errors import UserError
from benchmark.metrics.registry import METRICS
from benchmark.quant.grid import DEFAULT_GRID, GRIDS, Precision
from benchmark.quant.kernels import KERNELS
from benchmark.quant.numerics import MODES
from benchmark.run.calibration import DEFAULT_SAMPLE_TOKENS
from benchmark.run.subset import parse_blocks, parse_roles

__all__ = ["RunConfig", "TransformSpec", "hashed_differences", "load_config", "parse_transforms"]

DEFAULT_TRANSFORMS = "none,smoothquant,quarot,sdcb,dyncenter,hadanorm"
# Fields that say where results go or how fast they come, not what they are; and the
# transforms: each cell records its own (spec, and its code: a plugin file's sha256), so a
# run folder can take more transforms later (one new leaderboard row, the others kept).
NOT_HASHED = ("out", "cache_dir", "kernel", "download_weights", "transforms", "plugins")
# Fields added later: left out of the hash at their default, so older hashes stay valid.
HASHED_UNLESS_NONE = ("roles", "blocks")


@dataclass(frozen=True)
class TransformSpec:
    name: str
    params: tuple[tuple[str, object], ...] = ()

    @property
    def label(self) -> str:
        if not self.params:
            return self.name
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.params)})"

    def to_json(self) -> dict:
        return {"name": self.name, "params": dict(self.params)}

    @classmethod
    def from_json(cls, data: dict) -> TransformSpec:
        return cls(data["name"], tuple(sorted(data.get("params", {}).items())))


def _value(text: str):
    text = text.strip()
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


_SPEC = re.compile(r"\s*([A-Za-z_][\w\-]*)\s*(?:\((.*?)\))?\s*")


def parse_transforms(text: str | list) -> list[TransformSpec]:
    """``"none,hadanorm(alpha=0.3, correction=exact)"`` (or a list of such) -> specs."""
    if not isinstance(text, (str, list)):
        raise UserError(f"transforms must be a string or a list, got {text!r}")
    items = text if isinstance(text, list) else re.split(r",(?![^()]*\))", text)
    specs = []
    for item in items:
        if isinstance(item, dict):  # TOML: {name = "hadanorm", alpha = 0.3}
            item = dict(item)
            name = item.pop("name", None)
            if not isinstance(name, str):
                raise UserError(f"a transform table needs a 'name', got {item!r}")
            for key, value in item.items():
                if not isinstance(value, (str, int, float, bool)):
                    raise UserError(f"transform {name!r}: parameter {key} must be a number, string "
                                     f"or boolean, got {value!r}")
            specs.append(TransformSpec(name, tuple(sorted(item.items()))))
            continue
        if not isinstance(item, str):
            raise UserError(f"a transform is a string or a table, got {item!r}")
        match = _SPEC.fullmatch(item)
        if not match:
            raise UserError(f"cannot read transform {item!r}: write name or name(key=value, ...)")
        params = {}
        for pair in filter(None, (p.strip() for p in (match[2] or "").split(","))):
            key, sep, value = pair.partition("=")
            if not sep:
                raise UserError(f"transform {item!r}: parameter {pair!r} is not key=value")
            params[key.strip()] = _value(value)
        specs.append(TransformSpec(match[1], tuple(sorted(params.items()))))
    if not specs:
        raise UserError("no transforms given")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise UserError(f"a transform is listed twice: {labels}")
    return specs


@dataclass
class RunConfig:
    model: str = "embedded"
    precisions: list[str] = field(default_factory=lambda: ["w4a4", "w6a6"])
    transforms: list[TransformSpec] = field(default_factory=lambda: parse_transforms(DEFAULT_TRANSFORMS))
    plugins: list[str] = field(default_factory=list)
    captions: str = "embedded"
    coco_annotations: str | None = None
    caption_file: str | None = None
    calib_size: int = 32
    calib_sample_tokens: int = DEFAULT_SAMPLE_TOKENS  # raw activations kept per group, for alpha="auto"
    eval_size: int = 16
    steps: int = 20
    seed: int = 0
    guidance_scale: float | None = None  # None: the model's own default
    dtype: str = "float32"
    device: str | None = None  # None: cuda when available, else cpu
    clip_model: str = "ViT-L-14"
    clip_pretrained: str = "openai"
    metrics: list[str] = field(default_factory=METRICS.builtin_names)
    kernel: str = "auto"
    numerics: str = "native"  # "pinned": the same bits on any x86-64 CPU with AVX2 (benchmark/quant/numerics.py)
    grid: str = DEFAULT_GRID  # the quantization grid of weights and activations (quant.GRIDS)
    download_weights: bool = False  # let the metrics fetch missing CLIP weights from the hub
    allow_inexact: bool = False  # run (marked) transforms that are not exact at full precision
    out: str = "results"
    cache_dir: str | None = None
    # Quantize only these roles / blocks (benchmark/run/subset.py; "a,b" and "0-3" read as lists);
    # None: all of them.
    roles: str | list[str] | None = None
    blocks: str | int | list[int] | None = None

    def validate(self) -> RunConfig:
        check_types(self)
        if self.guidance_scale is not None:
            self.guidance_scale = float(self.guidance_scale)  # 4 in a TOML file and 4.0 hash alike
            if not math.isfinite(self.guidance_scale) or self.guidance_scale < 0:
                raise UserError(f"guidance_scale must be a finite number >= 0, got {self.guidance_scale}")
        if not 0 <= self.seed < 2**32:
            raise UserError(f"seed must be an integer from 0 to 2**32 - 1, got {self.seed}")
        for name in ("model", "out", "clip_model", "clip_pretrained", "cache_dir"):
            if getattr(self, name) == "":
                raise UserError(f"{name} is empty")
        if not self.precisions:
            raise UserError("no precisions given")

        self.precisions = [Precision.parse(p).name for p in self.precisions]
        self.roles, self.blocks = parse_roles(self.roles), parse_blocks(self.blocks)
        if len(set(self.precisions)) != len(self.precisions):
            raise UserError(f"a precision is listed twice: {self.precisions}")
        if self.captions not in ("embedded", "coco", "file"):
            raise UserError(f"unknown caption source {self.captions!r}: use embedded, coco or file")
        if self.captions == "file" and not self.caption_file:
            raise UserError("--captions file needs --caption-file FILE")
        for name in ("calib_size", "calib_sample_tokens", "eval_size", "steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise UserError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.device not in (None, "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise UserError(f"unknown device {self.device!r}: use cpu or cuda")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise UserError(f"unknown dtype {self.dtype!r}: use float32, float16 or bfloat16")
        unknown = set(self.metrics) - set(METRICS.entries())
        if unknown:
            raise UserError(f"unknown metric {sorted(unknown)[0]!r}: use {', '.join(METRICS.entries())}")
        if not self.metrics:
            raise UserError("no metrics given")
        if self.numerics not in MODES:
            raise UserError(f"unknown numerics {self.numerics!r}: use {' or '.join(MODES)}")
        if self.grid not in GRIDS:
            raise UserError(f"unknown grid {self.grid!r}: use {' or '.join(GRIDS)}")
        if not isinstance(self.allow_inexact, bool):
            raise UserError(f"allow_inexact must be true or false, got {self.allow_inexact!r}")
        if self.kernel not in KERNELS:
            raise UserError(f"unknown kernel {self.kernel!r}: use {', '.join(KERNELS)}")
        return self

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["transforms"] = [t.to_json() for t in self.transforms]
        return out

    def hash(self) -> str:
        """Identifies what the numbers mean: two runs compare only when this agrees."""
        data = {k: v for k, v in self.to_json().items()
                if k not in NOT_HASHED and not (k in HASHED_UNLESS_NONE and v is None)}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def hashed_differences(first: dict, second: dict) -> list[str]:
    """The keys the hash covers whose values differ between two configurations (as JSON)."""
    return sorted(k for k in set(first) | set(second)
                  if k not in NOT_HASHED and first.get(k) != second.get(k))


def _conforms(value, hint) -> bool:
    """Whether ``value`` is of the annotated type (bool is not a number here; int is a float)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(_conforms(v, args[0]) for v in value)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint in (int, float):
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    return isinstance(value, origin or hint)


def _type_name(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is list:
        return f"a list (of {getattr(args[0], '__name__', args[0])})"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            type(None): "none"}.get(hint, getattr(hint, "__name__", str(hint)))


def check_types(config: RunConfig) -> None:
    """Every field against its annotation, so that a field added later is checked too."""
    for name, hint in typing.get_type_hints(RunConfig).items():
        value = getattr(config, name)
        if not _conforms(value, hint):
            raise UserError(f"{name} must be {_type_name(hint)}, got {value!r}")


def load_config(path: str | None = None, overrides: dict | None = None,
                defaults: dict | None = None) -> RunConfig:
    """Defaults (``defaults`` over RunConfig's own), then the TOML file at ``path``, then
    ``overrides`` (flags that were given)."""
    values: dict = dict(defaults or {})
    if path is not None:
        try:
            with open(path, "rb") as handle:
                values.update(tomllib.load(handle))
        except FileNotFoundError:
            raise UserError(f"config {path}: no such file") from None
        except OSError as error:  # a folder, unreadable, ...
            raise UserError(f"config {path}: cannot read it ({error.strerror or error})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise UserError(f"config {path}: not valid TOML: {error}") from None
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"unknown configuration key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
    hints = typing.get_type_hints(RunConfig)
    for key, value in values.items():  # "a,b" for a list of strings, on the command line and in files
        if hints[key] == list[str] and isinstance(value, str):
            values[key] = [v.strip() for v in value.split(",") if v.strip()]
    if "transforms" in values:
        values["transforms"] = parse_transforms(values["transforms"])
    return RunConfig(**values).validate()
