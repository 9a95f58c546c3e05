"""The results file: one JSON document per run, written atomically after every cell.

Schema ``hadabench.results/1`` (documented in full in README.md, "Results"):

    schema, created, config, config_hash, environment, captions (manifest), model,
    metric_setup, reference (full-precision row), calibration,
    cells: {"<precision>/<transform label>": cell}

A cell: precision, transform, label, params, status ("ok" or "failed"), reason and
raised_at (a failed cell's error and the file:line that raised it), metrics
(aggregates), per_sample, groups (what each quantized group did), timings, kernel, and
qat (only with ``--qat-steps``: the fine-tuning's steps, learning rate, losses, seconds).
Infinite SQNR (identical outputs) is written as the string "inf": JSON has no infinity.
"""

from __future__ import annotations

import math
from pathlib import Path

from benchmark.errors import UserError
from benchmark.fileio import Each, OptionalKey, read_json

__all__ = ["CELL", "FAILED", "METRIC", "NUMBER", "OK", "RESULTS", "SCHEMA", "cell_key", "metric_value",
           "read_results"]

SCHEMA = "hadabench.results/1"
OK, FAILED = "ok", "failed"


def cell_key(precision: str, label: str) -> str:
    return f"{precision}/{label}"


NUMBER = (float, {"inf", "-inf", "nan"})  # JSON has no infinity: "inf" (see _encode)
METRIC = ({"value": (NUMBER, None), "reason": OptionalKey((str, None))}, NUMBER, None)
CELL = {"precision": str, "transform": str, "label": str, "status": {OK, FAILED},
        "reason": OptionalKey((str, None)), "raised_at": OptionalKey((str, None)),
        "params": OptionalKey(dict), "metrics": Each(METRIC),
        "per_sample": OptionalKey(dict), "groups": OptionalKey(dict), "timings": OptionalKey(Each(NUMBER)),
        # --qat-steps: the cell's quantization-aware fine-tuning (absent: post-training only)
        "qat": OptionalKey({"steps": int, "learning_rate": float, "initial_loss": NUMBER, "final_loss": NUMBER,
                            "seconds": NUMBER})}
RESULTS = {
    "schema": {SCHEMA}, "config_hash": str, "model": dict, "captions": dict,
    "config": {"model": str, "precisions": [str], "captions": str, "steps": int, "seed": int},
    "cells": Each(CELL), "environment": OptionalKey(dict),
    "metric_setup": OptionalKey(Each({"status": str, "reason": OptionalKey((str, None))})),
    "reference": OptionalKey({"metrics": OptionalKey(Each(METRIC))}),
    "grids": OptionalKey(Each(str)), "tolerance": OptionalKey(Each(float)),
}


def read_results(path: str | Path) -> dict:
    """A results file (or a run folder's), validated against ``RESULTS``."""
    path = Path(path)
    try:
        if path.is_dir():
            path = path / "results.json"
    except OSError as error:  # a name the system refuses (too long, ...)
        raise UserError(f"{str(path)[:80]}...: not a readable path ({error.strerror or error})") from None
    return read_json(path, RESULTS, "results file")


def metric_value(value) -> float | None:
    """A metric as a number (inf included), or None when it was not computed."""
    if isinstance(value, dict):
        value = value.get("value")
    if value in ("inf", "-inf"):
        return math.inf if value == "inf" else -math.inf
    return value if isinstance(value, (int, float)) else None
