"""Training learnable delays (the SNN-delays recipe, with the changes measured in ``docs/timing_task.md``).

- :class:`SigmaSchedule`: sigma starts wide (``max_delay // 2``) and decays exponentially to a floor of 0.25
  over the first half of training, stays there, and the last 20% of training is a **hard phase**: the delays
  are rounded and the weights train with integer delays, so that what is evaluated is what was trained. Given
  the optimizer, it also sets the delays' learning rate to ``lr_per_sigma * sigma`` (Adam: a delay moves by at
  most about half the Gaussian's width per step, whatever ``max_delay``). It has
  ``state_dict``/``load_state_dict`` (``accelerator.register_for_checkpointing(schedule)`` works).
- :func:`integer_delays`: a context manager that evaluates with integer delays (SNN-delays' rounding
  evaluation, without their temporary checkpoint file); :func:`round_delays` rounds them for good.
- :func:`delay_param_groups`: optimizer groups with each module's delays in a group of their own, at the
  learning rate the schedule drives, without weight decay.

Delay clamping needs nothing from you: every optimizer step clamps the delays of live delay modules.

Typical loop (``total_steps`` counts what you call :meth:`SigmaSchedule.step` with, epochs or batches)::

    opt = torch.optim.Adam(delay_param_groups(net, lr=1e-2))
    sched = SigmaSchedule(net, total_steps=epochs, optimizer=opt)
    for epoch in range(epochs):
        ...  # forward, loss, backward, opt.step()
        sched.step()
    with integer_delays(net):
        ...  # evaluate

Versus SNN-delays (sigma ``max_delay // 2`` -> 0.5 over the first quarter, delays at a constant-then-cosine
Adam lr of 0.1, no hard phase, rounding only at evaluation): the floor is 0.25 instead of 0.5 (rounding from
sigma 0.5 cost 15-25 points of accuracy on the timing task), the decay takes half of training instead of a
quarter, the delay lr follows sigma instead of a fixed value (a fixed lr is too large once sigma is narrow,
and does not scale with ``max_delay``), and the hard phase is on by default.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch.nn as nn

from .modules._delay_base import DelayedSynapse

__all__ = ["SigmaSchedule", "delay_modules", "integer_delays", "round_delays", "delay_param_groups",
           "delay_groups", "DELAY_LR_PER_SIGMA"]

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
"""Normalisation layers whose parameters get no weight decay (``training.param_groups`` adds RMSNorm)."""

DELAY_LR_PER_SIGMA = 0.5
"""Delay learning rate per unit of sigma (time steps): with Adam, a delay's step is at most about ``lr``, so
``0.5 * sigma`` keeps each step within half the Gaussian's current width (measured best of 0.15 / 0.27 / 0.5 / 1.0
on the timing task)."""


def delay_modules(model: nn.Module) -> list[DelayedSynapse]:
    """Every delay synapse module (DelayedLinear, DelayedConv1d/2d) in ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, DelayedSynapse)]


def _require_delays(model: nn.Module, who: str) -> list[DelayedSynapse]:
    mods = delay_modules(model)
    if not mods:
        raise ValueError(
            f"{who}: {type(model).__name__} has no delay modules; build it with dclszoo.DelayedLinear or call "
            "dclszoo.patch(model, dclszoo.DelayConfig(max_delay=...)) first."
        )
    return mods


