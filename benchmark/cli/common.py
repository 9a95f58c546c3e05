"""What several subcommands share: plugin files, --param pairs, pinned numerics."""

from __future__ import annotations

from benchmark.errors import UserError
from benchmark.plugins import load_plugin_file
from benchmark.quant.numerics import restart_pinned


def parse_params(pairs: list[str]) -> dict:
    """``k=v`` pairs; values that read as numbers or booleans become them."""
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--param takes key=value, got {pair!r}")
        for convert in (int, float):
            try:
                value = convert(value)
                break
            except ValueError:
                pass
        else:
            value = {"true": True, "false": False, "none": None}.get(value.lower(), value)
        params[key] = value
    return params


def load_plugins(files: list[str] | None) -> list[str]:
    """Register the transforms of each ``--plugin FILE``; returns their names."""

    return [name for path in files or [] for name in load_plugin_file(path)]


def pin(config, args) -> None:
    """Pinned numerics need their environment before torch loads: restart the real command with
    it (a call in-process, args.argv None, cannot restart; the run refuses then)."""
    if config.numerics == "pinned" and args.argv is not None:

        restart_pinned(args.argv)  # returns only when the environment is pinned already
