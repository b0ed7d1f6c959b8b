"""The training loop the ``dclszoo finetune`` recipes share: accelerate, dclszoo's parameter groups, a progress bar.

A recipe supplies the model, the data and a ``loss(model, batch)`` function; :func:`fit` does the rest:
``param_groups`` (positions / delays at their own learning rate, no weight decay), AdamW, one-cycle schedule,
``accelerator.prepare``, the loop with a tqdm bar (clamping is automatic after every optimizer step), an optional
per-epoch callback (a sigma schedule), and returns the unwrapped model.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ._cli_common import CliError

__all__ = ["TrainSettings", "fit", "evaluate", "make_accelerator", "MAX_STEPS_ENV"]

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
    extra: dict = field(default_factory=dict)


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


def fit(model: torch.nn.Module, dataset, loss_fn: Callable, settings: TrainSettings, accelerator, desc: str,
        on_epoch: Callable[[int], None] | None = None, position_lr_scale: float | None = None) -> tuple:
    """Train ``model`` on ``dataset`` (a map-style dataset of tuples); returns ``(model, stats)``.

    ``stats``: ``steps``, ``seconds``, ``final_loss``.
    """
    from tqdm.auto import tqdm

    from .training import param_groups

    kwargs = {} if position_lr_scale is None else {"position_lr_scale": position_lr_scale}
    optimizer = torch.optim.AdamW(param_groups(model, lr=settings.lr, weight_decay=settings.weight_decay, **kwargs))
    loader = torch.utils.data.DataLoader(dataset, batch_size=settings.batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(settings.seed))
    per_epoch = len(loader)
    if per_epoch == 0:
        raise CliError(f"{len(dataset)} training samples are fewer than one batch of {settings.batch_size}.")
    total = settings.epochs * per_epoch
    if settings.max_steps is not None:
        total = min(total, settings.max_steps)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total * accelerator.num_processes + 1,
        pct_start=0.15)
    model, optimizer, loader, schedule = accelerator.prepare(model, optimizer, loader, schedule)
    bar = tqdm(total=total, desc=desc, disable=not settings.progress or not accelerator.is_local_main_process,
               dynamic_ncols=True, leave=True)
    step, loss_value, began = 0, math.nan, time.perf_counter()
    model.train()
    for epoch in range(math.ceil(total / per_epoch)):
        for batch in loader:
            loss = loss_fn(model, batch)
            accelerator.backward(loss)
            optimizer.step()
            schedule.step()
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
        if step >= total:
            break
    bar.close()
    stats = {"steps": step, "seconds": time.perf_counter() - began, "final_loss": loss_value}
    return accelerator.unwrap_model(model), stats


@torch.no_grad()
def evaluate(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor, forward: Callable,
             batch_size: int = 256) -> tuple[float, torch.Tensor]:
    """Accuracy of ``forward(model, x) -> logits`` over ``inputs`` (batched on dim 0); returns (accuracy, logits)."""
    model.eval()
    device = next(model.parameters()).device
    logits = torch.cat([forward(model, inputs[i:i + batch_size].to(device)).float().cpu()
                        for i in range(0, len(inputs), batch_size)])
    return float((logits.argmax(-1) == labels).float().mean()), logits
