"""``DclsConv2dSame``: a DCLS convolution with TensorFlow 'SAME' padding computed from the input size.

timm builds ``Conv2dSame`` (``timm.layers.conv2d_same``) for ``tf_*`` models whenever 'SAME' padding cannot be
static (stride > 1): the input is padded by ``max((ceil(i / s) - 1) * s + (k - 1) * d + 1 - i, 0)`` per axis,
the smaller half on the left/top. This module does the same with ``k = span``, so it is timm's ``Conv2dSame``
with a DCLS kernel, and ``to_dense()`` returns a ``Conv2dSame`` of size ``span``.

Converting a ``Conv2dSame`` of kernel ``k`` into a span ``S = k + 2m`` keeps the function: the extra padding
``2 * m * d`` is split evenly, exactly the ``m`` zero rings around the centred kernel, as long as the unclamped
padding for ``k`` is never negative, i.e. ``(k - 1) * d >= s - 1`` on every widened axis (checked).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from dclszoo.modules import DclsConv2d

__all__ = ["DclsConv2dSame", "same_padding"]


def same_padding(size: Sequence[int], kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]):
    """``F.pad`` amounts (last axis first) of TensorFlow 'SAME' padding for an input of spatial ``size``."""
    pads: list[int] = []
    for i, k, s, d in reversed(list(zip(size, kernel, stride, dilation))):
        total = max((math.ceil(i / s) - 1) * s + (k - 1) * d + 1 - i, 0)
        pads += [total // 2, total - total // 2]
    return pads


class DclsConv2dSame(DclsConv2d):
    """2-D DCLS convolution with dynamic TF 'SAME' padding (the DCLS twin of timm's ``Conv2dSame``).

    Same arguments as :class:`dclszoo.DclsConv2d`. The 'SAME' padding is computed from the input size in
    ``forward``; a non-zero ``padding`` would be added on top of it (keep the default 0).
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        pads = same_padding(input.shape[-2:], self.span, self.stride, self.dilation)
        return super().forward(F.pad(input, pads))

    @torch.no_grad()
    def to_dense(self) -> nn.Module:
        """timm's ``Conv2dSame`` with kernel size ``span`` and this module's kernel (identical output)."""
        from timm.layers import Conv2dSame

        if self.padding != (0, 0):
            raise ValueError(
                f"DclsConv2dSame.to_dense: padding={self.padding} on top of 'SAME' has no Conv2dSame equivalent; "
                f"build the module with padding=0."
            )
        self.validate()
        dense = Conv2dSame(
            self.in_channels, self.out_channels, self.span, stride=self.stride, dilation=self.dilation,
            groups=self.groups, bias=self.bias is not None, device=self.weight.device, dtype=self.weight.dtype,
        )
        return self._fill_dense(dense)

    @classmethod
    def from_dense(
        cls,
        conv: nn.Module,
        kernel_count: int | None = None,
        span: int | Sequence[int] | None = None,
        interpolation: str = "bilinear",
        sigma: float = 0.5,
        learn_sigma: bool = True,
    ) -> "DclsConv2dSame":
        """Function-preserving conversion of a timm ``Conv2dSame`` (or ``Conv2dSameExport``).

        Raises:
            TypeError: ``conv`` is not an ``nn.Conv2d`` with zero static padding.
            ValueError: ``span`` widens an axis whose 'SAME' padding could be clamped at 0 for some input sizes
                (``(k - 1) * dilation < stride - 1``), where the widened kernel would shift the output.
        """
        if not isinstance(conv, nn.Conv2d) or isinstance(conv.padding, str) or tuple(conv.padding) != (0, 0):
            raise TypeError(
                f"conv={type(conv).__name__}: DclsConv2dSame.from_dense expects a timm Conv2dSame "
                f"(an nn.Conv2d with static padding 0), got padding={getattr(conv, 'padding', None)!r}."
            )
        span_t = tuple(conv.kernel_size) if span is None else ((span,) * 2 if isinstance(span, int) else tuple(span))
        for k, s, d, sp in zip(conv.kernel_size, conv.stride, conv.dilation, span_t):
            if sp > k and (k - 1) * d < s - 1:
                raise ValueError(
                    f"span={span_t} widens a 'SAME' conv with kernel {tuple(conv.kernel_size)}, stride "
                    f"{tuple(conv.stride)}, dilation {tuple(conv.dilation)}: its padding can be clamped at 0, so the "
                    f"output would change. Keep span = kernel_size for this layer (filter it out)."
                )
        module = super().from_dense(conv, kernel_count, span_t, interpolation, sigma, learn_sigma)
        # core from_dense adds static padding for the wider span; here the dynamic 'SAME' padding of the span does it.
        module.padding = (0, 0)
        return module
