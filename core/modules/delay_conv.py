"""``DelayedConv1d/2d``: convolution synapses with one learnable delay per (out, in) channel pair (and tap).

``y[t] = bias + sum_{i, k} conv(x_i[t - delays[o, i, k]], weight[o, i, k])`` for sequences
``[T, N, C, *spatial]`` (SpikingJelly multi-step layout). Same delay maths as :class:`DelayedLinear`
(:mod:`._delay_base`):

- dense path: the delay profile times the spatial kernel is one ``(1 + ndim)``-D kernel over
  ``(time, *spatial)``; a causal ``conv{2,3}d`` (left time padding ``max_delay - 1``) computes it.
- sparse path (integer mode or a narrow Gaussian): synapses are grouped by integer delay ``v``; one spatial
  convolution per distinct delay on the input shifted by ``v`` steps. Its cost grows with the number of
  distinct delays in use (at most ``max_delay``), not with the kernel length.

On a GPU both paths are cuDNN convolutions (the dense path's time kernel built by the Triton construction): the
work is a spatial convolution, which cuDNN does well on tensor cores, and the delays decide which time steps it
reads. The sparse path runs one full spatial convolution (zero weights for the synapses at other delays) per
distinct delay in use, so its work is (distinct delays) x one convolution over the sequence: at most
``max_delay`` of them, fewer once delays cluster or the layer is small (``out x in x taps`` synapses), and small
layers with many distinct delays are launch-bound (~10 us a launch). A Triton kernel fusing the time gather into an
implicit-GEMM spatial convolution (work of one convolution per tap, whatever the delays) would be the next step if
measured worthwhile; it was not built because no GPU was at hand to measure it against cuDNN. :class:`DelayedLinear`, the SNN-delays synapse, has its own Triton kernel (``dclszoo.kernels.delay``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._delay_base import DelayedSynapse
from ._args import _check_channels, _tuple

__all__ = ["DelayedConv1d", "DelayedConv2d", "DelayedConvNd"]


class DelayedConvNd(DelayedSynapse):
    """Base of :class:`DelayedConv1d` / :class:`DelayedConv2d`; see :class:`DelayedConv2d` for the arguments."""

    _ndim = 0
    _dense_cls: type = nn.Module

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        max_delay: int,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        kernel_count: int = 1,
        sigma: float | None = None,
        step_mode: str = "m",
        path: str = "auto",
        delay_init: str = "uniform",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        n = self._ndim
        _check_channels(in_channels, out_channels, groups)
        self.kernel_size = _tuple(kernel_size, n, "kernel_size")
        self.stride, self.dilation = _tuple(stride, n, "stride"), _tuple(dilation, n, "dilation")
        if padding == "valid":
            padding = 0
        if padding == "same":
            total = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            if any(t % 2 for t in total) or any(s != 1 for s in self.stride):
                raise ValueError(
                    f"padding='same' with kernel_size={self.kernel_size}, dilation={self.dilation}, stride="
                    f"{self.stride} needs asymmetric padding; pass explicit integer padding."
                )
            padding = tuple(t // 2 for t in total)
        self.padding = _tuple(padding, n, "padding")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self._init_delay_params(
            out_channels, in_channels // groups, max_delay, kernel_count, sigma, self.kernel_size, bias, path,
            step_mode, {"device": device, "dtype": dtype}, delay_init,
        )
        self.reset_parameters()

    @classmethod
    def from_conv(cls, conv: nn.Module, max_delay: int, kernel_count: int = 1, **kwargs) -> "DelayedConvNd":
        """Copy ``conv``'s weights, all delays 0, integer mode (``sigma=0``): the same function per step."""
        dense = cls._dense_cls
        if not isinstance(conv, dense):
            raise TypeError(f"conv={type(conv).__name__}: {cls.__name__}.from_conv expects an nn.{dense.__name__}.")
        if conv.padding_mode != "zeros":
            raise ValueError(f"conv.padding_mode={conv.padding_mode!r}: only 'zeros' is supported with delays.")
        kwargs.setdefault("sigma", 0.0)
        w = conv.weight
        mod = cls(conv.in_channels, conv.out_channels, conv.kernel_size, max_delay, stride=conv.stride,
                  padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                  kernel_count=kernel_count, delay_init="zeros", device=w.device, dtype=w.dtype, **kwargs)
        mod._copy_dense(w, conv.bias)
        return mod

    # ----------------------------------------------------------------- forward
    def _spatial_conv(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        conv = (F.conv1d, F.conv2d)[self._ndim - 1]
        return conv(x, w, None, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self._ndim
        if self.step_mode == "s":
            return self._single_step(x)
        if not isinstance(x, torch.Tensor) or x.dim() != n + 3 or x.shape[2] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"{type(self).__name__}(step_mode='m') expects [T, N, C={self.in_channels}, "
                f"{', '.join('LHW'[3 - n:][:n]) if n > 1 else 'L'}], got {shape}."
            )
        if x.shape[0] == 0:
            raise ValueError(f"{type(self).__name__}: the input has T=0 time steps.")
        y = self._sparse(x) if self.use_sparse() else self._dense(x)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype).view((1, 1, -1) + (1,) * n)
        return y

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        prof = self.time_kernel().to(x.dtype)  # [O, I, kc, D], index j <-> delay D-1-j
        w = self.weight.to(x.dtype)
        kernel = torch.einsum("oikj,oik...->oij...", prof, w)  # [O, I, D, *k]
        steps, n = x.shape[0], self._ndim
        xc = F.pad(x.movedim(0, 2), (0, 0) * n + (self.max_delay - 1, 0))  # [N, C, T + D - 1, *sp]
        conv = (F.conv2d, F.conv3d)[n - 1]
        y = conv(xc, kernel, None, (1,) + self.stride, (0,) + self.padding, (1,) + self.dilation, self.groups)
        return y.movedim(2, 0)[:steps]

    def _grouped_weights(self):
        """Yield ``(v, W_v [O, I, *k])``: the weights of all taps at integer delay ``v``."""
        prof, offs = self.sparse_taps()  # [O, I, kc, J]
        extra = (None,) * self._ndim
        wfull = self.weight.unsqueeze(3) * prof[(...,) + extra]  # [O, I, kc, J, *k]
        for v in torch.unique(offs).tolist():
            mask = (offs == v).to(wfull.dtype)[(...,) + extra]
            yield int(v), (wfull * mask).sum((2, 3))

    def _sparse(self, x: torch.Tensor) -> torch.Tensor:
        steps, batch = x.shape[:2]
        y = None
        for v, w in self._grouped_weights():
            if v >= steps:
                continue
            out = self._spatial_conv(x[: steps - v].flatten(0, 1), w.to(x.dtype))
            out = out.view((steps - v, batch) + out.shape[1:])
            out = F.pad(out, (0, 0) * (self._ndim + 2) + (v, 0)) if v else out
            y = out if y is None else y + out
        if y is None:  # every delay >= T: no input reaches the output yet
            out = self._spatial_conv(x.flatten(0, 1), torch.zeros_like(self.weight[:, :, 0], dtype=x.dtype))
            y = out.view((steps, batch) + out.shape[1:])
        return y

    def _single_step(self, x: torch.Tensor) -> torch.Tensor:
        n = self._ndim
        if not isinstance(x, torch.Tensor) or x.dim() != n + 2 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__}(step_mode='s') expects one step [N, C={self.in_channels}, ...], got {shape}.")
        if not self.integer_mode:
            raise ValueError(
                f"{type(self).__name__}: single-step (streaming) mode needs integer delays, but sigma="
                f"{self._sigma_value:g}; call round_delays() or use multi-step mode."
            )
        hist = self._history
        if hist is not None and hist.shape[1:] != x.shape:
            raise ValueError(
                f"{type(self).__name__}: input shape changed from {tuple(hist.shape[1:])} to {tuple(x.shape)} "
                "in the middle of a stream; call functional.reset_net(net) between sequences."
            )
        if hist is None:
            hist = x.new_zeros((self.max_delay,) + tuple(x.shape))
        hist = torch.cat([x.unsqueeze(0), hist[:-1]], 0)
        self._history = hist
        y = sum(self._spatial_conv(hist[v], w.to(x.dtype)) for v, w in self._grouped_weights())
        if self.bias is not None:
            y = y + self.bias.to(y.dtype).view((1, -1) + (1,) * n)
        return y

    # ----------------------------------------------------------------- export
    @torch.no_grad()
    def to_dense(self) -> nn.Module:
        """A plain ``nn.ConvNd`` with identical per-step output, if every delay kernel sits at delay 0.

        Raises:
            ValueError: If some channel pair has a non-zero delay (no plain convolution is equivalent).
        """
        prof = self.time_kernel()  # [O, I, kc, D]
        if self.max_delay > 1 and bool(prof[..., :-1].ne(0).any()):
            raise ValueError(
                f"{type(self).__name__}.to_dense(): some channel pairs have non-zero delays (sigma="
                f"{self._sigma_value:g}); a delayed convolution has no plain nn.Conv equivalent."
            )
        dense = self._make_dense_conv()
        extra = (None,) * self._ndim
        dense.weight.copy_((self.weight * prof[..., -1][(...,) + extra]).sum(2))
        if self.bias is not None:
            dense.bias.copy_(self.bias)
        return dense

    def _make_dense_conv(self) -> nn.Module:
        return self._dense_cls(
            self.in_channels, self.out_channels, self.kernel_size, stride=self.stride, padding=self.padding,
            dilation=self.dilation, groups=self.groups, bias=self.bias is not None,
            device=self.weight.device, dtype=self.weight.dtype,
        )

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        s += f", padding={self.padding}"
        if self.dilation != (1,) * self._ndim:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + ", " + self._delay_repr()


class DelayedConv1d(DelayedConvNd):
    """1-D convolution synapses with per-channel-pair delays: ``[T, N, C, L] -> [T, N, O, L']``."""

    _ndim = 1
    _dense_cls = nn.Conv1d


class DelayedConv2d(DelayedConvNd):
    """2-D convolution synapses with one learnable delay per (out, in) channel pair and tap.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: As ``nn.Conv2d``
            (``padding_mode`` is always ``'zeros'``).
        max_delay: Delays range over ``0 .. max_delay - 1`` time steps.
        kernel_count: Taps (spatial kernel + delay) per channel pair.
        sigma: Gaussian std in time steps (None = ``max_delay // 2``; 0 = integer delays).
        step_mode: ``'m'`` (``[T, N, C, H, W]``) or ``'s'`` (streaming ``[N, C, H, W]``, integer mode).
        path: ``'auto'`` | ``'dense'`` | ``'sparse'``.
        delay_init: ``'uniform'`` or ``'zeros'``.

    Parameters: ``weight [O, I/g, kc, kh, kw]``, ``delays [O, I/g, kc]``, ``bias [O]``; buffer ``sigma``.
    """

    _ndim = 2
    _dense_cls = nn.Conv2d
