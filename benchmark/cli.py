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
    from .models import MODELS
    from .registry import transforms
    from .scoring import METRICS

    rows = [[e.name, e.source, ", ".join(f"{k}={v!r}" for k, v in e.defaults.items()) or "-", e.summary]
            for e in sorted(transforms().values(), key=lambda e: e.name)]
    print("Transforms:\n")
    print(tabulate(rows, headers=["name", "source", "parameters (defaults)", "description"],
                   tablefmt="github"))
    print("\nModel families (where the targets of each transformer are; --plugin/entry points add more):\n")
    print(_families_table())
    print("\nModels (--model):\n")
    print(tabulate(MODELS.items(), headers=["model", "description"], tablefmt="github"))
    print("\nMetrics (--metrics):\n")
    print(tabulate(METRICS.items(), headers=["metric", "description"], tablefmt="github"))
    print("\nPrecisions: fp, w<b>a<b> with 2 to 8 bits each (e.g. w4a4, w6a6, w8a8, w4a8)")
    return 0


def _families_table() -> str:
    from .registry import families

    rows = [[e.name, e.source, ", ".join(e.family.transformer), ", ".join(e.family.roles)]
            if e.family is not None else [e.name, e.source, "-", f"BROKEN: {e.error}"]
            for e in families().values()]
    return tabulate(rows, headers=["family", "source", "transformer", "roles"], tablefmt="github")


def cmd_validate(args) -> int:
    from pathlib import Path

    from .registry import families, load_plugin_file, transforms
    from .validate import validate_family, validate_transform

    target = args.plugin
    if target.endswith(".py") or Path(target).is_file():
        names = load_plugin_file(target)
    elif target in transforms() or target in families():
        names = [target]
    else:
        raise ValueError(f"{target!r} is neither a plugin .py file nor a registered transform "
                         "or model family (see 'hadabench ls')")
    params = _parse_params(args.param)
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


def cmd_microbench(args) -> int:
    from .microbench import main as microbench
    from .quant import Precision

    microbench(Precision.parse(args.precision).name, repeats=args.repeats)
    return 0


def cmd_run(args) -> int:
    from .config import load_config
    from .runner import Run

    flags = {"model": args.model, "precisions": args.precisions, "transforms": args.transforms,
             "plugins": args.plugin or None, "captions": args.captions,
             "coco_annotations": args.coco_annotations, "caption_file": args.caption_file,
             "calib_size": args.calib_size, "eval_size": args.eval_size, "steps": args.steps,
             "seed": args.seed, "device": args.device, "out": args.out, "dtype": args.dtype,
             "guidance_scale": args.guidance_scale, "metrics": args.metrics,
             "kernel": args.kernel, "cache_dir": args.cache_dir,
             "download_weights": args.download_weights or None}
    run = Run(load_config(args.config, flags), fresh=args.fresh)
    run.prepare()
    return run.execute()


def cmd_leaderboard(args) -> int:
    from .leaderboard import find_results, render
    from .results import write_atomic

    text = render(find_results(args.results), args.output)
    write_atomic(args.output, text)
    print(f"wrote {args.output}")
    return 0


def cmd_check(args) -> int:
    from .check import check, write_baseline

    if args.write_baseline:
        write_baseline(args.results, args.baseline)
        print(f"wrote baseline {args.baseline}")
        return 0
    return check(args.results, args.baseline)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hadabench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the benchmark (precisions x transforms on one model)")
    run.add_argument("--config", help="a TOML file; the flags below override it")
    run.add_argument("--model", help="embedded (default), a hub id or a local pipeline folder")
    run.add_argument("--precisions", help="comma-separated, default w4a4,w6a6 (fp: the exactness check)")
    run.add_argument("--transforms", help="comma-separated names, each optionally name(key=value,...); "
                                         "default the six baselines")
    run.add_argument("--plugin", action="append", metavar="FILE", help="load transforms from a .py file")
    run.add_argument("--captions", help="embedded (default), coco or file")
    run.add_argument("--coco-annotations", metavar="FILE", help="captions_val2017.json (or 2014)")
    run.add_argument("--caption-file", metavar="FILE", help="one caption per line")
    run.add_argument("--calib-size", type=int, metavar="N")
    run.add_argument("--eval-size", type=int, metavar="N")
    run.add_argument("--steps", type=int, help="denoising steps (default 20)")
    run.add_argument("--seed", type=int, help="caption splits and per-caption seeds (default 0)")
    run.add_argument("--guidance-scale", type=float)
    run.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    run.add_argument("--dtype", help="float32 (default), float16 or bfloat16")
    run.add_argument("--metrics", help="comma-separated: sqnr,clip_score,clip_iqa (default all)")
    run.add_argument("--kernel", help="auto (default), torch or triton: the online transform's path")
    run.add_argument("--download-weights", action="store_true",
                     help="let CLIP score and CLIP-IQA fetch missing weights (otherwise: not computed)")
    run.add_argument("--cache-dir", help="where calibration statistics are cached")
    run.add_argument("--out", help="the run folder (default results); a rerun into it resumes")
    run.add_argument("--fresh", action="store_true",
                     help="start over in --out instead of resuming (its old results are replaced)")
    run.set_defaults(func=cmd_run)

    board = sub.add_parser("leaderboard", help="write markdown tables from result files")
    board.add_argument("results", nargs="+",
                       help="results.json files, run folders, or folders of run folders")
    board.add_argument("-o", "--output", default="leaderboard/README.md")
    board.set_defaults(func=cmd_leaderboard)

    gate = sub.add_parser("check", help="fail when a run regresses against a baseline")
    gate.add_argument("results", help="the run's results.json or folder")
    gate.add_argument("--baseline", required=True, help="a results file with a tolerance table")
    gate.add_argument("--write-baseline", action="store_true",
                      help="make RESULTS the baseline (keeping the baseline's tolerance)")
    gate.set_defaults(func=cmd_check)

    ls = sub.add_parser("ls", help="list transforms (with their source) and precisions")
    ls.set_defaults(func=cmd_ls)

    validate = sub.add_parser("validate", help="check a transform or model family before benchmarking it")
    validate.add_argument("plugin", help="a plugin .py file, or the name of a registered transform or family")
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
