"""One memory measurement per process: ``main([MODEL, PRECISION])``.

Run by ``hadabench microbench --memory`` in a fresh subprocess each, so every peak is its
own. Prints one JSON line with the peak resident set size (``VmHWM`` from /proc, which
is getrusage's ``ru_maxrss``) and what was done.

    embedded fp     load the embedded model, generate 16 captions (CFG batch 32)
    embedded w4a4   the same after calibration (32 captions) and W4A4 HadaNorm on every target
    pixart fp       a PixArt-Sigma-sized transformer with random weights (diffusers'
                    PixArtTransformer2DModel: 28 blocks, 1152 wide, 256 px = 256 tokens,
                    300 text tokens of 4096), one denoising step, CFG batch 2
    pixart w4a4     the same after a one-step calibration (the bounded sample) and W4A4
                    HadaNorm on all 196 target groups
"""

from __future__ import annotations

import json
import resource
import time

import torch

from benchmark.captions import embedded_captions_dir
from benchmark.errors import UserError
from benchmark.models import load_model
from benchmark.models.base import Generation, ModelAdapter
from benchmark.run.calibration import calibrate, caption_seeds, collect_stats, read_captions
from benchmark.testing.pixart import build_pixart, pixart_inputs


def peak_rss_bytes() -> int:
    """This process's peak resident set size."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


class PixArtStep(ModelAdapter):
    """A PixArt-Sigma-sized transformer with random weights; ``generate`` runs one step."""

    name = "pixart-sigma-sized"

    def __init__(self, resolution: int = 256, text_tokens: int = 300):
        super().__init__()
        self.transformer = build_pixart(resolution // 8)  # PixArt-Sigma's shape; random weights
        self.latent, self.text_tokens = resolution // 8, text_tokens

    @torch.no_grad()
    def generate(self, captions, seeds, steps=1, batch_size=2, guidance_scale=None):
        out = self.transformer(**pixart_inputs(self.transformer, 2, self.text_tokens, "cpu", torch.float32))[0]
        return Generation(list(captions), list(seeds), out, out)

    def fingerprint(self) -> dict:
        return {"random": self.name}


def measure(model_name: str, precision: str) -> dict:
    torch.set_num_threads(1)
    tick = time.perf_counter()
    info = {"model": model_name, "precision": precision}
    if model_name == "embedded":
        model = load_model("embedded")
        captions = read_captions(embedded_captions_dir() / "evaluation.txt")[:16]
        if precision != "fp":
            stats, _ = calibrate(model, read_captions(embedded_captions_dir() / "calibration.txt"), steps=4,
                                 cache_dir=None)
            model.quantize("hadanorm", precision, stats)
        with torch.no_grad():
            model.generate(captions, caption_seeds(len(captions)), steps=4, batch_size=16)
    elif model_name == "pixart":
        model = PixArtStep()
        if precision != "fp":
            stats = collect_stats(model, ["random"], [0], steps=1)
            info["sample_bytes"] = sum(s.sample.numel() * 4 for s in stats.values())
            info["groups"] = len(stats)
            model.quantize("hadanorm", precision, stats)
        model.generate(["random"], [0])
    else:
        raise UserError(f"unknown model {model_name!r}: use embedded or pixart")
    info["seconds"] = round(time.perf_counter() - tick, 1)
    info["peak_rss_bytes"] = peak_rss_bytes()
    return info


def main(argv: list[str]) -> None:
    print(json.dumps(measure(*argv)))
