"""``hadabench run``: the benchmark, precisions x transforms on one model."""

from __future__ import annotations

from benchmark.cli.common import pin
from benchmark.run.config import load_config
from benchmark.run.runner import Run


def run_flags(args) -> dict:
    return {"model": args.model, "precisions": args.precisions, "transforms": args.transforms,
            "plugins": args.plugin or None, "captions": args.captions,
            "coco_annotations": args.coco_annotations, "caption_file": args.caption_file,
            "calib_size": args.calib_size, "eval_size": args.eval_size, "steps": args.steps,
            "seed": args.seed, "device": args.device, "out": args.out, "dtype": args.dtype,
            "guidance_scale": args.guidance_scale, "metrics": args.metrics,
            "kernel": args.kernel, "numerics": args.numerics, "grid": args.grid,
            "cache_dir": args.cache_dir, "download_weights": args.download_weights or None,
            "allow_inexact": args.allow_inexact or None, "roles": args.roles, "blocks": args.blocks}


def command(args) -> int:
    config = load_config(args.config, run_flags(args))
    pin(config, args)
    run = Run(config, fresh=args.fresh)
    run.prepare()
    return run.execute()


def add_parser(sub):
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
                     help="run transforms that are not exact at full precision (rows marked) instead of failing "
                          "their cells")
    run.add_argument("--cache-dir", help="where calibration statistics are cached")
    run.add_argument("--out", help="the run folder (default results); a rerun into it resumes")
    run.add_argument("--fresh", action="store_true",
                     help="start over in --out instead of resuming (its old results are replaced)")
    run.add_argument("--roles", help="quantize only these roles, comma-separated (default all; "
                                    "'hadabench ls' lists them)")
    run.add_argument("--blocks", help="quantize only these transformer blocks: indices and ranges, e.g. 0-3 or 0,2")
    run.set_defaults(func=command)
    return run
