"""The results file: one JSON document per run, written atomically after every cell.

``RESULTS`` below is its one definition, schema ``hadabench.results/1``: every key, its type
and what it means. Everything else is derived from it: the reader (``read_results``: a file
that does not match is one line naming the file and the field), the writer's own check
(``check_results``, run before every write, so what hadabench writes is what it reads), and
the reference table in docs/results-schema.md (``schema_table``; ``python -m scripts.sync_docs``).
A key the definition does not name is kept and never read. Infinite values are written as the
strings "inf" and "-inf" (JSON has no infinity).
"""

from __future__ import annotations

import math
from pathlib import Path

from benchmark.errors import UserError
from benchmark.fileio import Each, Key, OptionalKey, check, read_json, schema_rows

__all__ = ["CELL", "FAILED", "METRIC", "NUMBER", "OK", "RESULTS", "SCHEMA", "cell_key", "check_results",
           "metric_value", "read_results", "schema_table"]

SCHEMA = "hadabench.results/1"
OK, FAILED = "ok", "failed"


def cell_key(precision: str, label: str) -> str:
    return f"{precision}/{label}"


NUMBER = (float, {"inf", "-inf", "nan"})  # JSON has no infinity: "inf" (see fileio._encode)
_NUMBER_OR_NULL = (NUMBER, None)
_TEXT = OptionalKey((str, None))

INTERVAL = {
    "mean": OptionalKey(_NUMBER_OR_NULL, "the mean over captions"),
    "low": OptionalKey(_NUMBER_OR_NULL, "lower bound (null when there is none: see reason)"),
    "high": OptionalKey(_NUMBER_OR_NULL, "upper bound"),
    "method": OptionalKey(str, "how it was computed (statistics.md)"),
    "level": OptionalKey(float, "its confidence level (0.95)"),
    "samples": OptionalKey(int, "captions it is over"),
    "resamples": OptionalKey(int, "bootstrap resamples"),
    "seed": OptionalKey(int, "the resampling seed"),
    "reason": _TEXT,
}
METRIC = ({
    "value": Key(_NUMBER_OR_NULL, "the aggregate (the mean over captions, or a set-level number); "
                                  "null when not computed"),
    "name": OptionalKey(str, "the metric's name"),
    "reason": OptionalKey((str, None), "why it was not computed"),
    "interval": OptionalKey((INTERVAL, None), "the 95% interval of the mean over captions"),
    "details": OptionalKey(dict, "how it was computed (backbone, weights, formula): free-form"),
}, NUMBER, None)
SUBSET = {"roles": Key(([str], None), "the roles quantized (null: all)"),
          "blocks": Key(([int], None), "the blocks quantized (null: all)")}
CELL = {
    "precision": Key(str, "the precision, e.g. w4a4"),
    "transform": Key(str, "the transform's registered name"),
    "label": Key(str, "the transform with its parameters, e.g. hadanorm(alpha=auto)"),
    "status": Key({OK, FAILED}, "ok, or failed (then reason and raised_at)"),
    "reason": OptionalKey((str, None), "a failed cell's error"),
    "raised_at": OptionalKey((str, None), "the file:line in function that raised it"),
    "params": OptionalKey(dict, "the parameters given in the label"),
    "transform_config": OptionalKey(dict, "the transform's whole configuration, as it reports it"),
    "source": OptionalKey(str, "built-in, entry point (<distribution>) or file <path>"),
    "code": OptionalKey(str, "hadabench, <distribution>==<version>, or sha256 of a plugin's files"),
    "subset": OptionalKey((SUBSET, None), "the roles and blocks quantized (a sensitivity study's cells)"),
    "exactness": OptionalKey(({
        "worst_relative_error": OptionalKey(_NUMBER_OR_NULL, "the largest relative error at full precision"),
        "group": OptionalKey((str, None), "the group where it was"),
        "limit": OptionalKey(float, "the error above which the cell fails"),
        "exact": OptionalKey(bool, "whether it is within the limit"),
        "check_s": OptionalKey(float, "seconds the check took"),
    }, None), "the transform's exactness check with quantization off"),
    "metrics": Key(Each(METRIC, "metric key"), "the aggregates, by metric key (sqnr_db, psnr_db, ...)"),
    "per_sample": OptionalKey(Each(([_NUMBER_OR_NULL], None), "metric key"),
                              "per caption, in the evaluation split's order"),
    "groups": OptionalKey(Each(dict, "group"), "per quantized group: what the transform did (free-form)"),
    "kernel": OptionalKey(([str], str, None), "the online path(s) the cell ran on"),
    "timings": OptionalKey(Each(NUMBER, "step"), "seconds: quantize_s, generate_s, metrics_s (qat_s)"),
    "qat": OptionalKey({
        "steps": Key(int, "fine-tuning steps"),
        "learning_rate": Key(float, "Adam's learning rate"),
        "initial_loss": Key(NUMBER, "the distillation loss before (1/SQNR against the teacher, 8 drawn calls)"),
        "final_loss": Key(NUMBER, "the same loss after"),
        "seconds": Key(NUMBER, "seconds the fine-tuning took"),
    }, "only with --qat-steps: the cell's quantization-aware fine-tuning (transforms.md)"),
}
NUMERICS = {"mode": OptionalKey(str, "pinned, native or exact: what decided the floating-point paths"),
            "threads": OptionalKey(int, "threads per process")}
