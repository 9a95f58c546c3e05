"""``hadabench microbench``: time each transform on PixArt-shaped layers."""

from __future__ import annotations

import torch

from benchmark.cli.common import load_plugins, path_argument
from benchmark.errors import UserError
from benchmark.quant.grid import Precision
from benchmark.quant.kernels import KERNELS
from benchmark.reports.microbench import main as microbench
from benchmark.transform.registry import BASELINES, create_transform


def command(args) -> int:
    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    bad = [k for k in kernels if k not in KERNELS]
    if bad or not kernels:
        raise UserError(f"unknown kernel {bad[0] if bad else ''!r} in --kernels: use {', '.join(KERNELS)}")
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be positive, got {args.threads}")
        torch.set_num_threads(args.threads)
    names = list(BASELINES) + load_plugins(args.plugin)
    if args.transforms:
        names = [n.strip() for n in args.transforms.split(",") if n.strip()]
    for name in names:
        create_transform(name)  # unknown names: refuse before timing anything
    microbench(Precision.parse(args.precision).name, repeats=args.repeats, transforms=names,
               roofline=args.roofline, kernels=kernels, bf16=args.bf16, memory=args.memory)
    return 0


def add_parser(sub):
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
    micro.add_argument("--plugin", action="append", metavar="FILE", type=path_argument,
                       help="also time a .py file's transforms (repeatable)")
    micro.add_argument("--transforms", metavar="NAMES",
                       help="comma-separated names to time (default: the baselines and the plugins')")
    micro.set_defaults(func=command)
