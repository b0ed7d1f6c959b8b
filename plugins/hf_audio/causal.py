"""``CausalDclsConv1d``: the DCLS twin of a depthwise convolution its block pads causally.

Wav2Vec2-BERT and SeamlessM4T-v2 build their conformer depthwise convolution with ``padding=0`` and pad
``depthwise_conv.kernel_size[0] - 1`` frames on the left in the block's ``forward``, so output frame ``t`` sees
input frames ``t - K + 1 .. t``. A centred DCLS span would let taps reach future frames. This module keeps the
whole span in the past: it exposes the dense kernel size ``K`` as ``kernel_size`` (the block keeps padding
``K - 1``), pads the remaining ``span - K`` frames on the left itself, and places the dense kernel at the right
end of the span when converting. Its window is frames ``t - span + 1 .. t``; positions are clamped into it.

``to_dense()`` returns an ``nn.Conv1d`` of kernel size ``span`` and padding 0: the block then pads ``span - 1``
frames, which is the same causal convolution.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from dclszoo.modules import DclsConv1d

__all__ = ["CausalDclsConv1d"]


class CausalDclsConv1d(DclsConv1d):
    """1-D DCLS convolution whose taps stay in the past of a causally left-padded input.

    Same arguments as :class:`dclszoo.DclsConv1d` plus ``kernel_size``: the dense kernel size the surrounding
    block pads for (default: the span). ``padding`` must be 0.
    """

    def __init__(self, *args, kernel_size: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.padding != (0,):
            raise ValueError(f"CausalDclsConv1d: padding={self.padding}; the block pads causally, expected 0.")
        k = self.span[0] if kernel_size is None else int(kernel_size)
        if not 1 <= k <= self.span[0]:
            raise ValueError(f"CausalDclsConv1d: kernel_size={kernel_size} must be in [1, span={self.span[0]}].")
        self.kernel_size = (k,)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        extra = self.span[0] - self.kernel_size[0]
        return super().forward(F.pad(input, (extra, 0)) if extra else input)

    @classmethod
    def from_dense(
        cls,
        conv: nn.Module,
        kernel_count: int | None = None,
        span: int | Sequence[int] | None = None,
        interpolation: str = "bilinear",
        sigma: float = 0.5,
        learn_sigma: bool = True,
    ) -> "CausalDclsConv1d":
        """Function-preserving conversion of a causally padded ``nn.Conv1d`` (padding 0, stride 1, dilation 1).

        The dense kernel sits at the right end of the span; ``kernel_count=None`` keeps one tap per dense weight.
        """
        if not isinstance(conv, nn.Conv1d) or tuple(conv.padding) != (0,) or conv.stride != (1,) \
                or conv.dilation != (1,):
            raise TypeError(
                f"CausalDclsConv1d.from_dense expects an nn.Conv1d with padding 0, stride 1 and dilation 1 (the block "
                f"pads causally), got {conv!r}."
            )
        k = conv.kernel_size[0]
        s = k if span is None else (span if isinstance(span, int) else tuple(span)[0])
        if s < k:
            raise ValueError(f"span={s} is smaller than the dense kernel size {k}.")
        wide = nn.Conv1d(conv.in_channels, conv.out_channels, s, groups=conv.groups, bias=conv.bias is not None,
                         device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            wide.weight.zero_()
            wide.weight[..., s - k:] = conv.weight
            if conv.bias is not None:
                wide.bias.copy_(conv.bias)
        kc = k if kernel_count is None else kernel_count
        module = super().from_dense(wide, kc, s, interpolation, sigma, learn_sigma)
        module.kernel_size = (k,)
        return module

    def extra_repr(self) -> str:
        return super().extra_repr() + f", causal, kernel_size={self.kernel_size}"
