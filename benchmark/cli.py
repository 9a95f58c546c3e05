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


def _load_plugins(files: list[str] | None) -> list[str]:
    """Register the transforms of each ``--plugin FILE``; returns their names."""
    from .registry import load_plugin_file

    return [name for path in files or [] for name in load_plugin_file(path)]


def cmd_ls(args) -> int:
    from .models import MODELS
    from .registry import transforms
    from .scoring import METRICS

    _load_plugins(args.plugin)

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
    from .models import ROLES
    print(f"\nRoles (--roles): {', '.join(ROLES)}; blocks (--blocks): e.g. 0-3 or 0,2")
    print("\nPrecisions: fp, w<b>a<b>, a<b> (activations only), w<b> (weights only), 2 to 8 bits "
          "each (e.g. w4a4, w6a6, w4a8, a4, w4)")
    return 0


def _families_table() -> str:
    from .registry import families

    rows = [[e.name, e.source, ", ".join(e.family.transformer), ", ".join(e.family.roles)]
            if e.family is not None else [e.name, e.source, "-", f"BROKEN: {e.error}"]
            for e in families().values()]
    return tabulate(rows, headers=["family", "source", "transformer", "roles"], tablefmt="github")


def cmd_validate(args) -> int:
    from pathlib import Path

    from .registry import create_transform, families, load_plugin_file, transforms
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


def cmd_microbench(args) -> int:
    from .microbench import main as microbench
    from .quant import Precision
    from .registry import BASELINES, create_transform

    from .kernels import KERNELS

    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    bad = [k for k in kernels if k not in KERNELS or k == "auto"]
    if bad or not kernels:
        raise ValueError(f"unknown kernel {bad[0] if bad else ''!r} in --kernels: use torch, triton, compile")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be positive, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    names = list(BASELINES) + _load_plugins(args.plugin)
    if args.transforms:
        names = [n.strip() for n in args.transforms.split(",") if n.strip()]
    for name in names:
        create_transform(name)  # unknown names: refuse before timing anything
    microbench(Precision.parse(args.precision).name, repeats=args.repeats, transforms=names,
               roofline=args.roofline, kernels=kernels, bf16=args.bf16, memory=args.memory)
    return 0


def _run_flags(args) -> dict:
    return {"model": args.model, "precisions": args.precisions, "transforms": args.transforms,
            "plugins": args.plugin or None, "captions": args.captions,
            "coco_annotations": args.coco_annotations, "caption_file": args.caption_file,
            "calib_size": args.calib_size, "eval_size": args.eval_size, "steps": args.steps,
            "seed": args.seed, "device": args.device, "out": args.out, "dtype": args.dtype,
            "guidance_scale": args.guidance_scale, "metrics": args.metrics,
            "kernel": args.kernel, "numerics": args.numerics, "grid": args.grid,
            "cache_dir": args.cache_dir, "download_weights": args.download_weights or None,
            "allow_inexact": args.allow_inexact or None, "roles": args.roles, "blocks": args.blocks}


def _pin(config, args) -> None:
    """Pinned numerics need their environment before torch loads: restart the real command with
    it (a call in-process, args.argv None, cannot restart; the run refuses then)."""
    if config.numerics == "pinned" and args.argv is not None:
        from .numerics import restart_pinned

        restart_pinned(args.argv)  # returns only when the environment is pinned already


def cmd_run(args) -> int:
    from .config import load_config
    from .runner import Run

    config = load_config(args.config, _run_flags(args))
    _pin(config, args)
    run = Run(config, fresh=args.fresh)
    run.prepare()
    return run.execute()


def cmd_sensitivity(args) -> int:
    from .config import load_config
    from .sensitivity import STUDY_DEFAULTS, study

    _pin(load_config(args.config, _run_flags(args), defaults=STUDY_DEFAULTS), args)
    return study(args.config, _run_flags(args), block_view=args.block_view, fresh=args.fresh,
                 report=args.report)


def cmd_leaderboard(args) -> int:
    from pathlib import Path

    from .leaderboard import find_results, render
    from .results import write_atomic
    from .runfolder import check_folder

    if Path(args.output).is_dir():
        raise ValueError(f"-o {args.output} is a folder: give the markdown file to write")
    check_folder(Path(args.output).parent, "-o")
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


def cmd_power(args) -> int:
    from .compare import power_rows
    from .metrics.registry import metric_spec
    from .results import read_results

    if not args.target > 0:
        raise ValueError(f"--target must be a positive number, got {args.target}")
    spec = metric_spec(args.metric)
    results = read_results(args.results)
    rows = power_rows(results, spec, args.target)
    if not rows:
        raise ValueError(f"{args.results}: no cell has per-caption values of {spec.key}")
    print(f"{spec.header}: 95% bootstrap half-width of each cell's mean and of each paired difference "
          f"at this run's captions, and the captions needed for ±{args.target:g} (half-width ∝ 1/√n)\n")
    print(tabulate([[r["precision"], r["comparison"], spec.fmt.format(r["mean"]),
                     f"±{r['half_width']:.2f}", r["captions"], r["needed"] or "-", r.get("verdict", "")]
                    for r in rows],
                   headers=["precision", "cell or paired difference", "mean", "95% half-width", "captions",
                            f"needed for ±{args.target:g}", "paired test"], tablefmt="github"))
    return 0
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line like every other bad input, not the whole usage
        raise ValueError(f"{message} (see '{self.prog} --help')")