class SigmaSchedule:
    """Sets ``sigma`` of every delay module of ``model`` (exponential decay, floor, hard phase), and with
    ``optimizer`` the learning rate of the delays.

    With ``n`` = ``decay_fraction * total_steps`` and per-module start ``s0``:
    ``sigma(step) = s0 * (floor / s0) ** (step / n)`` for ``step < n``, then ``floor``; from
    ``(1 - hard_fraction) * total_steps`` on, the delays are rounded in place and sigma is 0 (integer delays,
    no delay gradient: only the weights train). Creating the schedule applies ``sigma(0)`` at once.

    With ``optimizer``, every param group holding delays gets ``lr = lr_per_sigma * sigma`` of its modules at
    each step (in the hard phase, the floor's value; the delays get no gradient there). The schedule then owns
    those groups' learning rate: do not put an LR scheduler on them. A group must hold delays only, all of
    modules that share one sigma (same start): :func:`delay_param_groups` builds such groups.

    Args:
        model: A model with delay modules.
        total_steps: Length of training in the unit you call :meth:`step` with (epochs or batches).
        decay_fraction: Fraction of ``total_steps`` over which sigma decays (SNN-delays: 0.25).
        start: Starting sigma; None = ``model.dclszoo_config.initial_sigma`` for patched models, else each
            module's ``max_delay // 2``.
        floor: Final sigma of the Gaussian phase (> 0; SNN-delays: 0.5).
        hard_fraction: Fraction of training at the end spent with integer delays (0 = none; SNN-delays: none).
        optimizer: The optimizer whose delay groups' learning rate follows sigma (None: leave it alone).
        lr_per_sigma: Delay learning rate per unit of sigma (used with ``optimizer``).

    Raises:
        ValueError: a bad argument, a model without delay modules, or (with ``optimizer``) a group mixing delays
            with other parameters or delays of modules on different sigmas, or no group holding delays.
    """

    def __init__(self, model: nn.Module, total_steps: int, decay_fraction: float = 0.5, start: float | None = None,
                 floor: float = 0.25, hard_fraction: float = 0.2, optimizer=None,
                 lr_per_sigma: float = DELAY_LR_PER_SIGMA) -> None:
        self.modules = _require_delays(model, "SigmaSchedule")
        if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps < 1:
            raise ValueError(f"total_steps={total_steps!r}: expected an int >= 1 (epochs or batches).")
        for name, value, lo, hi in (("decay_fraction", decay_fraction, 0.0, 1.0), ("hard_fraction", hard_fraction, 0.0, 1.0)):
            if not (isinstance(value, (int, float)) and lo <= value <= hi):
                raise ValueError(f"{name}={value!r}: expected a float in [{lo}, {hi}].")
        if decay_fraction + hard_fraction > 1.0:
            raise ValueError(f"decay_fraction={decay_fraction} + hard_fraction={hard_fraction} exceeds 1.")
        if not (isinstance(floor, (int, float)) and math.isfinite(floor) and floor > 0):
            raise ValueError(f"floor={floor!r}: expected a positive float (the final Gaussian std in steps).")
        if start is None and getattr(model, "dclszoo_config", None) is not None:
            start = getattr(model.dclszoo_config, "initial_sigma", None)
        if start is not None and not (isinstance(start, (int, float)) and math.isfinite(start) and start > 0):
            raise ValueError(f"start={start!r}: expected None or a positive float.")
        if not (isinstance(lr_per_sigma, (int, float)) and not isinstance(lr_per_sigma, bool)
                and math.isfinite(lr_per_sigma) and lr_per_sigma > 0):
            raise ValueError(f"lr_per_sigma={lr_per_sigma!r}: expected a positive float (delay lr per unit of sigma).")
        self.total_steps, self.decay_fraction, self.hard_fraction = total_steps, float(decay_fraction), float(hard_fraction)
        self.start, self.floor = (None if start is None else float(start)), float(floor)
        self.lr_per_sigma = float(lr_per_sigma)
        self.optimizer = optimizer
        self._groups = [] if optimizer is None else self._delay_groups(optimizer)
        self.step_count = 0
        self._apply()

    def _delay_groups(self, optimizer) -> list[tuple[int, DelayedSynapse]]:
        """``(group index, one of its modules)`` for every param group of ``optimizer`` that holds delays (indices,
        not the dicts: ``optimizer.load_state_dict`` replaces the dicts)."""
        owner = {id(m.delays): m for m in self.modules}
        groups = getattr(optimizer, "param_groups", None)
        if groups is None:
            raise ValueError(f"optimizer={type(optimizer).__name__}: expected a torch.optim optimizer (param_groups).")
        out = []
        for i, group in enumerate(groups):
            mods = [owner.get(id(p)) for p in group["params"]]
            if not any(m is not None for m in mods):
                continue
            if not all(m is not None for m in mods):
                raise ValueError(
                    f"SigmaSchedule(optimizer=...): param group {i} mixes delays with other parameters, so its "
                    "learning rate cannot follow sigma; build the groups with "
                    "dclszoo.delays_training.delay_param_groups(model, lr)."
                )
            starts = sorted({self._start_of(m) for m in mods})
            if len(starts) > 1:
                raise ValueError(
                    f"SigmaSchedule(optimizer=...): param group {i} holds delays of modules whose sigma starts at "
                    f"{starts} (different max_delay), so one learning rate cannot follow both; put each module's "
                    "delays in its own group (delay_param_groups does) or pass start=... to the schedule."
                )
            out.append((i, mods[0]))
        if not out:
            raise ValueError(
                "SigmaSchedule(optimizer=...): no param group of the optimizer holds the model's delays; build it "
                "with dclszoo.delays_training.delay_param_groups(model, lr)."
            )
        return out

    def _start_of(self, module: DelayedSynapse) -> float:
        return max(self.start if self.start is not None else float(module.max_delay // 2), self.floor)

    @property
    def hard_start(self) -> int:
        """First step of the hard (integer-delay) phase (``total_steps`` when there is none)."""
        return self.total_steps - int(round(self.hard_fraction * self.total_steps))

    @property
    def in_hard_phase(self) -> bool:
        return self.hard_fraction > 0 and self.step_count >= self.hard_start

    def sigma_at(self, step: int, start: float) -> float:
        """Sigma after ``step`` calls of :meth:`step`, for a module starting at ``start`` (0 in the hard phase)."""
        if self.hard_fraction > 0 and step >= self.hard_start:
            return 0.0
        n = self.decay_fraction * self.total_steps
        if n <= 0 or step >= n:
            return self.floor
        return start * (self.floor / start) ** (step / n)

    def _apply(self) -> None:
        if self.in_hard_phase:
            for m in self.modules:
                if not m.integer_mode:
                    m.round_delays()
        else:
            for m in self.modules:
                m.set_sigma(self.sigma_at(self.step_count, self._start_of(m)))
        for i, m in self._groups:
            self.optimizer.param_groups[i]["lr"] = self.lr_per_sigma * max(m._sigma_value, self.floor)

    def step(self) -> None:
        """Advance one unit (epoch or batch, as ``total_steps`` counts) and set sigma on every module."""
        self.step_count += 1
        self._apply()

    @property
    def sigma(self) -> float:
        """Current sigma of the first delay module."""
        return self.modules[0]._sigma_value

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "total_steps": self.total_steps, "decay_fraction": self.decay_fraction,
                "hard_fraction": self.hard_fraction, "start": self.start, "floor": self.floor,
                "lr_per_sigma": self.lr_per_sigma}

    def load_state_dict(self, state: dict) -> None:
        """Restore the schedule (and re-apply its sigma to the modules and its lr to the delay groups)."""
        for key in ("total_steps", "decay_fraction", "hard_fraction", "start", "floor", "lr_per_sigma"):
            if key in state:
                setattr(self, key, state[key])
        self.step_count = int(state["step_count"])
        self._apply()


@contextlib.contextmanager
def integer_delays(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` with integer (rounded) delays inside the block; sigma is restored afterwards.

    The stored delays are not modified (no temporary checkpoint needed): the forward rounds them.
    """
    mods = _require_delays(model, "integer_delays")
    saved = [m._sigma_value for m in mods]
    try:
        for m in mods:
            m.set_sigma(0.0)
        yield model
    finally:
        for m, s in zip(mods, saved):
            m.set_sigma(s)


def round_delays(model: nn.Module) -> None:
    """Round every delay of ``model`` in place and switch to integer mode (deployment, streaming, export)."""
    for m in _require_delays(model, "round_delays"):
        m.round_delays()


def delay_groups(model: nn.Module, lr: float | None = None, trainable_only: bool = False) -> list[dict]:
    """One optimizer param group per delay module (a Parameter shared by modules appears once), no weight decay.

    Args:
        model: A model with delay modules.
        lr: Constant learning rate of every group; None = ``DELAY_LR_PER_SIGMA * sigma`` of each module now, the
            rate :class:`SigmaSchedule` (given the optimizer) keeps following sigma.
        trainable_only: Leave out delays with ``requires_grad=False``.
    """
    out, seen = [], set()
    for m in delay_modules(model):
        if id(m.delays) in seen or (trainable_only and not m.delays.requires_grad):
            continue
        seen.add(id(m.delays))
        rate = DELAY_LR_PER_SIGMA * m._sigma_value if lr is None else lr
        out.append({"params": [m.delays], "lr": rate, "weight_decay": 0.0})
    return out


def delay_param_groups(model: nn.Module, lr: float, delay_lr: float | None = None, weight_decay: float = 0.0,
                       no_decay_bias_and_norm: bool = True) -> list[dict]:
    """Optimizer parameter groups: weights at ``lr`` with ``weight_decay``; biases and normalisation parameters
    without weight decay when ``no_decay_bias_and_norm``; delays without weight decay.

    Delays: with ``delay_lr=None`` (the default) each delay module's delays form a group of their own, at
    ``DELAY_LR_PER_SIGMA * sigma`` of that module now: pass the optimizer to :class:`SigmaSchedule`
    (``optimizer=``) and it keeps that learning rate following sigma. With a number, one group of all delays at
    that constant learning rate (SNN-delays: ``100 * lr``, then cosine-annealed).

    Returns:
        A list of param-group dicts for ``torch.optim.*`` (empty groups are left out).
    """
    delays = {id(m.delays) for m in delay_modules(model)}
    no_decay = set()
    if no_decay_bias_and_norm:
        for m in model.modules():
            for name, p in m.named_parameters(recurse=False):
                if name == "bias" or isinstance(m, NORM_TYPES):
                    no_decay.add(id(p))
    groups = {"decay": [], "no_decay": [], "delays": []}
    for p in model.parameters():
        groups["delays" if id(p) in delays else "no_decay" if id(p) in no_decay else "decay"].append(p)
    out = [
        {"params": groups["decay"], "lr": lr, "weight_decay": weight_decay},
        {"params": groups["no_decay"], "lr": lr, "weight_decay": 0.0},
    ]
    if delay_lr is not None:
        out.append({"params": groups["delays"], "lr": delay_lr, "weight_decay": 0.0})
    else:
        out += delay_groups(model)
    return [g for g in out if g["params"]]
