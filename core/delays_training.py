"""Training learnable delays as in SNN-delays, without a hand-written loop.

- :class:`SigmaSchedule`: sigma starts wide (``max_delay // 2``) and decays exponentially to a floor (0.5 by
  default, SNN-delays' effective ``0.23 + 0.27``) over a chosen fraction of training, then stays; an optional
  final **hard phase** rounds the delays and trains the weights with integer delays. It has
  ``state_dict``/``load_state_dict`` (``accelerator.register_for_checkpointing(schedule)`` works).
- :func:`integer_delays`: a context manager that evaluates with integer delays (SNN-delays' rounding
  evaluation, without their temporary checkpoint file); :func:`round_delays` rounds them for good.
- :func:`delay_param_groups`: optimizer groups with delays at their own learning rate and no weight decay.

Delay clamping needs nothing from you: every optimizer step clamps the delays of live delay modules.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch.nn as nn

from .modules._delay_base import DelayedSynapse

__all__ = ["SigmaSchedule", "delay_modules", "integer_delays", "round_delays", "delay_param_groups"]


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
    """Sets ``sigma`` of every delay module of ``model``: exponential decay, floor, optional hard phase.

    With ``n`` = ``decay_fraction * total_steps`` and per-module start ``s0``:
    ``sigma(step) = s0 * (floor / s0) ** (step / n)`` for ``step < n``, then ``floor``; from
    ``(1 - hard_fraction) * total_steps`` on, the delays are rounded in place and sigma is 0 (integer delays,
    no delay gradient: only the weights train). Creating the schedule applies ``sigma(0)`` at once.

    Args:
        model: A model with delay modules.
        total_steps: Length of training in the unit you call :meth:`step` with (epochs or batches).
        decay_fraction: Fraction of ``total_steps`` over which sigma decays (SNN-delays: 0.25).
        start: Starting sigma; None = ``model.dclszoo_config.initial_sigma`` for patched models, else each
            module's ``max_delay // 2``.
        floor: Final sigma of the Gaussian phase (> 0).
        hard_fraction: Fraction of training at the end spent with integer delays (0 = none).
    """

    def __init__(self, model: nn.Module, total_steps: int, decay_fraction: float = 0.25, start: float | None = None,
                 floor: float = 0.5, hard_fraction: float = 0.0) -> None:
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
        self.total_steps, self.decay_fraction, self.hard_fraction = total_steps, float(decay_fraction), float(hard_fraction)
        self.start, self.floor = (None if start is None else float(start)), float(floor)
        self.step_count = 0
        self._apply()

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
            return
        for m in self.modules:
            m.set_sigma(self.sigma_at(self.step_count, self._start_of(m)))

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
                "hard_fraction": self.hard_fraction, "start": self.start, "floor": self.floor}

    def load_state_dict(self, state: dict) -> None:
        """Restore the schedule (and re-apply its sigma to the modules)."""
        for key in ("total_steps", "decay_fraction", "hard_fraction", "start", "floor"):
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


def delay_param_groups(model: nn.Module, lr: float, delay_lr: float | None = None, weight_decay: float = 0.0,
                       no_decay_bias_and_norm: bool = True) -> list[dict]:
    """Optimizer parameter groups: weights at ``lr`` with ``weight_decay``; delays at ``delay_lr`` (default
    ``100 * lr``, as SNN-delays), without weight decay; biases and normalisation parameters without weight decay
    when ``no_decay_bias_and_norm``.

    Returns:
        A list of param-group dicts for ``torch.optim.*`` (empty groups are left out).
    """
    delays = {id(m.delays) for m in delay_modules(model)}
    norm_types = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    no_decay = set()
    if no_decay_bias_and_norm:
        for m in model.modules():
            for name, p in m.named_parameters(recurse=False):
                if name == "bias" or isinstance(m, norm_types):
                    no_decay.add(id(p))
    groups = {"decay": [], "no_decay": [], "delays": []}
    for p in model.parameters():
        key = "delays" if id(p) in delays else "no_decay" if id(p) in no_decay else "decay"
        groups[key].append(p)
    out = [
        {"params": groups["decay"], "lr": lr, "weight_decay": weight_decay},
        {"params": groups["no_decay"], "lr": lr, "weight_decay": 0.0},
        {"params": groups["delays"], "lr": 100 * lr if delay_lr is None else delay_lr, "weight_decay": 0.0},
    ]
    return [g for g in out if g["params"]]
