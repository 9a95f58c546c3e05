"""``hadabench validate``: check a transform or a model family before benchmarking it."""

from __future__ import annotations

from pathlib import Path

from benchmark.cli.common import parse_params, path_argument
from benchmark.errors import UserError
from benchmark.families.registry import families
from benchmark.families.validate import validate_family
from benchmark.plugins import load_plugin_file
from benchmark.transform.registry import create_transform, transforms
from benchmark.transform.validate import validate_transform


def command(args) -> int:
    target = args.plugin
    if target.endswith(".py") or Path(target).is_file():
        names = load_plugin_file(target)
    elif target in transforms() or target in families():
        names = [target]
    else:
        raise UserError(f"{target!r} is neither a plugin .py file nor a registered transform "
                         "or model family (see 'hadabench ls')")
    params = parse_params(args.param)
    if params:  # parameters are the user's input: refuse bad ones (exit 2) before any check
        for name in (n for n in names if n in transforms()):
            create_transform(name, **params)
    failed = False
    for name in names:
        is_family = name in families() and name not in transforms()
        checks = validate_family(name) if is_family else validate_transform(name, **params)
        print(f"{name}:")
        for check in checks:
            print(f"  {'PASS' if check.passed else 'FAIL'}  {check.name}: {check.detail}")
            failed |= not check.passed
    print("invalid" if failed else "valid")
    return 1 if failed else 0


def add_parser(sub):
    validate = sub.add_parser("validate", help="check a transform or model family before benchmarking it")
    validate.add_argument("plugin", type=path_argument,
                          help="a plugin .py file, or the name of a registered transform or family")
    validate.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                          help="a hyper-parameter for the transform's factory (repeatable)")
    validate.set_defaults(func=command)
