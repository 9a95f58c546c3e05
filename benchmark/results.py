"""The results file: one JSON document per run, written atomically after every cell.

Schema ``hadabench.results/1`` (documented in full in README.md, "Results"):

    schema, created, config, config_hash, environment, captions (manifest), model,
    metric_setup, reference (full-precision row), calibration,
    cells: {"<precision>/<transform label>": cell}

A cell: precision, transform, label, params, status ("ok" or "failed"), reason, metrics
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

SCHEMA = "hadabench.results/1"
OK, FAILED = "ok", "failed"


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


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write to a temporary file beside ``path`` and rename it over: readers see the old
    file or the new one, never half of one, whatever kills the process."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
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


def read_results(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such results file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a results file (invalid JSON: {error})") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a results file (schema is not {SCHEMA})")
    return document


def metric_value(value) -> float | None:
    """A metric as a number (inf included), or None when it was not computed."""
    if isinstance(value, dict):
        value = value.get("value")
    if value in ("inf", "-inf"):
        return math.inf if value == "inf" else -math.inf
    return value if isinstance(value, (int, float)) else None
