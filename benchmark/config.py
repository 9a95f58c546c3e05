"""The run configuration: defaults, a TOML file, then command-line flags, in that order.

A transform is written ``name`` or ``name(key=value, ...)``, e.g.
``hadanorm(correction=exact)``, so one run can hold several points of one transform.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .kernels import KERNELS
from .quant import Precision
from .scoring import METRICS

__all__ = ["RunConfig", "TransformSpec", "load_config", "parse_transforms"]

DEFAULT_TRANSFORMS = "none,smoothquant,quarot,sdcb,dyncenter,hadanorm"
# Fields that say where results go or how fast they come, not what they are.
NOT_HASHED = ("out", "cache_dir", "kernel", "download_weights")
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
    items = text if isinstance(text, list) else re.split(r",(?![^()]*\))", text)
    specs = []
    for item in items:
        if isinstance(item, dict):  # TOML: {name = "hadanorm", alpha = 0.3}
            item = dict(item)
            name = item.pop("name", None)
            if not isinstance(name, str):
                raise ValueError(f"a transform table needs a 'name', got {item!r}")
            specs.append(TransformSpec(name, tuple(sorted(item.items()))))
            continue
        match = _SPEC.fullmatch(str(item))
        if not match:
            raise ValueError(f"cannot read transform {item!r}: write name or name(key=value, ...)")
        params = {}
        for pair in filter(None, (p.strip() for p in (match[2] or "").split(","))):
            key, sep, value = pair.partition("=")
            if not sep:
                raise ValueError(f"transform {item!r}: parameter {pair!r} is not key=value")
            params[key.strip()] = _value(value)
        specs.append(TransformSpec(match[1], tuple(sorted(params.items()))))
    if not specs:
        raise ValueError("no transforms given")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"a transform is listed twice: {labels}")
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
    eval_size: int = 16
    steps: int = 20
    seed: int = 0
    guidance_scale: float | None = None  # None: the model's own default
    dtype: str = "float32"
    device: str | None = None  # None: cuda when available, else cpu
    clip_model: str = "ViT-L-14"
    clip_pretrained: str = "openai"
    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    kernel: str = "auto"
    download_weights: bool = False  # let the metrics fetch missing CLIP weights from the hub
    out: str = "results"
    cache_dir: str | None = None
    roles: list[str] | None = None   # quantize only these roles (benchmark/subset.py); None: all
    blocks: list[int] | None = None  # and only these blocks; None: all

    def validate(self) -> "RunConfig":
        from .subset import parse_blocks, parse_roles

        self.precisions = [Precision.parse(p).name for p in self.precisions]
        self.roles, self.blocks = parse_roles(self.roles), parse_blocks(self.blocks)
        if len(set(self.precisions)) != len(self.precisions):
            raise ValueError(f"a precision is listed twice: {self.precisions}")
        if self.captions not in ("embedded", "coco", "file"):
            raise ValueError(f"unknown caption source {self.captions!r}: use embedded, coco or file")
        if self.captions == "file" and not self.caption_file:
            raise ValueError("--captions file needs --caption-file FILE")
        for name in ("calib_size", "eval_size", "steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.device not in (None, "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ValueError(f"unknown device {self.device!r}: use cpu or cuda")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"unknown dtype {self.dtype!r}: use float32, float16 or bfloat16")
        unknown = set(self.metrics) - set(METRICS)
        if unknown:
            raise ValueError(f"unknown metric {sorted(unknown)[0]!r}: use {', '.join(METRICS)}")
        if not self.metrics:
            raise ValueError("no metrics given")
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown kernel {self.kernel!r}: use {', '.join(KERNELS)}")
        return self

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["transforms"] = [t.to_json() for t in self.transforms]
        return out

    def hash(self) -> str:
        """Identifies what the numbers mean: two runs compare only when this agrees."""
        data = {k: v for k, v in self.to_json().items()
                if k not in NOT_HASHED and not (k in HASHED_UNLESS_NONE and v is None)}
        data["plugins"] = [_file_digest(p) for p in self.plugins]  # the code, not its path
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


_LIST_FIELDS = {"precisions", "plugins", "metrics"}


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
            raise ValueError(f"config {path}: no such file") from None
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"config {path}: not valid TOML: {error}") from None
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown configuration key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
    for key in _LIST_FIELDS & set(values):
        if isinstance(values[key], str):
            values[key] = [v.strip() for v in values[key].split(",") if v.strip()]
    if "transforms" in values:
        values["transforms"] = parse_transforms(values["transforms"])
    return RunConfig(**values).validate()
