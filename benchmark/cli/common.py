"""What several subcommands share: plugin files, --param pairs, path arguments, pinned numerics."""

from __future__ import annotations

import argparse

from benchmark.annotations import parse_value
from benchmark.errors import UserError
from benchmark.fileio import path_name
from benchmark.plugins import load_plugin_file
from benchmark.quant.numerics import restart_pinned


def parse_params(pairs: list[str]) -> dict:
    """``k=v`` pairs; values that read as numbers or booleans become them."""
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--param takes key=value, got {pair!r}")
        params[key] = parse_value(value)
    return params


def path_argument(value: str) -> str:
    """argparse's ``type=`` for every path a subcommand takes: ``fileio.path_name``'s check, in
    argparse's own one-line error ("argument -o: ... too long")."""
    try:
        return path_name(value, "")
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error).lstrip()) from None


def load_plugins(files: list[str] | None) -> list[str]:
    """Register what each ``--plugin FILE`` declares; returns the names."""
    return [name for path in files or [] for name in load_plugin_file(path)]


def pin(config, args) -> None:
    """Pinned numerics need their environment before torch loads: restart the real command with
    it (a call in-process, args.argv None, cannot restart; the run refuses then)."""
    if config.numerics == "pinned" and args.argv is not None:
        restart_pinned(args.argv)  # returns only when the environment is pinned already
