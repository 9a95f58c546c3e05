"""The ``hadabench`` command line (also ``python -m benchmark``)."""

from __future__ import annotations

import argparse
import sys

from tabulate import tabulate


def _parse_params(pairs: list[str]) -> dict:
    """``k=v`` pairs; values that read as numbers or booleans become them."""
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--param takes key=value, got {pair!r}")
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


def cmd_ls(args) -> int:
    from .registry import transforms

    rows = [[e.name, e.source, ", ".join(f"{k}={v!r}" for k, v in e.defaults.items()) or "-", e.summary]
            for e in sorted(transforms().values(), key=lambda e: e.name)]
    print("Transforms:\n")
    print(tabulate(rows, headers=["name", "source", "parameters (defaults)", "description"],
                   tablefmt="github"))
    print("\nPrecisions: fp, w<b>a<b> with 2 to 8 bits each (e.g. w4a4, w6a6, w8a8, w4a8)")
    return 0


def cmd_validate(args) -> int:
    from pathlib import Path

    from .registry import load_plugin_file, transforms
    from .validate import validate_transform

    target = args.plugin
    if target.endswith(".py") or Path(target).is_file():
        names = load_plugin_file(target)
    elif target in transforms():
        names = [target]
    else:
        raise ValueError(f"{target!r} is neither a plugin .py file nor a registered transform "
                         "(see 'hadabench ls')")
    params = _parse_params(args.param)
    failed = False
    for name in names:
        checks = validate_transform(name, **params)
        print(f"{name}:")
        for check in checks:
            print(f"  {'PASS' if check.passed else 'FAIL'}  {check.name}: {check.detail}")
            failed |= not check.passed
    print("invalid" if failed else "valid")
    return 1 if failed else 0


def cmd_microbench(args) -> int:
    from .microbench import main as microbench
    from .quant import Precision

    microbench(Precision.parse(args.precision).name, repeats=args.repeats)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hadabench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("ls", help="list transforms (with their source) and precisions")
    ls.set_defaults(func=cmd_ls)

    validate = sub.add_parser("validate", help="check a transform before benchmarking it")
    validate.add_argument("plugin", help="a plugin .py file, or the name of a registered transform")
    validate.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                          help="a hyper-parameter for the transform's factory (repeatable)")
    validate.set_defaults(func=cmd_validate)

    micro = sub.add_parser("microbench", help="time each transform on PixArt-shaped layers")
    micro.add_argument("--precision", default="w4a4")
    micro.add_argument("--repeats", type=int, default=5)
    micro.set_defaults(func=cmd_microbench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as error:  # bad input from the user: one line, exit 2
        print(f"hadabench: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
