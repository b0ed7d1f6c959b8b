"""Models of the Hub tests, built by registered builders (importing this module registers them).

The offline-reload subprocess imports it too: a builder is found by name in the loading process, never by
importing what a checkpoint names.
"""

from __future__ import annotations

import torch
import torch.nn as nn

import dclszoo
from dclszoo.hub import register_builder


@register_builder(name="hubtest_cnn")
def small_cnn(channels: int = 8, classes: int = 3) -> nn.Module:
    """Dense stem, a depthwise 5x5 (patched to DCLS), batch norm, a linear head."""
    return nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1), nn.GELU(),
        nn.Conv2d(channels, channels, 5, padding=2, groups=channels), nn.BatchNorm2d(channels), nn.GELU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes),
    )


@register_builder(name="hubtest_snn")
def snn_delays_net(n_in: int = 12, hidden: int = 16, n_out: int = 5) -> nn.Module:
    """The SNN-delays layout: Linear -> BN -> LIF, a Linear in a SeqToANNContainer, a readout."""
    from spikingjelly.activation_based import layer, neuron, surrogate

    def lif():
        return neuron.LIFNode(tau=1.05, decay_input=False, surrogate_function=surrogate.ATan(5.0), detach_reset=True,
                              step_mode="m")

    return nn.Sequential(
        layer.Linear(n_in, hidden, bias=False, step_mode="m"), layer.BatchNorm1d(hidden, step_mode="m"), lif(),
        layer.SeqToANNContainer(nn.Linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden)), lif(),
        layer.Linear(hidden, n_out, step_mode="m"),
    )


def spikes(steps: int = 20, batch: int = 4, channels: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(steps, batch, channels, generator=g) < 0.4).float()


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Forward without gradients, resetting SpikingJelly state first."""
    if any(type(m).__module__.startswith("spikingjelly") for m in model.modules()):
        from spikingjelly.activation_based import functional

        functional.reset_net(model)
    with torch.no_grad():
        return model(x)


@torch.no_grad()
def perturb(model: nn.Module, seed: int = 1) -> nn.Module:
    """Change every tensor the way training would (positions off the grid, sigma, delays, weights, BN stats)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, dclszoo.DclsConvNd):
            m.positions.add_(torch.rand(m.positions.shape, generator=g) - 0.5)
            if m.sigma is not None:
                m.sigma.mul_(1 + torch.rand(m.sigma.shape, generator=g))
        if hasattr(m, "delays") and getattr(type(m), "dclszoo_patched", False):
            m.delays.copy_(torch.rand(m.delays.shape, generator=g) * (m.max_delay - 1))
            m.set_sigma(1.5)
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
            m.running_mean.add_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.mul_(1 + torch.rand(m.running_var.shape, generator=g))
    for p in model.parameters():
        p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype))
    for m in model.modules():
        if getattr(type(m), "dclszoo_patched", False) and hasattr(m, "clamp_parameters"):
            m.clamp_parameters()
    return model.eval()
