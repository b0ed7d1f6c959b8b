"""Keeping learnable positions inside their span without any call from the user.

Two mechanisms: a straight-through clamp in the forward (values clamped, gradient identity, so a tap at the
border still gets a gradient and can move back in), and one global optimizer step post-hook that clamps the
stored positions of every live module after every ``optimizer.step()`` (any optimizer, any wrapper).
"""

from __future__ import annotations

import weakref
from typing import Sequence

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

_LIVE_MODULES: "weakref.WeakSet" = weakref.WeakSet()
"""Modules with a ``clamp_parameters()`` method, clamped after every optimizer step."""
_STEP_HOOK = None


def _clamp_after_step(optimizer, args, kwargs) -> None:
    """Global optimizer step post-hook: every live module clamps its stored positions."""
    for module in list(_LIVE_MODULES):
        module.clamp_parameters()


def _install_step_hook() -> None:
    """Register :func:`_clamp_after_step` once per process."""
    global _STEP_HOOK
    if _STEP_HOOK is None:
        _STEP_HOOK = register_optimizer_step_post_hook(_clamp_after_step)


def _grid_bounds(span: Sequence[int]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Kernel-centred coordinates of the first and last grid point per axis (centre ``span // 2``)."""
    return tuple(float(-(s // 2)) for s in span), tuple(float(s - 1 - s // 2) for s in span)


def _straight_through_clamp(x: torch.Tensor, lo: Sequence[float], hi: Sequence[float]) -> torch.Tensor:
    """Clamp axis ``d`` of ``x`` to ``[lo[d], hi[d]]`` in value, identity in gradient (no dead zone at the border)."""
    if len(set(lo)) == 1 and len(set(hi)) == 1:
        clamped = x.clamp(lo[0], hi[0])
    else:
        clamped = torch.stack([x[d].clamp(lo[d], hi[d]) for d in range(x.shape[0])])
    return x + (clamped - x).detach()
