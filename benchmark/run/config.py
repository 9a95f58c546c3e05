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
import typing
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from benchmark.annotations import conforms, parse_value, type_name
from benchmark.errors import UserError
from benchmark.fileio import parse_bounded, path_name
from benchmark.metrics.registry import METRICS
from benchmark.quant.grid import DEFAULT_GRID, GRIDS, Precision
from benchmark.quant.kernels import kernel_choices
from benchmark.quant.numerics import MODES
from benchmark.results.schema import read_results
from benchmark.run.calibration import DEFAULT_SAMPLE_TOKENS
from benchmark.run.subset import parse_blocks, parse_roles

__all__ = ["NOT_HASHED", "Option", "RunConfig", "TransformSpec", "hashed_differences", "load_config", "options",
           "options_table", "parse_transforms"]

DEFAULT_TRANSFORMS = "none,smoothquant,quarot,sdcb,dyncenter,hadanorm"

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
            params[key.strip()] = parse_value(value)
        specs.append(TransformSpec(match[1], tuple(sorted(params.items()))))
    if not specs:
        raise UserError("no transforms given")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise UserError(f"a transform is listed twice: {labels}")
    return specs


@dataclass(frozen=True)
class Option:
    """A run option, written once: the configuration key, its command-line flag (None: the
    configuration file only), its help, its row in the docs' option table, whether the
    configuration hash covers it, and its allowed values."""

    name: str
    flag: str | None
    help: str
    doc: str
    shown_default: str
    metavar: str | None = None
    type: type | None = None  # what argparse converts the flag's text to
    switch: bool = False  # a flag without a value (true when given)
    repeat: bool = False  # a flag given once per value
    hashed: bool | str = True  # False: not hashed; "unless_none": hashed only when set
    choices: typing.Callable[[], typing.Iterable[str]] | None = None
    what: str = ""  # what an error calls one value ("caption source"); default: the name
    positive: bool = False
    path: bool = False  # a file or folder name: checked by fileio.path_name


def option(default=dataclasses.MISSING, *, factory=dataclasses.MISSING, help: str = "", doc: str,
           shown: str, flag: str | None = "", **spec):
    """A ``RunConfig`` field that carries its ``Option`` (``flag=""``: ``--`` + the name)."""
    return field(default=default, default_factory=factory,
                 metadata={"option": dict(help=help, doc=doc, shown_default=shown, flag=flag, **spec)})


_DTYPES = ("float32", "float16", "bfloat16")
_SOURCES = ("embedded", "coco", "file")


