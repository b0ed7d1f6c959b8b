"""Fine-tuning patched models (plain loops, accelerate, DDP): optimizer groups, schedules, clamping, finalisation.

- :func:`param_groups`: weights with weight decay; biases and normalisation without; DCLS positions and sigma
  at ``position_lr_scale`` x the learning rate, each delay module's delays in a group of their own whose rate
  :class:`SigmaSchedule` drives when given the optimizer; none of them with weight decay.
- :class:`SigmaSchedule` (the delay issue's schedule, re-exported), :func:`integer_delays`, :func:`round_delays`.
- **Clamping is automatic**: every ``optimizer.step()`` of any optimizer clamps the stored positions and delays
  of every live dclszoo module (a global step post-hook, :mod:`dclszoo.modules._clamp`), so it works unchanged
  through accelerate's ``AcceleratedOptimizer`` (which skips the inner step, and with it the clamp, on gradient
  accumulation steps), GradScaler and DDP. :func:`clamp_parameters` does it by hand (after editing tensors).
- :func:`finalize`: clamp, round delays, freeze sigma, optionally convert DCLS layers to plain torch ones.
- :class:`Progress`: a step/epoch counter with ``state_dict`` / ``load_state_dict``. Register it, and the sigma
  schedule, with ``accelerator.register_for_checkpointing(progress, schedule)``: ``save_state`` /
  ``load_state`` then resume exactly (the model, optimizer, LR scheduler, RNG and ``accelerator.step`` are
  saved by accelerate itself).
- :func:`needs_find_unused_parameters`: DDP must be told about parameters that get no gradient (delays in
  integer mode: before the Gaussian phase, or in a schedule's hard phase).

Distributed training: patch the model **before** building the optimizer and before ``accelerator.prepare``
(the replaced dense weights are gone, so DDP sees no unused parameter). FSDP (v1) needs
``use_orig_params=True`` for the separate position / delay groups (``FullyShardedDataParallelPlugin(
use_orig_params=True)``, or ``fsdp_use_orig_params: true`` in the accelerate config).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from .api import to_dense
from .delays_training import (DELAY_LR_PER_SIGMA, NORM_TYPES, SigmaSchedule, delay_groups, delay_modules,
                              integer_delays, round_delays)
from .modules import DclsConvNd
from .modules._delay_base import DelayedSynapse
from .patching import replace_modules

__all__ = ["param_groups", "SigmaSchedule", "integer_delays", "round_delays", "clamp_parameters", "finalize",
           "Progress", "needs_find_unused_parameters", "POSITION_LR_SCALE", "DELAY_LR_SCALE", "DELAY_LR_PER_SIGMA"]

POSITION_LR_SCALE = 5.0
"""DCLS recipe (ConvNeXt-dcls, DCLS-Audio): positions at 5x the base learning rate."""
DELAY_LR_SCALE = 100.0
"""SNN-delays' delay learning rate: 100x the base learning rate (Adam 1e-3 -> 0.1). Not the default: dclszoo's
delays learn at ``DELAY_LR_PER_SIGMA`` x sigma (``docs/timing_task.md``); pass ``delay_lr_scale=DELAY_LR_SCALE``
for the reference's constant rate."""

_NORMS = NORM_TYPES + (nn.modules.normalization.RMSNorm,)


def _check_scale(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name}={value!r}: expected a positive number (a multiple of lr).")


def param_groups(model: nn.Module, lr: float, position_lr_scale: float = POSITION_LR_SCALE,
                 weight_decay: float = 0.0, *, delay_lr_scale: float | None = None,
                 no_decay_bias_and_norm: bool = True) -> list[dict]:
    """Optimizer parameter groups for a patched model (pass them to any ``torch.optim`` optimizer).

    Groups (empty ones left out), each with a ``name`` key:

    - ``"decay"``: other parameters, ``lr``, ``weight_decay``;
    - ``"no_decay"``: biases, normalisation layers and 1-D parameters (layer scales), ``lr``, no decay
      (when ``no_decay_bias_and_norm``);
    - ``"positions"``: DCLS tap positions and learnable sigma, ``lr * position_lr_scale``, no decay;
    - ``"delays"`` (one group per delay module): synaptic delays, no decay, at ``DELAY_LR_PER_SIGMA * sigma``
      (``delay_lr_scale=None``; give the optimizer to :class:`SigmaSchedule` and that rate follows sigma), or
      at ``lr * delay_lr_scale``.

    Shared parameters (positions shared across blocks) appear once. Frozen parameters are left out.

    Args:
        model: The model (unwrapped: build the groups before ``accelerator.prepare``).
        lr: Base learning rate.
        position_lr_scale: Learning-rate multiple of positions and sigma.
        weight_decay: Weight decay of the ``"decay"`` group.
        delay_lr_scale: None (the dclszoo recipe: the rate follows sigma), or a constant multiple of ``lr``
            (SNN-delays: ``DELAY_LR_SCALE`` = 100).
        no_decay_bias_and_norm: Exempt biases, norms and 1-D parameters from weight decay.

    Raises:
        ValueError: a non-positive ``lr`` or scale, or a negative ``weight_decay``.
    """
    _check_scale("lr", lr)
    _check_scale("position_lr_scale", position_lr_scale)
    if delay_lr_scale is not None:
        _check_scale("delay_lr_scale", delay_lr_scale)
    if not isinstance(weight_decay, (int, float)) or weight_decay < 0:
        raise ValueError(f"weight_decay={weight_decay!r}: expected a number >= 0.")
    kind: dict[int, str] = {}
    for m in model.modules():
        if isinstance(m, DclsConvNd):
            kind[id(m.positions)] = "positions"
            if isinstance(m.sigma, nn.Parameter):
                kind[id(m.sigma)] = "positions"
        elif isinstance(m, DelayedSynapse):
            kind[id(m.delays)] = "delays"
        if no_decay_bias_and_norm:
            for name, p in m.named_parameters(recurse=False):
                if id(p) not in kind and (name == "bias" or isinstance(m, _NORMS) or p.ndim <= 1):
                    kind[id(p)] = "no_decay"
    groups: dict[str, list] = {"decay": [], "no_decay": [], "positions": []}
    for p in model.parameters():
        if p.requires_grad and kind.get(id(p)) != "delays":
            groups[kind.get(id(p), "decay")].append(p)
    settings = {"decay": (lr, weight_decay), "no_decay": (lr, 0.0), "positions": (lr * position_lr_scale, 0.0)}
    out = [{"params": ps, "lr": settings[n][0], "weight_decay": settings[n][1], "name": n}
           for n, ps in groups.items() if ps]
    delay_lr = None if delay_lr_scale is None else lr * delay_lr_scale
    return out + [{**g, "name": "delays"} for g in delay_groups(model, delay_lr, trainable_only=True)]


