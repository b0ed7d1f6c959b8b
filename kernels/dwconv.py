"""Depthwise convolution with a dense (DCLS-built) kernel: the ``dwconv`` op.

``y = conv(x, kernel, bias)`` with ``groups = channels``, stride 1, dilation 1, zero padding, for 1-D
(``[N, C, L]``) and 2-D (``[N, C, H, W]``) inputs: the case of every DCLS layer of ConvNeXt, ConvFormer and the
conformers. Backends (chosen by :mod:`dclszoo.kernels.backend`, ``DCLSZOO_BACKEND``, op ``dwconv``):

- ``"triton"``: :mod:`dclszoo.kernels._dwconv_triton`, the kernel's rows as banded matrix products on the tensor
  cores (no dense-span direct loop, no cuDNN); forward, input gradient and kernel gradient; chosen automatically
  for CUDA tensors.
- ``"torch"``: ``F.conv1d`` / ``F.conv2d`` (cuDNN on GPUs); everything else, the twin and the test oracle.

The Triton calls are custom ops (opaque to ``torch.compile``) wrapped in one autograd function; the kernel
gradient is float32 whatever the input's dtype and is returned in the kernel's dtype.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn.functional as F

from . import backend as _backend

__all__ = ["depthwise_conv", "triton_depthwise_conv", "select_backend", "why_not_triton", "resolve_padding"]


@functools.lru_cache(maxsize=1)
def _triton():
    from . import _dwconv_triton

    return _dwconv_triton


def resolve_padding(padding, span: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """``(before, after)`` per spatial axis for ``'same'``, ``'valid'``, an int or a per-axis tuple (torch's
    convention for ``'same'``: the extra cell of an even kernel goes after)."""
    if padding == "same":
        return tuple(((s - 1) // 2, (s - 1) - (s - 1) // 2) for s in span)
    if padding == "valid":
        return tuple((0, 0) for _ in span)
    if isinstance(padding, int):
        return tuple((padding, padding) for _ in span)
    return tuple((int(p), int(p)) for p in padding)


def why_not_triton(x: torch.Tensor, kernel_shape: Sequence[int], groups: int, stride, dilation,
                   padding_mode: str = "zeros") -> str | None:
    """Why the Triton kernels do not cover this convolution (None if they do)."""
    ndim = len(kernel_shape) - 2
    if ndim not in (1, 2):
        return f"the convolution is {ndim}-D (the Triton kernels do 1-D and 2-D)"
    c = kernel_shape[0]
    if not (groups == c and kernel_shape[1] == 1 and x.dim() == ndim + 2 and x.shape[1] == c):
        return f"it is not depthwise with one filter per channel (groups={groups}, kernel {tuple(kernel_shape)})"
    if any(int(s) != 1 for s in stride) or any(int(d) != 1 for d in dilation):
        return f"stride={tuple(stride)}, dilation={tuple(dilation)} (the Triton kernels do stride 1, dilation 1)"
    if padding_mode != "zeros":
        return f"padding_mode={padding_mode!r} (the Triton kernels pad with zeros)"
    if not x.is_floating_point() or x.dtype == torch.float64:
        return f"the input is {x.dtype} (the Triton kernels take float32, bfloat16 and float16)"
    return None


def select_backend(x: torch.Tensor, kernel_shape: Sequence[int], groups: int, stride, dilation,
                   padding_mode: str = "zeros", backend: str | None = None) -> str:
    """``'triton'`` or ``'torch'`` for this convolution (rules in :mod:`dclszoo.kernels.backend`).

    Raises:
        ValueError: If ``triton`` is requested for a convolution or tensors it cannot take.
        ImportError: If ``triton`` is requested and not installed.
    """
    def triton(auto):
        return _backend.triton_runs_on(x, auto=auto) or why_not_triton(x, kernel_shape, groups, stride, dilation,
                                                                        padding_mode)

    return _backend.resolve("dwconv", (("triton", triton),), backend)


def _as_2d(t: torch.Tensor) -> torch.Tensor:
    return t.unsqueeze(2) if t.dim() == 3 else t


def _forward_impl(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None, pads: list[int],
                  out_size: list[int]) -> torch.Tensor:
    """Triton forward on ``[N, C, H, W]`` (1-D as ``H = 1``); ``pads = [top, left]``."""
    k = kernel.reshape(kernel.shape[0], kernel.shape[-2], kernel.shape[-1]).contiguous()
    return _triton().forward(x.contiguous(), k, bias, (pads[0], pads[1]), (out_size[0], out_size[1]))


_forward_op = torch.library.custom_op("dclszoo::dwconv_forward", mutates_args=())(_forward_impl)


@_forward_op.register_fake
def _forward_fake(x, kernel, bias, pads, out_size):
    return x.new_empty((x.shape[0], x.shape[1], out_size[0], out_size[1]))


def _backward_impl(grad_y: torch.Tensor, x: torch.Tensor, kernel: torch.Tensor, pads: list[int], need_x: bool,
                   need_k: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_x, grad_kernel)`` on the 2-D views (empty where not needed); grad_kernel in float32."""
    tri = _triton()
    c, sy, sx = kernel.shape[0], kernel.shape[-2], kernel.shape[-1]
    gy = grad_y.contiguous()
    gx, gk = x.new_empty(0), x.new_empty(0)  # two tensors: a custom op's outputs may not alias
    if need_x:
        flipped = kernel.reshape(c, sy, sx).flip(1, 2).contiguous()
        gx = tri.forward(gy, flipped, None, (sy - 1 - pads[0], sx - 1 - pads[1]), (x.shape[2], x.shape[3]))
    if need_k:
        gk = tri.grad_kernel(x.contiguous(), gy, (sy, sx), (pads[0], pads[1]))
    return gx, gk


