"""SpikingJelly flavours of the delay synapses and of ``SeqToANNContainer`` (imports spikingjelly).

The core classes (:class:`dclszoo.DelayedLinear`, ...) are plain ``nn.Module`` s so that ``import dclszoo`` does
not import spikingjelly. Here they additionally inherit ``base.MemoryModule``, which makes them first-class
SpikingJelly stateful modules: ``functional.reset_net`` resets their streaming history without a warning,
``functional.set_step_mode`` validates their step mode, and ``to_dense()`` gives back the SpikingJelly layer
(``layer.Linear`` / ``layer.Conv2d`` with the same step mode) when they replaced one.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from spikingjelly.activation_based import base, functional, layer

from dclszoo.modules import DelayedConv1d, DelayedConv2d, DelayedLinear
from dclszoo.modules._delay_base import DelayedSynapse

__all__ = ["SJDelayedLinear", "SJDelayedConv1d", "SJDelayedConv2d", "DelaySeqToANNContainer", "SJ_CLASSES"]


def _conv_args(conv: nn.Module) -> dict:
    return {"in_channels": conv.in_channels, "out_channels": conv.out_channels, "kernel_size": conv.kernel_size,
            "stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation, "groups": conv.groups}


class _SJMixin:
    """Shared by the SpikingJelly delay synapses: ``sj_layer`` = replaced a ``layer.*`` (not a bare ``nn.*``)."""

    sj_layer: bool = True

    def _sj_dense(self, dense: nn.Module, sj_cls: type, **ctor) -> nn.Module:
        """``dense`` itself for a bare torch synapse, else the equivalent ``sj_cls`` with the same step mode."""
        if not self.sj_layer:
            return dense
        out = sj_cls(**ctor, bias=dense.bias is not None, step_mode=self.step_mode)
        out.to(device=dense.weight.device, dtype=dense.weight.dtype).load_state_dict(dense.state_dict())
        return out


class SJDelayedLinear(_SJMixin, DelayedLinear, base.MemoryModule):
    """:class:`dclszoo.DelayedLinear` that is also a SpikingJelly ``MemoryModule``."""

    def to_dense(self) -> nn.Module:
        d = super().to_dense()
        return self._sj_dense(d, layer.Linear, in_features=d.in_features, out_features=d.out_features)


class SJDelayedConv1d(_SJMixin, DelayedConv1d, base.MemoryModule):
    """:class:`dclszoo.DelayedConv1d` that is also a SpikingJelly ``MemoryModule``."""

    def to_dense(self) -> nn.Module:
        d = super().to_dense()
        return self._sj_dense(d, layer.Conv1d, **_conv_args(d))


class SJDelayedConv2d(_SJMixin, DelayedConv2d, base.MemoryModule):
    """:class:`dclszoo.DelayedConv2d` that is also a SpikingJelly ``MemoryModule``."""

    def to_dense(self) -> nn.Module:
        d = super().to_dense()
        return self._sj_dense(d, layer.Conv2d, **_conv_args(d))


SJ_CLASSES = {DelayedLinear: SJDelayedLinear, DelayedConv1d: SJDelayedConv1d, DelayedConv2d: SJDelayedConv2d}


class DelaySeqToANNContainer(layer.SeqToANNContainer):
    """``SeqToANNContainer`` whose delay synapses see the whole sequence ``[T, N, ...]``.

    The stock container folds time into the batch (``[T * N, ...]``) for all its children, which would hide
    time from a delay synapse. This one runs each maximal run of ordinary children that way and hands the
    unfolded sequence to the delay synapses. The patch sets it as the ``__class__`` of the containers it
    touched (same children, same state_dict keys); ``dclszoo.unpatch`` sets it back.
    """

    def forward(self, x_seq: torch.Tensor):
        run: list[nn.Module] = []
        for child in self:
            if isinstance(child, DelayedSynapse):
                if run:
                    x_seq = functional.seq_to_ann_forward(x_seq, run)
                    run = []
                x_seq = child(x_seq)
            else:
                run.append(child)
        return functional.seq_to_ann_forward(x_seq, run) if run else x_seq
