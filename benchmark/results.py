"""The results file: one JSON document per run, written atomically after every cell.

Schema ``hadabench.results/1`` (documented in full in README.md, "Results"):

    schema, created, config, config_hash, environment, captions (manifest), model,
    metric_setup, reference (full-precision row), calibration,
    cells: {"<precision>/<transform label>": cell}

A cell: precision, transform, label, params, status ("ok" or "failed"), reason and
raised_at (a failed cell's error and the file:line that raised it), metrics
(aggregates), per_sample, groups (what each quantized group did), timings, kernel.
Infinite SQNR (identical outputs) is written as the string "inf": JSON has no infinity.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Callable

SCHEMA = "hadabench.results/1"
OK, FAILED = "ok", "failed"
_UMASK = os.umask(0)
os.umask(_UMASK)


def cell_key(precision: str, label: str) -> str:
    return f"{precision}/{label}"


def _encode(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else "-inf" if value < 0 else "nan"
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def write_atomic(path: str | Path, data: bytes | str | Callable[[Path], object]) -> None:
    """Write to a uniquely named temporary file beside ``path`` and rename it over: readers
    see the old file or the new one, never half of one, whatever kills the process, and two
    processes writing one path never share a temporary file. ``data``: the bytes or text, or
    a function that writes the file at the path it is given (an image's or tensors' saver)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            if callable(data):
                data(Path(tmp))
            else:
                handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(path: str | Path, document: dict) -> None:
    write_atomic(path, json.dumps(_encode(document), indent=1, sort_keys=False) + "\n")


# -- reading: every file another process or person wrote is checked before it is used --

class OptionalKey:
    """A key that may be absent (in a ``{key: spec}`` object spec)."""

    def __init__(self, spec):
        self.spec = spec


class Each:
    """An object whose values all match ``spec`` (keys: any string)."""

    def __init__(self, spec):
        self.spec = spec


NUMBER = (float, {"inf", "-inf", "nan"})  # JSON has no infinity: "inf" (see _encode)
METRIC = ({"value": (NUMBER, None), "reason": OptionalKey((str, None))}, NUMBER, None)
CELL = {"precision": str, "transform": str, "label": str, "status": {OK, FAILED},
        "reason": OptionalKey((str, None)), "raised_at": OptionalKey((str, None)),
        "params": OptionalKey(dict), "metrics": Each(METRIC),
        "per_sample": OptionalKey(dict), "groups": OptionalKey(dict), "timings": OptionalKey(Each(NUMBER))}
RESULTS = {
    "schema": {SCHEMA}, "config_hash": str, "model": dict, "captions": dict,
    "config": {"model": str, "precisions": [str], "captions": str, "steps": int, "seed": int},
    "cells": Each(CELL), "environment": OptionalKey(dict),
    "metric_setup": OptionalKey(Each({"status": str, "reason": OptionalKey((str, None))})),
    "reference": OptionalKey({"metrics": OptionalKey(Each(METRIC))}),
    "grids": OptionalKey(Each(str)), "tolerance": OptionalKey(Each(float)),
}


def _describe(spec) -> str:
    if isinstance(spec, type):
        return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
                dict: "an object", list: "a list", type(None): "null"}.get(spec, spec.__name__)
    if spec is None:
        return "null"
    if isinstance(spec, (set, frozenset)):
        return " or ".join(map(json.dumps, sorted(spec)))
    if isinstance(spec, tuple):
        return " or ".join(_describe(s) for s in spec)
    if isinstance(spec, list):
        return f"a list of {_describe(spec[0])}"
    return "an object"


def _matches(value, spec) -> bool:
    try:
        check(value, spec)
        return True
    except ValueError:
        return False


def check(value, spec, where: str = "") -> None:
    """Raise a one-line ValueError naming the first place where ``value`` does not match
    ``spec``: a type, None, a set of allowed values, a tuple of alternatives, ``[spec]`` (a
    list), ``{key: spec}`` (an object with these keys; others are allowed), ``Each(spec)``."""
    if isinstance(spec, tuple):
        if not any(_matches(value, s) for s in spec):
            # an object that has the right shape but a wrong value inside: say where
            for s in spec:
                if isinstance(s, (dict, Each)) and isinstance(value, dict):
                    check(value, s, where)
            raise ValueError(f"{where or 'the document'} is {_short(value)}, not {_describe(spec)}")
        return
    if isinstance(spec, (dict, Each)):
        if not isinstance(value, dict):
            raise ValueError(f"{where or 'the document'} is {_short(value)}, not an object")
        items = ((k, s) for k, s in spec.items()) if isinstance(spec, dict) else \
            ((k, OptionalKey(spec.spec)) for k in value)
        for key, sub in items:
            place = (f"{where}.{key}" if where else key) if isinstance(spec, dict) else f"{where}[{_short(key)}]"
            if key not in value:
                if not isinstance(sub, OptionalKey):
                    raise ValueError(f"{place} is missing")
                continue
            check(value[key], sub.spec if isinstance(sub, OptionalKey) else sub, place)
        return
    if isinstance(spec, list):
        if not isinstance(value, list):
            raise ValueError(f"{where} is {_short(value)}, not {_describe(spec)}")
        for index, item in enumerate(value):
            check(item, spec[0], f"{where}[{index}]")
        return
    if isinstance(spec, (set, frozenset)):
        ok = isinstance(value, str) and value in spec
    elif spec is None or spec is type(None):
        ok = value is None
    elif spec is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif spec is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, spec)
    if not ok:
        raise ValueError(f"{where} is {_short(value)}, not {_describe(spec)}")


def _short(value) -> str:
    try:
        text = json.dumps(value, default=str)
    except (ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def read_json(path: str | Path, spec, what: str) -> dict:
    """A JSON file checked against ``spec``; anything wrong with it is one ValueError line."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such {what}") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot read it ({error.strerror or error})") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ValueError(f"{path}: not a {what} (invalid JSON: {error})") from None
    try:
        check(document, spec)
    except ValueError as error:
        raise ValueError(f"{path}: not a valid {what}: {error}") from None
    return document


def read_results(path: str | Path) -> dict:
    """A results file (or a run folder's), validated against ``RESULTS``."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    return read_json(path, RESULTS, "results file")


def metric_value(value) -> float | None:
    """A metric as a number (inf included), or None when it was not computed."""
    if isinstance(value, dict):
        value = value.get("value")
    if value in ("inf", "-inf"):
        return math.inf if value == "inf" else -math.inf
    return value if isinstance(value, (int, float)) else None