# The fields' order is the order of `hadabench run --help` and of the docs' option table.
@dataclass
class RunConfig:
    model: str = option("embedded", path=True,
                        help="embedded (default), a hub id or a local pipeline folder", shown="`embedded`",
                        doc="`embedded`, a hub id (`PixArt-alpha/PixArt-Sigma-XL-2-512-MS`, `-1024-MS`, PixArt-alpha) "
                            "or a local pipeline folder")
    precisions: list[str] = option(
        factory=lambda: ["w4a4", "w6a6"], help="comma-separated, default w4a4,w6a6 (fp: the exactness check)",
        shown="`w4a4,w6a6`",
        doc="`fp`, `w<b>a<b>`, `a<b>` (activations only, weights in full precision), `w<b>` (weights only); "
            "2–8 bits each")
    transforms: list[TransformSpec] = option(
        factory=lambda: parse_transforms(DEFAULT_TRANSFORMS), hashed=False, shown="the six baselines",
        help="comma-separated names, each optionally name(key=value,...); default the six baselines",
        doc="names, each optionally `name(key=value, ...)`, e.g. `hadanorm(alpha=auto)`")
    plugins: list[str] = option(factory=list, path=True,
                                flag="--plugin", metavar="FILE", repeat=True, hashed=False, shown="–",
                                help="load transforms from a .py file",
                                doc="load transforms (and model families, metrics) from a `.py` file (repeatable)")
    captions: str = option("embedded", help="embedded (default), coco or file", shown="`embedded`",
                           choices=lambda: _SOURCES, what="caption source",
                           doc="`embedded`, `coco` (`--coco-annotations captions_val2017.json`, or the hub) or "
                               "`file` (`--caption-file`)")
    coco_annotations: str | None = option(None, path=True, metavar="FILE",
                                          help="captions_val2017.json (or 2014)", shown="–",
                                          doc="COCO's caption annotations file (`--captions coco`)")
    caption_file: str | None = option(None, path=True, metavar="FILE", help="one caption per line", shown="–",
                                      doc="a text file, one caption per line (`--captions file`)")
    calib_size: int = option(32, metavar="N", type=int, positive=True, shown="32",
                             doc="calibration images (disjoint by image from the evaluation split, drawn with "
                                 "`--seed`)")
    calib_sample_tokens: int = option(DEFAULT_SAMPLE_TOKENS, flag=None, positive=True, shown=str(DEFAULT_SAMPLE_TOKENS),
                                      doc="raw activations kept per group for `alpha=\"auto\"` (0.66 GB at "
                                          "PixArt-Sigma's size; 4096 took 5.3 GB)")
    eval_size: int = option(16, metavar="N", type=int, positive=True, shown="16",
                            doc="evaluation images (disjoint by image from the calibration split)")
    steps: int = option(20, type=int, positive=True, help="denoising steps (default 20)", shown="20",
                        doc="denoising steps")
    seed: int = option(0, type=int, help="caption splits and per-caption seeds (default 0)", shown="0",
                       doc="split seed, and caption *i* is generated from seed + *i*")
    guidance_scale: float | None = option(None, type=float, shown="model's own", doc="classifier-free guidance scale")
    device: str | None = option(None, help="cpu or cuda (default: cuda when available)",
                                shown="`cuda` when there is one", doc="`cpu` or `cuda`")
    dtype: str = option("float32", help="float32 (default), float16 or bfloat16", shown="`float32`",
                        choices=lambda: _DTYPES, doc="the model's dtype (the online transform computes in fp32)")
    clip_model: str = option("ViT-L-14", flag=None, shown="`ViT-L-14`", doc="CLIP score's open_clip backbone")
    clip_pretrained: str = option("openai", flag=None, shown="`openai`", doc="CLIP score's open_clip pretrained tag")
    metrics: list[str] = option(factory=METRICS.builtin_names, what="metric", choices=METRICS.names,
                                help=f"comma-separated: {','.join(METRICS.builtin_names())} (default all)",
                                shown="`" + ",".join(METRICS.builtin_names()) + "`",
                                doc="the metrics to compute (`hadabench ls` lists them)")
    numerics: str = option("native", choices=lambda: MODES,
                           help="native (default) or pinned: the same bits on any x86-64 CPU with AVX2 (MKL and "
                                "ATen code paths, threads; see README)", shown="`native`",
                           doc="`pinned`: the same bits on any x86-64 CPU with AVX2 "
                               "([reproducible numerics](numerics.md))")
    kernel: str = option("auto", hashed=False, choices=kernel_choices, shown="`auto`",
                         help="auto (default), torch, triton or compile: the online transform's path",
                         doc="the online transform's path: `torch`, `triton` (fused kernels), `compile` (torch.compile "
                             "of the torch path), `auto` = triton on CUDA")
    grid: str = option(DEFAULT_GRID, choices=lambda: GRIDS, shown="`zero_point`",
                       help="zero_point (default: integer zero point, as QuaRot and ViDiT-Q) or min_anchored: "
                            "the quantization grid",
                       doc="the quantization grid: `zero_point` or `min_anchored`")
    weight_rounding: str | None = option(
        None, choices=lambda: ("rtn", "gptq"), hashed="unless_none", what="weight rounding", shown="`rtn`",
        help="rtn (default: round to nearest) or gptq: how the weights are rounded to their grid",
        doc="`rtn` (round to nearest) or `gptq` (Frantar et al. 2022: column by column with the calibration "
            "inputs' Hessian, taken through the transform; integer weight grids only; calibration then keeps "
            "two C x C Hessians per group). Every cell records it")
    qat_steps: int | None = option(
        None, metavar="N", type=int, hashed="unless_none", shown="0",
        help="quantization-aware fine-tuning steps per cell (default 0: post-training quantization only)",
        doc="quantization-aware fine-tuning: each cell's quantized model is distilled from the full-precision "
            "one for N steps (straight-through estimators; calibration captions only) before it generates, "
            "then restored ([how](transforms.md#quantization-aware-fine-tuning)). 0: post-training only. "
            "Every cell records its `qat` (steps, seconds, losses)")
    download_weights: bool = option(False, switch=True, hashed=False, shown="off",
                                    help="let CLIP score, CLIP-IQA, LPIPS, FID and ImageReward fetch missing weights "
                                         "(otherwise: not computed)",
                                    doc="let the weight-bound metrics (CLIP score, CLIP-IQA, LPIPS, FID, ImageReward) "
                                        "fetch missing weights; otherwise they are \"not computed\" "
                                        "([metrics](#captions-and-metrics))")
    fid_reference: str | None = option(None, path=True, metavar="DIR", hashed="unless_none", shown="–",
                                       help="a folder of reference images (e.g. COCO val) for fid_reference",
                                       doc="a folder of reference images (e.g. COCO val images): FID of the "
                                           "full-precision row and of each cell against them (`fid_reference`); "
                                           "without it only FID against the full-precision images")
    allow_inexact: bool = option(False, switch=True, shown="off",
                                 help="run transforms that are not exact at full precision (rows marked) instead of "
                                      "failing their cells",
                                 doc="run a transform that is not exact at full precision instead of failing its "
                                     "cells; its rows are marked (hashed, recorded)")
    cache_dir: str | None = option(None, path=True, hashed=False, help="where calibration statistics are cached",
                                   shown="`.cache/calibration`",
                                   doc="calibration statistics (keyed by model, captions, steps, seed, sample size and "
                                       "where they were computed: the device, and on the CPU the vector ISA, MKL's "
                                       "branch, oneDNN and the thread count)")
    out: str = option("results", path=True, hashed=False,
                      help="the run folder (default results); a rerun into it resumes",
                      shown="`results`", doc="the run folder; a second run into it resumes")
    # Quantize only these roles / blocks (benchmark/run/subset.py; "a,b" and "0-3" read as lists);
    # None: all of them.
    roles: str | list[str] | None = option(
        None, hashed="unless_none", shown="all",
        help="quantize only these roles, comma-separated (default all; 'hadabench ls' lists them)",
        doc="quantize only these roles (e.g. `self_attn_qkv,cross_attn_kv`); every other linear stays the "
            "original. Recorded in the configuration (and its hash; a list of every role is the default) and in "
            "each cell's `subset`")
    blocks: str | int | list[int] | None = option(
        None, hashed="unless_none", shown="all",
        help="quantize only these transformer blocks: indices and ranges, e.g. 0-3 or 0,2",
        doc="quantize only these transformer blocks (`0-3`, `0,2`), recorded like `--roles`")

    def validate(self) -> RunConfig:
        check_types(self)
        for opt in options():
            value = getattr(self, opt.name)
            if opt.positive and value < 1:
                raise UserError(f"{opt.name} must be a positive integer, got {value!r}")
            for item in (value if isinstance(value, list) else [value]) if opt.path else ():
                if item is not None:
                    path_name(item, opt.flag or opt.name)
            allowed = list(opt.choices()) if opt.choices else None
            for item in (value if isinstance(value, list) else [value]) if allowed else ():
                if item is not None and item not in allowed:  # None: the option's default
                    raise UserError(f"unknown {opt.what or opt.name} {item!r}: use {', '.join(allowed)}")
        if self.weight_rounding == "rtn":
            self.weight_rounding = None  # the default: hashed like a configuration that never set it
        if self.qat_steps is not None and self.qat_steps < 0:
            raise UserError(f"qat_steps must be an integer >= 0, got {self.qat_steps}")
        if self.qat_steps == 0:
            self.qat_steps = None  # post-training, the default: hashed like a configuration without the key
        if self.qat_steps and self.weight_rounding == "gptq":
            raise UserError("qat_steps fine-tunes round-to-nearest weights; weight_rounding='gptq' cannot be "
                            "fine-tuned (use one or the other)")
        if self.guidance_scale is not None:
            self.guidance_scale = float(self.guidance_scale)  # 4 in a TOML file and 4.0 hash alike
            if not math.isfinite(self.guidance_scale) or self.guidance_scale < 0:
                raise UserError(f"guidance_scale must be a finite number >= 0, got {self.guidance_scale}")
        if not 0 <= self.seed < 2**32:
            raise UserError(f"seed must be an integer from 0 to 2**32 - 1, got {self.seed}")
        for name in ("model", "out", "clip_model", "clip_pretrained", "cache_dir"):
            if getattr(self, name) == "":
                raise UserError(f"{name} is empty")
        for name in ("precisions", "metrics"):
            if not getattr(self, name):
                raise UserError(f"no {name} given")
        self.precisions = [Precision.parse(p).name for p in self.precisions]
        self.roles, self.blocks = parse_roles(self.roles), parse_blocks(self.blocks)
        if len(set(self.precisions)) != len(self.precisions):
            raise UserError(f"a precision is listed twice: {self.precisions}")
        if self.captions == "file" and not self.caption_file:
            raise UserError("--captions file needs --caption-file FILE")
        if self.device not in (None, "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise UserError(f"unknown device {self.device!r}: use cpu or cuda")
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


def options() -> list[Option]:
    """Every run option, in ``RunConfig``'s order."""
    return [Option(f.name, **{**f.metadata["option"],
                              "flag": ("--" + f.name.replace("_", "-")) if f.metadata["option"]["flag"] == ""
                              else f.metadata["option"]["flag"]})
            for f in dataclasses.fields(RunConfig)]


# Fields that say where results go or how fast they come, not what they are; and the
# transforms: each cell records its own (spec, and its code: a plugin file's sha256), so a
# run folder can take more transforms later (one new leaderboard row, the others kept).
NOT_HASHED = tuple(opt.name for opt in options() if opt.hashed is False)
# Fields added later: left out of the hash at their default, so older hashes stay valid.
HASHED_UNLESS_NONE = tuple(opt.name for opt in options() if opt.hashed == "unless_none")

# Not configuration keys: what the command does with its folder and file.
COMMAND_FLAGS = {"--config": ("FILE", "–", "a TOML file with any of the keys below (flags override it); an unknown "
                                            "key is an error"),
                 "--fresh": (None, "off", "start over in `--out` (after the configuration has been checked)")}


def options_table() -> str:
    """The docs' option table (docs/running.md), generated from the options."""
    rows = ["| flag | default | |", "|---|---|---|",
            "| `--config FILE` | – | " + COMMAND_FLAGS["--config"][2] + " |"]
    for opt in options():
        name = f"`{opt.flag}{' ' + opt.metavar if opt.metavar else ''}`" if opt.flag else f"`{opt.name}` (config file)"
        rows.append(f"| {name} | {opt.shown_default} | {opt.doc} |")
        if opt.name == "out":
            rows.append("| `--fresh` | off | " + COMMAND_FLAGS["--fresh"][2] + " |")
    return "\n".join(rows)


def hashed_differences(first: dict, second: dict) -> list[str]:
    """The keys the hash covers whose values differ between two configurations (as JSON)."""
    return sorted(k for k in set(first) | set(second)
                  if k not in NOT_HASHED and first.get(k) != second.get(k))


def check_types(config: RunConfig) -> None:
    """Every field against its annotation, so that a field added later is checked too."""
    for name, hint in typing.get_type_hints(RunConfig).items():
        value = getattr(config, name)
        if not conforms(value, hint):
            raise UserError(f"{name} must be {type_name(hint)}, got {value!r}")


def load_config(path: str | None = None, overrides: dict | None = None,
                defaults: dict | None = None, fresh: bool = False) -> RunConfig:
    """Defaults (``defaults`` over RunConfig's own), then the configuration of the run folder
    (``out``) when it holds results and ``fresh`` is not asked (a second run into a folder
    restates only what it changes), then the TOML file at ``path``, then ``overrides`` (flags
    that were given)."""
    given: dict = {}
    if path is not None:
        given.update(parse_bounded(path, "configuration (TOML)", tomllib.loads, syntax="TOML",
                                   max_bytes=1 << 20,
                                   errors=(tomllib.TOMLDecodeError,)))
    given.update({k: v for k, v in (overrides or {}).items() if v is not None})
    values = {**(defaults or {}), **({} if fresh else _folder_config(given.get("out", RunConfig.out))), **given}
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


def _folder_config(out) -> dict:
    """The configuration recorded in a run folder's results (its keys that still exist), or {}."""
    if not isinstance(out, str) or not (Path(path_name(out, "--out")) / "results.json").is_file():
        return {}
    recorded = read_results(Path(out) / "results.json")["config"]
    known = {f.name for f in dataclasses.fields(RunConfig)}
    config = {key: value for key, value in recorded.items() if key in known and key != "out"}
    if "transforms" in config:
        config["transforms"] = [{"name": t["name"], **t.get("params", {})} for t in config["transforms"]]
    return config
