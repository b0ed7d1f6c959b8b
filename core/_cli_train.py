"""The training loop the ``dclszoo finetune`` recipes share: accelerate, dclszoo's parameter groups, a progress bar.

A recipe supplies the model, the data and a ``loss(model, batch)`` function; :func:`fit` does the rest:
``param_groups`` (positions at their own learning rate, no weight decay; or the recipe's groups), AdamW, warm-up
and cosine decay of the learning rate (not of the delays', which their sigma schedule drives),
``accelerator.prepare``, the loop with a tqdm bar (clamping is automatic after every optimizer step), an optional
per-epoch callback (a sigma schedule), and returns the unwrapped model.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch

from ._cli_common import CliError

__all__ = ["TrainSettings", "fit", "evaluate", "lr_factor", "choose_threads", "make_accelerator", "max_steps_default",
           "MAX_STEPS_ENV"]

WARMUP = 0.15
"""Fraction of the steps spent warming the learning rate up."""
MAX_STEPS_ENV = "DCLSZOO_FINETUNE_MAX_STEPS"
"""Default of ``--max-steps`` (for tests and smoke runs: caps every training run of a recipe)."""


@dataclass
class TrainSettings:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.05
    max_steps: int | None = None
    progress: bool = True
    seed: int = 0

    @classmethod
    def from_args(cls, args, defaults: dict, weight_decay: float) -> "TrainSettings":
        """The command line's ``--epochs`` / ``--batch-size`` / ``--lr`` over the recipe's ``defaults``."""
        return cls(epochs=args.epochs or defaults["epochs"], batch_size=args.batch_size or defaults["batch_size"],
                   lr=args.lr or defaults["lr"], weight_decay=weight_decay, max_steps=args.max_steps,
                   progress=not args.no_progress, seed=args.seed)


def max_steps_default() -> int | None:
    value = os.environ.get(MAX_STEPS_ENV)
    if value in (None, ""):
        return None
    try:
        steps = int(value)
    except ValueError:
        raise CliError(f"${MAX_STEPS_ENV}={value!r}: expected a positive int.") from None
    if steps < 1:
        raise CliError(f"${MAX_STEPS_ENV}={value!r}: expected a positive int.")
    return steps


def choose_threads(requested: int | None) -> tuple[int, str]:
    """Intra-op CPU threads: ``requested``, or torch's default reduced to the cores other processes leave idle.

    On a shared machine, OpenMP threads that wait for a busy core spin: with 2 threads on 2 cores that are already
    loaded, the digits recipe measured ~4x slower than with 1 thread. ``auto`` reads the 1-minute load average.
    """
    default = torch.get_num_threads()
    if requested is not None:
        return requested, "--threads"
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        return default, "torch default"
    cores = os.cpu_count() or default
    free = max(1, min(default, int(cores - load + 0.5)))
    if free < default:
        return free, f"the 1-minute load average is {load:.1f} on {cores} cores; --threads overrides"
    return default, "torch default"


def make_accelerator(cpu: bool, mixed_precision: str):
    from ._cli_common import require

    accelerate = require("accelerate", "dclszoo finetune")
    return accelerate.Accelerator(cpu=cpu, mixed_precision=mixed_precision)


def lr_factor(step: int, total: int, warmup: float = WARMUP) -> float:
    """Linear warm-up from 1/25 of the learning rate over ``warmup`` of the steps, then cosine decay to 0."""
    ramp = max(1, round(warmup * total))
    if step < ramp:
        return (1 + 24 * step / ramp) / 25
    return 0.5 * (1 + math.cos(math.pi * (step - ramp) / max(1, total - ramp)))


def fit(model: torch.nn.Module, dataset, loss_fn: Callable, settings: TrainSettings, accelerator, desc: str, *,
        on_start: Callable | None = None) -> tuple:
    """Train ``model`` on ``dataset`` (a map-style dataset of tuples); returns ``(model, stats)``.

    Args:
        on_start: ``on_start(optimizer, epochs) -> on_epoch`` called once the number of epochs is known; the
            returned ``on_epoch(epoch)`` (or None) runs after every epoch (a sigma schedule).

    The learning rate of every group warms up and decays (:func:`lr_factor`), except groups holding synaptic
    delays: their rate is the delay schedule's (``SigmaSchedule`` given the optimizer), or constant.
    ``stats``: ``steps``, ``seconds``, ``final_loss``.
    """
    from tqdm.auto import tqdm

    from .training import param_groups

    optimizer = torch.optim.AdamW(param_groups(model, lr=settings.lr, weight_decay=settings.weight_decay))
    scheduled = [(g, g["lr"]) for g in optimizer.param_groups if g["name"] != "delays"]
    loader = torch.utils.data.DataLoader(dataset, batch_size=settings.batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(settings.seed))
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    per_epoch = len(loader)
    if per_epoch == 0:
        raise CliError(f"{len(dataset)} training samples are fewer than one batch of {settings.batch_size}.")
    total = settings.epochs * per_epoch
    if settings.max_steps is not None:
        total = min(total, settings.max_steps)
    epochs = math.ceil(total / per_epoch)
    on_epoch = on_start(optimizer, epochs) if on_start is not None else None
    bar = tqdm(total=total, desc=desc, disable=not settings.progress or not accelerator.is_local_main_process,
               dynamic_ncols=True, leave=True)
    step, loss_value, began = 0, math.nan, time.perf_counter()
    model.train()
    for epoch in range(epochs):
        for batch in loader:
            for group, lr in scheduled:
                group["lr"] = lr * lr_factor(step, total)
            loss = loss_fn(model, batch)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                bar.close()
                raise CliError(f"{desc}: the loss is {loss_value} at step {step}; lower --lr.")
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", epoch=epoch + 1)
            if step >= total:
                break
        if on_epoch is not None:
            on_epoch(epoch + 1)
    bar.close()
    stats = {"steps": step, "seconds": time.perf_counter() - began, "final_loss": loss_value}
    return accelerator.unwrap_model(model), stats


def reload_report(directory, reloaded: torch.nn.Module, logits: torch.Tensor, inputs: torch.Tensor,
                  labels: torch.Tensor, forward: Callable, batch_size: int = 256) -> dict:
    """The ``reload`` entry of a recipe's results: ``reloaded`` evaluated as the trained model was, and how far its
    logits are from the trained model's ``logits``."""
    accuracy, new_logits = evaluate(reloaded, inputs, labels, forward, batch_size)
    return {"directory": str(directory), "max_abs_logit_diff": float((new_logits - logits).abs().max()),
            "test_accuracy": accuracy}


@torch.no_grad()
def evaluate(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor, forward: Callable,
             batch_size: int = 256) -> tuple[float, torch.Tensor]:
    """Accuracy of ``forward(model, x) -> logits`` over ``inputs`` (batched on dim 0); returns (accuracy, logits)."""
    model.eval()
    device = next(model.parameters()).device
    logits = torch.cat([forward(model, inputs[i:i + batch_size].to(device)).float().cpu()
                        for i in range(0, len(inputs), batch_size)])
    return float((logits.argmax(-1) == labels).float().mean()), logits