def clamp_parameters(model: nn.Module) -> int:
    """Clamp the stored positions / delays of every dclszoo module of ``model`` into range; returns the count.

    Not needed after ``optimizer.step()`` (done automatically); useful after editing tensors by hand.
    """
    mods = [m for m in model.modules() if callable(getattr(m, "clamp_parameters", None))
            and getattr(type(m), "dclszoo_patched", False)]
    for m in mods:
        m.clamp_parameters()
    return len(mods)


def finalize(model: nn.Module, *, round_delays: bool = True, freeze_sigma: bool = True,
             dense: bool = False) -> nn.Module:
    """Make a trained model ready for evaluation and export.

    Clamps positions and delays; rounds delays to integers (integer mode, sigma 0: what neuromorphic
    hardware and :func:`dclszoo.delays_export.export_delays` need); freezes learnable DCLS sigma
    (``requires_grad=False``; its value is kept); with ``dense=True`` replaces the DCLS convolutions by plain
    torch convolutions (same outputs; :func:`dclszoo.to_dense` when there is nothing else). Delay synapses stay:
    a delayed synapse has no plain torch equivalent (export it with :mod:`dclszoo.delays_export`).

    Args:
        model: The trained model, unwrapped (``accelerator.unwrap_model(model)``).
        round_delays: Round the delays (skip to keep Gaussian delays).
        freeze_sigma: Stop training sigma.
        dense: Convert the DCLS convolutions to plain torch ones.

    Returns:
        ``model`` (a new module only if ``model`` itself is a dclszoo module and ``dense``).
    """
    clamp_parameters(model)
    delays = delay_modules(model)
    if round_delays:
        for m in delays:
            m.round_delays()
    if freeze_sigma:
        for m in model.modules():
            if isinstance(m, DclsConvNd) and isinstance(m.sigma, nn.Parameter):
                m.sigma.requires_grad_(False)
    if not dense:
        return model
    if not delays:  # a bare DCLS module included: to_dense returns its replacement
        return to_dense(model)
    replace_modules(model, lambda m, fqn: m.to_dense() if isinstance(m, DclsConvNd) else None, plugin="finalize")
    return model


class Progress:
    """Where training is: optimizer steps, epoch and batch within the epoch (checkpointable).

    Attributes:
        step: Optimizer steps taken.
        epoch: Current epoch.
        batch: Batches (micro-batches) consumed in the current epoch (for ``accelerator.skip_first_batches``).
    """

    def __init__(self) -> None:
        self.step = self.epoch = self.batch = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step, self.epoch, self.batch = int(state["step"]), int(state["epoch"]), int(state["batch"])

    def __repr__(self) -> str:
        return f"Progress(step={self.step}, epoch={self.epoch}, batch={self.batch})"


def needs_find_unused_parameters(model: nn.Module, schedule: SigmaSchedule | None = None) -> bool:
    """Whether DDP needs ``find_unused_parameters=True`` for this model.

    True when a trainable delay gets no gradient at some point: a delay module in integer mode now (sigma 0,
    e.g. just patched and no schedule started), or a schedule with a hard (integer) phase. Use it as
    ``DistributedDataParallelKwargs(find_unused_parameters=needs_find_unused_parameters(model, schedule))``.
    """
    mods = [m for m in delay_modules(model) if m.delays.requires_grad]
    if not mods:
        return False
    return any(m.integer_mode for m in mods) or (schedule is not None and schedule.hard_fraction > 0)