def _difference(interval) -> str:
    """``mean [low, high]``, signed; in scientific notation when two decimals would print a
    non-zero difference as +0.00 (two kernels that differ in a few rounding flips)."""
    size = max(abs(interval.mean), abs(interval.low), abs(interval.high))
    fmt = "{:+.2f}" if size >= 0.005 or size == 0 else "{:+.1e}"
    return f"{fmt.format(interval.mean)} [{fmt.format(interval.low)}, {fmt.format(interval.high)}]"


def cmd_compare(args) -> int:
    from .compare import compare_runs
    from .metrics.registry import metric_spec
    from .results import read_results

    spec = metric_spec(args.metric)
    rows = compare_runs(read_results(args.a), read_results(args.b), spec)
    if not rows:
        raise ValueError(f"{args.a} and {args.b} share no cell with per-caption values of {spec.key}")
    print(f"{spec.header}: B − A per cell, paired bootstrap over the same captions (95% interval)\n"
          f"A = {args.a}\nB = {args.b}\n")
    print(tabulate([[r["cell"], spec.fmt.format(r["a"]), spec.fmt.format(r["b"]),
                     _difference(r["difference"]),
                     f"{r['p_value']:.3f}", "B " + r["verdict"] if r["verdict"] != "not significant" else r["verdict"]]
                    for r in rows],
                   headers=["cell", "A", "B", "B − A [95%]", "p", "verdict"], tablefmt="github"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hadabench", description=__doc__)
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
    run.add_argument("--numerics", help="native (default) or pinned: the same bits on any x86-64 CPU with "
                                        "AVX2 (MKL and ATen code paths, threads; see README)")
    run.add_argument("--kernel", help="auto (default), torch, triton or compile: the online transform's path")
    run.add_argument("--grid", help="zero_point (default: integer zero point, as QuaRot and ViDiT-Q) "
                                    "or min_anchored: the quantization grid")
    run.add_argument("--download-weights", action="store_true",
                     help="let CLIP score and CLIP-IQA fetch missing weights (otherwise: not computed)")
    run.add_argument("--allow-inexact", action="store_true",
                     help="run transforms that are not exact at full precision (rows marked) instead of failing their cells")
    run.add_argument("--cache-dir", help="where calibration statistics are cached")
    run.add_argument("--out", help="the run folder (default results); a rerun into it resumes")
    run.add_argument("--fresh", action="store_true",
                     help="start over in --out instead of resuming (its old results are replaced)")
    run.add_argument("--roles", help="quantize only these roles, comma-separated (default all; "
                                    "'hadabench ls' lists them)")
    run.add_argument("--blocks", help="quantize only these transformer blocks: indices and ranges, e.g. 0-3 or 0,2")
    run.set_defaults(func=cmd_run)

    # The same flags as run (a copy of its arguments), other defaults: benchmark/sensitivity.py
    study = sub.add_parser("sensitivity", parents=[run], conflict_handler="resolve",
                           help="one quantizer at a time: roles x transforms, and blocks x roles")
    study.add_argument("--block-view", metavar="TRANSFORM",
                       help="the transform (label) of the blocks x roles view (default: the first)")
    study.add_argument("--report", action="store_true",
                       help="only write the tables and heatmaps of the cells finished so far")
    study.set_defaults(func=cmd_sensitivity)

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

    power = sub.add_parser("power", help="interval widths of a run's cells and paired differences, "
                                         "and the captions a claim needs")
    power.add_argument("results", help="a results.json or run folder")
    power.add_argument("--metric", default="sqnr_db", help="a per-sample metric (default sqnr_db)")
    power.add_argument("--target", type=float, default=0.25, help="the half-width wanted (default 0.25)")
    power.set_defaults(func=cmd_power)

    pair = sub.add_parser("compare", help="two runs of the same captions, cell by cell: paired differences")
    pair.add_argument("a", help="a results.json or run folder")
    pair.add_argument("b", help="another one, of the same evaluation captions and seeds")
    pair.add_argument("--metric", default="sqnr_db", help="a per-sample metric (default sqnr_db)")
    pair.set_defaults(func=cmd_compare)

    ls = sub.add_parser("ls", help="list transforms (with their source) and precisions")
    ls.add_argument("--plugin", action="append", metavar="FILE", help="also list a .py file's transforms")
    ls.set_defaults(func=cmd_ls)

    validate = sub.add_parser("validate", help="check a transform or model family before benchmarking it")
    validate.add_argument("plugin", help="a plugin .py file, or the name of a registered transform or family")
    validate.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                          help="a hyper-parameter for the transform's factory (repeatable)")
    validate.set_defaults(func=cmd_validate)

    micro = sub.add_parser("microbench", help="time each transform on PixArt-shaped layers")
    micro.add_argument("--precision", default="w4a4")
    micro.add_argument("--repeats", type=int, default=5)
    micro.add_argument("--roofline", action="store_true",
                       help="the online transform's roofline at the benchmark's shapes (only the sections asked for)")
    micro.add_argument("--kernels", default="torch", help="for --roofline: e.g. torch,compile")
    micro.add_argument("--bf16", action="store_true", help="bf16 W6A6: online part in bf16 vs fp32")
    micro.add_argument("--memory", action="store_true",
                       help="peak resident memory, embedded and PixArt-Sigma-sized (heavy: minutes)")
    micro.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    micro.add_argument("--plugin", action="append", metavar="FILE",
                       help="also time a .py file's transforms (repeatable)")
    micro.add_argument("--transforms", metavar="NAMES",
                       help="comma-separated names to time (default: the baselines and the plugins')")
    micro.set_defaults(func=cmd_microbench)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.argv = sys.argv[1:] if argv is None else None  # what a restart with pinned numerics re-runs
        return args.func(args)
    except ValueError as error:  # bad input from the user: one line, exit 2
        print(f"hadabench: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
