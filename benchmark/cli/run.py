"""``hadabench run``: the benchmark, precisions x transforms on one model."""

from __future__ import annotations

from benchmark.cli.common import path_argument, pin
from benchmark.run.config import load_config, options
from benchmark.run.runner import Run


def run_flags(args) -> dict:
    """The configuration keys the flags set (None where a flag was not given)."""
    return {opt.name: (getattr(args, opt.name) or None) if opt.switch or opt.repeat else getattr(args, opt.name)
            for opt in options() if opt.flag}


def command(args) -> int:
    config = load_config(args.config, run_flags(args), fresh=args.fresh)
    pin(config, args)
    run = Run(config, fresh=args.fresh)
    run.prepare()
    return run.execute()


def add_parser(sub):
    """The run's flags, one per ``RunConfig`` option (``benchmark.run.config``), in its order."""
    run = sub.add_parser("run", help="run the benchmark (precisions x transforms on one model)")
    run.add_argument("--config", type=path_argument, help="a TOML file; the flags below override it")
    for opt in options():
        if not opt.flag:
            continue
        action = "store_true" if opt.switch else "append" if opt.repeat else None
        extra = {"metavar": opt.metavar} if opt.metavar else {}
        if opt.type is not None or opt.path:
            extra["type"] = path_argument if opt.path else opt.type  # a path's name checked at once too
        run.add_argument(opt.flag, dest=opt.name, help=opt.help or None, **({"action": action} if action else {}),
                         **extra)
        if opt.name == "out":  # --fresh acts on the folder --out names
            run.add_argument("--fresh", action="store_true",
                             help="start over in --out instead of resuming (its old results are replaced)")
    run.set_defaults(func=command)
    return run