_backward_op = torch.library.custom_op("dclszoo::dwconv_backward", mutates_args=())(_backward_impl)


@_backward_op.register_fake
def _backward_fake(grad_y, x, kernel, pads, need_x, need_k):
    c, sy, sx = kernel.shape[0], kernel.shape[-2], kernel.shape[-1]
    return (x.new_empty(x.shape if need_x else (0,)),
            x.new_empty((c, sy, sx) if need_k else (0,), dtype=torch.float32))


class _DepthwiseConvTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel, bias, pads, out_size):
        ctx.save_for_backward(x, kernel)
        ctx.pads, ctx.has_bias = pads, bias is not None
        return _forward_op(x, kernel, bias, pads, out_size)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        x, kernel = ctx.saved_tensors
        need_x, need_k, need_b = ctx.needs_input_grad[:3]
        gx = gk = None
        if need_x or need_k:
            gx, gk = _backward_op(grad_y, x, kernel, ctx.pads, bool(need_x), bool(need_k))
        gb = grad_y.sum(dim=(0, 2, 3)).to(grad_y.dtype) if need_b and ctx.has_bias else None
        return (gx if need_x else None), (gk.view(kernel.shape).to(kernel.dtype) if need_k else None), gb, None, None


def depthwise_conv(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None = None,
                   padding: int | Sequence[int] | str = 0, *, backend: str | None = None) -> torch.Tensor:
    """Depthwise convolution (stride 1, dilation 1, zero padding) of ``x [N, C, *sp]`` with ``kernel [C, 1, *span]``.

    Args:
        x: ``[N, C, L]`` or ``[N, C, H, W]``, any memory format (channels_last in, channels_last out).
        kernel: The dense kernel ``[C, 1, *span]`` (any float dtype: the products run in ``x``'s dtype).
        bias: Optional ``[C]``.
        padding: ``'same'``, ``'valid'``, an int or one int per axis (symmetric).
        backend: ``'triton'``, ``'torch'`` or ``'auto'``; None: ``$DCLSZOO_BACKEND``, else automatic.

    Returns:
        ``y [N, C, *out]`` in ``x``'s dtype.
    """
    ndim = kernel.dim() - 2
    span = tuple(kernel.shape[2:])
    pads = resolve_padding(padding, span)
    ones = (1,) * ndim
    if select_backend(x, kernel.shape, x.shape[1] if x.dim() > 1 else 0, ones, ones, "zeros", backend) == "torch":
        conv = (F.conv1d, F.conv2d)[ndim - 1]
        if any(a != b for a, b in pads):
            x = F.pad(x, [p for pair in reversed(pads) for p in pair])
            return conv(x, kernel.to(x.dtype), None if bias is None else bias.to(x.dtype), 1, 0, 1, x.shape[1])
        return conv(x, kernel.to(x.dtype), None if bias is None else bias.to(x.dtype), 1,
                    tuple(p[0] for p in pads), 1, x.shape[1])
    return triton_depthwise_conv(x, kernel, bias, pads)


def triton_depthwise_conv(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None,
                          pads: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """:func:`depthwise_conv` on the Triton kernels, once they are chosen (``pads`` from :func:`resolve_padding`)."""
    ndim = kernel.dim() - 2
    span = tuple(kernel.shape[2:])
    out = [x.shape[2 + d] + pads[d][0] + pads[d][1] - span[d] + 1 for d in range(ndim)]
    if any(o < 1 for o in out):
        raise ValueError(f"input {tuple(x.shape)} is smaller than the kernel {span} with padding {pads}.")
    channels_last = ndim == 2 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    x2 = _as_2d(x)
    k2 = kernel.reshape(kernel.shape[0], 1, 1 if ndim == 1 else span[0], span[-1])
    top = 0 if ndim == 1 else pads[0][0]
    size = [1, out[0]] if ndim == 1 else out
    b = None if bias is None else bias.to(x.dtype)
    y = _DepthwiseConvTriton.apply(x2, k2, b, [top, pads[-1][0]], size)
    y = y.squeeze(2) if ndim == 1 else y
    return y.contiguous(memory_format=torch.channels_last) if channels_last else y
