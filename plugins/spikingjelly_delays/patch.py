"""Patching SpikingJelly networks: which synapses get delays, and how the containers around them adapt."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from dclszoo.config import DelayConfig
from dclszoo.patching import replace_modules
from dclszoo.report import PatchReport

__all__ = ["is_spikingjelly_net", "patch_spikingjelly", "after_unpatch"]


def _sj():
    try:
        from spikingjelly.activation_based import base, functional, layer
    except ImportError:
        return None
    return base, functional, layer


def is_spikingjelly_net(model: nn.Module) -> bool:
    """True if spikingjelly is importable and ``model`` contains a SpikingJelly ``StepModule``."""
    sj = _sj()
    return sj is not None and any(isinstance(m, sj[0].StepModule) for m in model.modules())


def _invalidate(model: nn.Module) -> None:
    functional = _sj()[1]
    if hasattr(functional, "invalidate_reset_cache"):
        functional.invalidate_reset_cache(model)


def patch_spikingjelly(model: nn.Module, config: DelayConfig,
                       filter_fn: Callable[[nn.Module, str], bool] | None = None) -> PatchReport:
    """Replace the target synapses of a SpikingJelly network by delay synapses (see the package docstring).

    Synapses replaced: ``layer.Linear`` (and ``nn.Linear`` directly inside ``layer.SeqToANNContainer``) for
    target ``"linear"``; ``layer.Conv1d/2d`` (and ``nn.Conv1d/2d`` inside ``SeqToANNContainer``) for
    ``"conv"``. Bare ``nn.Linear``/``nn.Conv`` elsewhere are left alone: outside a SpikingJelly container they
    do not see a time axis. Weights are kept, delays start at 0 in integer mode (same function), step modes
    are kept; ``reset_net``'s module cache is invalidated.
    """
    from .modules import DelaySeqToANNContainer, SJDelayedConv1d, SJDelayedConv2d, SJDelayedLinear

    base, functional, layer = _sj()
    in_container: dict[int, nn.Module] = {}
    for m in model.modules():
        if isinstance(m, layer.SeqToANNContainer):
            for child in m.children():
                in_container[id(child)] = m
    kinds = []
    if "linear" in config.targets:
        kinds.append((nn.Linear, layer.Linear, SJDelayedLinear.from_linear))
    if "conv" in config.targets:
        kinds.append((nn.Conv1d, layer.Conv1d, SJDelayedConv1d.from_conv))
        kinds.append((nn.Conv2d, layer.Conv2d, SJDelayedConv2d.from_conv))
    touched: list[nn.Module] = []

    def make(module: nn.Module, fqn: str) -> nn.Module | None:
        for torch_cls, sj_cls, build in kinds:
            if type(module) is sj_cls:
                step_mode, sj_layer = module.step_mode, True
            elif type(module) is torch_cls and id(module) in in_container:
                step_mode, sj_layer = "m", False
                touched.append(in_container[id(module)])
            else:
                continue
            try:
                new = build(module, config.max_delay, kernel_count=config.kernel_count, step_mode=step_mode)
            except (ValueError, TypeError) as exc:
                raise type(exc)(f"{fqn}: {exc}") from exc
            new.sj_layer = sj_layer
            return new
        return None

    report = replace_modules(model, make, filter_fn, plugin="spikingjelly")
    for container in touched:
        if type(container) is layer.SeqToANNContainer:
            container.__class__ = DelaySeqToANNContainer
    _invalidate(model)
    return report


def after_unpatch(model: nn.Module) -> None:
    """Turn ``DelaySeqToANNContainer`` s back into ``SeqToANNContainer`` s; invalidate ``reset_net``'s cache."""
    sj = _sj()
    if sj is None:
        return
    layer = sj[2]
    from .modules import DelaySeqToANNContainer

    for m in model.modules():
        if type(m) is DelaySeqToANNContainer:
            m.__class__ = layer.SeqToANNContainer
    _invalidate(model)
