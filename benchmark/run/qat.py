"""Quantization-aware fine-tuning (``--qat-steps N``): a few steps of distillation from the
full-precision model into each cell's quantized model, before it generates.

Data-free: the teacher is the full-precision denoiser on the *calibration* captions. Once per
run, ``record_teacher`` generates them (each caption from its own seed, as calibration does)
and keeps, for ``N`` calls of the denoiser drawn at random (seeded: caption batch and
scheduler timestep), the call's inputs and the full-precision output. ``finetune`` then
trains the quantized model to match those outputs, one drawn call per step, and the cell
generates with the result. Every cell of a run trains on the same draws, so cells stay paired.

What is trained: the folded weight ``W~`` of every ``TransformedLinear`` (and a convolution's
taps), quantized on every forward with the straight-through gradient
(``benchmark.quant.grid.straight_through``); activations are fake-quantized with the same
estimator. The transform's static part stays folded (the trained weight is the folded one,
and the online rotation and scales are fixed); its dynamic part (centering) stays dynamic.
Nothing else changes: the original modules are not touched, so restoring the quantization
puts them back bit for bit. The loss, the learning rate and why: docs/transforms.md,
"Quantization-aware fine-tuning".
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from benchmark.errors import UserError
from benchmark.logs import get_logger
from benchmark.run.calibration import caption_seeds
from benchmark.run.distributed import is_main_process
from benchmark.transform.base import TransformedLinear

__all__ = ["EVALUATION_CALLS", "LEARNING_RATE", "Teacher", "finetune", "loss_calls", "record_teacher",
           "relative_error"]

# Adam's step, per weight and step: a fraction of a percent of a 4-bit weight step of the embedded
# model (its W4 grid steps are ~0.01), so that tens of steps move the weights near a rounding
# boundary across it and leave the rest where round-to-nearest put them. Ten times more
# (2e-4) lowered the loss on the calls it trained on and raised it several times on the
# first sampling step's (the highest noise, whose error the solver amplifies most); chosen on
# captions that are not the evaluation ones (tests/test_qat.py's).
LEARNING_RATE = 2e-5


# The calls the loss before and after fine-tuning is measured on: enough to span the timesteps,
# few enough that measuring costs a fraction of the training (a forward each, twice).
EVALUATION_CALLS = 8


@dataclass
class TeacherCall:
    """One drawn call of the full-precision denoiser: its inputs (on the CPU) and output."""

    index: int  # its position among the calls of the calibration generation
    args: tuple
    kwargs: dict
    output: torch.Tensor


@dataclass
class Teacher:
    """The drawn calls, and for each fine-tuning step which of them it trains on."""

    calls: dict[int, TeacherCall]
    draws: list[int]
    seconds: float

    @property
    def steps(self) -> int:
        return len(self.draws)


def _map(value, fn):
    """``value`` with ``fn`` applied to every tensor inside tuples, lists and dicts."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_map(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map(v, fn) for k, v in value.items()}
    return value


def _first_tensor(output) -> torch.Tensor:
    """The prediction of a denoiser's output: a tensor, a tuple, or a diffusers output (``.sample``)."""
    if isinstance(output, torch.Tensor):
        return output
    return output[0]


