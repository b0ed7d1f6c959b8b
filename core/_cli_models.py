"""Models the ``dclszoo finetune`` recipes build that no zoo registry can rebuild, as registered builders.

A checkpoint of such a model stores the builder's name and arguments (:func:`dclszoo.hub.register_builder`);
``dclszoo inspect`` / ``export`` import this module before loading, so the CLI's own checkpoints always reload.
In your own code: ``import dclszoo._cli_models`` before ``dclszoo.from_pretrained(<dir>)``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .hub import register_builder

__all__ = ["TimingSNN", "timing_snn"]


class TimingSNN(nn.Module):
    """Synapses -> LIF neurons -> linear readout summed over time (SNN-delays' block, one hidden layer).

    Input: spikes ``[T, N, channels]`` (SpikingJelly multi-step layout). Output: logits ``[N, classes]``. The
    network state is reset at the start of every forward, so calls are independent.
    """

    def __init__(self, channels: int, hidden: int, classes: int, tau: float = 1.01) -> None:
        super().__init__()
        from spikingjelly.activation_based import layer, neuron, surrogate

        self.synapses = layer.Linear(channels, hidden, step_mode="m")
        self.lif = neuron.LIFNode(tau=tau, decay_input=False, v_threshold=1.0,
                                  surrogate_function=surrogate.ATan(alpha=5.0), detach_reset=True, step_mode="m")
        self.readout = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from spikingjelly.activation_based import functional

        functional.reset_net(self)
        return self.readout(self.lif(self.synapses(x))).sum(0)


@register_builder(name="dclszoo.cli.timing_snn")
def timing_snn(channels: int = 8, hidden: int = 8, classes: int = 4, tau: float = 1.01) -> TimingSNN:
    """The timing-task network of ``dclszoo finetune --recipe delays`` (unpatched: no delays yet)."""
    return TimingSNN(channels, hidden, classes, tau)