SPLIT = {"ids": Key([(str, int)], "caption ids, in order"), "image_ids": OptionalKey([(str, int)], "their images"),
         "captions": OptionalKey(int, "how many captions"), "images": OptionalKey(int, "how many images"),
         "sha256": OptionalKey(str, "sha256 of the caption list")}
RESULTS = {
    "schema": Key({SCHEMA}, "the schema's name and version"),
    "created": OptionalKey(str, "when the file was first written (UTC, ISO 8601)"),
    "config": Key({
        "model": Key(str, "the model: embedded, a hub id or a folder"),
        "precisions": Key([str], "the precisions run"),
        "captions": Key(str, "the caption source"),
        "steps": Key(int, "denoising steps"),
        "seed": Key(int, "the seed of caption i is seed + i"),
        "transforms": OptionalKey([{"name": Key(str, "registered name"),
                                    "params": OptionalKey(dict, "its parameters")}],
                                  "the transforms asked for (cells record their own)"),
        "metrics": OptionalKey([str], "the metrics asked for"),
        "eval_size": OptionalKey(int, "evaluation captions"),
        "calib_size": OptionalKey(int, "calibration captions"),
        "weight_rounding": OptionalKey((str, None), "rtn or gptq (null: rtn, never set)"),
        "qat_steps": OptionalKey((int, None), "quantization-aware fine-tuning steps (null: post-training only)"),
    }, "the whole resolved configuration (the option reference: running.md); the keys below are those "
       "read back"),
    "config_hash": Key(str, "the hash of what changes the numbers (not out, cache_dir, kernel, "
                            "download_weights, transforms, plugins)"),
    "environment": OptionalKey({"numerics": OptionalKey(NUMERICS, "the floating-point paths (numerics.md)"),
                                "git_commit": OptionalKey(str, "the commit, -dirty with local changes")},
                               "versions (hadabench, python, torch, ...), device, threads, platform"),
    "captions": Key({"source": OptionalKey(str, "coco, embedded, file"),
                     "evaluation": OptionalKey(SPLIT, "the evaluation split"),
                     "calibration": OptionalKey(SPLIT, "the calibration split")},
                    "the manifest: source, path, sha256, seed, and per split the ids (datasets/README.md)"),
    "model": Key(dict, "what identifies the weights (sha256, or a pipeline's files): free-form"),
    "metric_setup": OptionalKey(Each({"status": Key(str, "computed, or not computed"),
                                      "reason": OptionalKey((str, None), "why not")}, "metric"),
                                "per metric: computed or not, why, backbone and weights"),
    "reference": OptionalKey({"metrics": OptionalKey(Each(METRIC, "metric key"), "the full-precision row"),
                              "settings": OptionalKey(dict, "steps, guidance, resolution"),
                              "timings": OptionalKey(Each(NUMBER, "step"), "seconds")},
                             "the full-precision generation"),
    "calibration": OptionalKey(dict, "cache hit, miss or rebuilt, key, path, seconds: free-form"),
    "qat_teacher": OptionalKey({"seconds": OptionalKey(NUMBER, "seconds recording it")},
                               "only with --qat-steps: the full-precision outputs the cells are distilled from"),
    "cells": Key(Each(CELL, "precision/label"), "one per precision and transform (a study's: with "
                                                "[roles=...;blocks=...])"),
    "grids": OptionalKey(Each(str, "precision"), "the Figure-3 grid file per precision"),
    "tolerance": OptionalKey(Each(float, "metric key"), "the regression tolerance when this file is a baseline"),
    "study": OptionalKey({"kind": Key(str, "sensitivity")},
                         "only in a sensitivity study's file: its tables and claims (sensitivity.md)"),
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


def check_results(document: dict) -> None:
    """The writer's side of ``RESULTS``: a document hadabench is about to write must be one it
    would read back; a mismatch is a bug in the writer, so it is an ``AssertionError``."""
    try:
        check(document, RESULTS)
    except ValueError as error:
        raise AssertionError(f"hadabench wrote an invalid results document: {error}") from None


def schema_table() -> str:
    """The reference table of ``RESULTS`` (docs/results-schema.md's generated section)."""
    lines = ["| key | type | meaning |", "|---|---|---|"]
    for path, kind, doc in schema_rows(RESULTS):
        lines.append(f"| `{path}` | {kind} | {doc} |".replace(" |  |", " | |"))
    return "\n".join(lines)


def metric_value(value) -> float | None:
    """A metric as a number (inf included), or None when it was not computed."""
    if isinstance(value, dict):
        value = value.get("value")
    if value in ("inf", "-inf"):
        return math.inf if value == "inf" else -math.inf
    return value if isinstance(value, (int, float)) else None