@torch.no_grad()
def record_teacher(model, captions: Sequence[str], steps: int, qat_steps: int, seed: int = 0,
                   guidance_scale: float | None = None, batch_size: int = 16) -> Teacher:
    """Generate ``captions`` (the calibration captions; caption i from seed + i) at full
    precision, and keep the denoiser calls that ``qat_steps`` seeded draws pick."""
    if model.is_quantized:
        raise RuntimeError("the teacher is the full-precision model: restore() it first")
    if isinstance(qat_steps, bool) or not isinstance(qat_steps, int) or qat_steps < 1:
        raise UserError(f"fine-tuning needs a positive number of steps, got {qat_steps!r}")
    captions = list(captions)
    total = -(-len(captions) // batch_size) * steps  # one call per step per batch of captions
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(total, (qat_steps,), generator=generator).tolist()
    wanted, calls, seen = set(draws), {}, [0]
    tick = time.perf_counter()

    def keep(_module, args, kwargs, output):
        index = seen[0]
        seen[0] += 1
        if index in wanted:
            cpu = lambda t: t.detach().to("cpu", copy=True)  # noqa: E731
            calls[index] = TeacherCall(index, _map(args, cpu), _map(kwargs, cpu), cpu(_first_tensor(output)))

    handle = model.transformer.register_forward_hook(keep, with_kwargs=True)
    try:
        model.generate(captions, caption_seeds(len(captions), seed), steps=steps, batch_size=batch_size,
                       guidance_scale=guidance_scale)
    finally:
        handle.remove()
    if seen[0] != total:
        raise RuntimeError(f"quantization-aware fine-tuning expects one denoiser call per step per batch of "
                           f"captions ({total}); {type(model).__name__} made {seen[0]}")
    return Teacher(calls, draws, time.perf_counter() - tick)


def relative_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The loss: squared error over the target's power (1 / linear SQNR) of one call."""
    target = target.float()
    return (output.float() - target).pow(2).mean() / target.pow(2).mean().clamp(min=1e-12)


def _trainable(quantization) -> tuple[list[tuple[TransformedLinear, torch.Tensor]], list[str]]:
    """Per quantized group: the harness's ``TransformedLinear`` (a linear group's module, or a
    convolution's taps) with the group's stacked original weights; and the groups whose module
    is a transform's own (SVDQuant's branch, STaMP, a plugin's), which stay as quantized."""
    originals = {group.name: group for group in quantization.groups}
    trainable, untouched = [], []
    for name, module in quantization.modules.items():
        core = module if type(module) is TransformedLinear else getattr(module, "taps", None)
        if type(core) is not TransformedLinear:
            untouched.append(name)
            continue
        trainable.append((core, torch.cat([linear.weight.detach() for _, linear in originals[name].linears])))
    return trainable, untouched


def _loss(model, call: TeacherCall, device) -> torch.Tensor:
    to_device = lambda t: t.to(device)  # noqa: E731
    output = _first_tensor(model.transformer(*_map(call.args, to_device), **_map(call.kwargs, to_device)))
    return relative_error(output, call.output.to(device))


def loss_calls(teacher: Teacher) -> list[int]:
    """At most ``EVALUATION_CALLS`` of the drawn calls, spread over the generation's order (so
    over the timesteps): where the loss is measured before and after fine-tuning."""
    drawn = sorted(teacher.calls)
    return drawn[::max(1, -(-len(drawn) // EVALUATION_CALLS))]


def _mean_loss(model, teacher: Teacher, device) -> float:
    """The loss over ``loss_calls``, each once."""
    chosen = loss_calls(teacher)
    with torch.no_grad():
        return sum(_loss(model, teacher.calls[i], device).item() for i in chosen) / len(chosen)


def finetune(model, teacher: Teacher, learning_rate: float = LEARNING_RATE, label: str = "qat") -> dict:
    """Fine-tune the model's active quantization on the teacher's draws, one per step (Adam,
    ``learning_rate``); the trained weights are then quantized into the modules, which
    generate with them until the quantization is restored. Returns what the cell records."""
    quantization = model.quantization
    if quantization is None:
        raise RuntimeError("finetune needs a quantized model")
    device = next(model.transformer.parameters()).device
    trainable, untouched = _trainable(quantization)
    if untouched:
        get_logger("qat").warning(f"{label}: {len(untouched)} groups have a transform's own module, which "
                                  f"fine-tuning leaves as quantized (e.g. {untouched[0]})")
    kernels = [core.requested_kernel for core, _ in trainable]
    tick = time.perf_counter()
    losses = []
    try:
        latents = [core.train_weight(weight) for core, weight in trainable]
        for core, _ in trainable:
            core.use_kernel("torch")  # autograd: the torch path (the fused kernel has no backward)
        before = _mean_loss(model, teacher, device)
        optimizer = torch.optim.Adam(latents, lr=learning_rate) if latents else None
        with tqdm(teacher.draws, desc=f"{label} qat", unit="step", leave=False, file=sys.stderr,
                  disable=None if is_main_process() else True) as bar:
            for index in bar:
                with torch.enable_grad():
                    loss = _loss(model, teacher.calls[index], device)
                    if optimizer is not None:
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{losses[-1]:.4g}", refresh=False)
    finally:
        for (core, _), kernel in zip(trainable, kernels, strict=True):
            core.settle()
            core.use_kernel(kernel)
    after = _mean_loss(model, teacher, device)  # with the settled (quantized) weights
    return {"steps": teacher.steps, "learning_rate": learning_rate, "optimizer": "adam",
            "loss": "relative squared error of the denoiser output",
            "initial_loss": before, "final_loss": after, "loss_calls": len(loss_calls(teacher)),
            "step_losses": losses,
            "calls": len(teacher.calls), "trained_groups": len(trainable), "untrained_groups": untouched,
            "seconds": time.perf_counter() - tick}
