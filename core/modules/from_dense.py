"""Function-preserving conversion of a trained dense ``nn.ConvNd`` into a DCLS convolution."""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import torch
import torch.nn as nn


def _dense_padding(conv: nn.Module, ndim: int):
    pad = conv.padding
    if isinstance(pad, str):
        return pad
    return tuple(pad) if isinstance(pad, (tuple, list)) else (pad,) * ndim


@torch.no_grad()
def dcls_from_dense(
    cls,
    conv: nn.Module,
    kernel_count: int | None = None,
    span: int | Sequence[int] | None = None,
    interpolation: str = "bilinear",
    sigma: float = 0.5,
    learn_sigma: bool = True,
):
    """Build a ``cls`` (``DclsConvNd`` subclass) whose output equals ``conv``'s.

    Taps are placed on the original grid (centred in ``span`` when it is larger than the kernel). With
    ``kernel_count`` >= the number of non-zero weights per filter the output is identical (bilinear); with fewer
    taps the largest-magnitude weights are kept, and the relative kernel error is stored in
    ``module.conversion_error`` and reported with a warning. Zero-weight spare taps sit on unused grid points.

    Raises:
        TypeError: ``conv`` is not an ``nn.ConvNd`` of the class's dimensionality.
        ValueError: ``span`` smaller than the kernel, an odd difference with numeric padding, or too many taps.
    """
    ndim = cls._ndim
    conv_cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[ndim - 1]
    if not isinstance(conv, conv_cls):
        raise TypeError(f"conv={type(conv).__name__}: {cls.__name__}.from_dense expects an nn.{conv_cls.__name__}.")
    if getattr(conv, "transposed", False):
        raise TypeError("from_dense does not convert transposed convolutions.")
    ksize = tuple(conv.kernel_size)
    if span is None:
        span = ksize
    span = (span,) * ndim if isinstance(span, int) else tuple(span)
    if len(span) != ndim or any(s < k for s, k in zip(span, ksize)):
        raise ValueError(f"span={span}: expected {ndim} sizes, each >= the dense kernel_size {ksize}.")
    padding = _dense_padding(conv, ndim)
    if not isinstance(padding, str):
        if any((s - k) % 2 for s, k in zip(span, ksize)):
            raise ValueError(
                f"span={span} differs from kernel_size={ksize} by an odd amount; with numeric padding the output "
                f"would shift. Use span = kernel_size + an even number per axis."
            )
        padding = tuple(p + d * (s - k) // 2 for p, d, s, k in zip(padding, conv.dilation, span, ksize))
    w = conv.weight.detach()
    out_c, in_g = w.shape[:2]
    n_grid = math.prod(ksize)
    n_span = math.prod(span)
    if kernel_count is None:
        kernel_count = n_grid
    if kernel_count > n_span:
        raise ValueError(f"kernel_count={kernel_count} exceeds the {n_span} grid points of span={span}.")
    module = cls(
        conv.in_channels, conv.out_channels, kernel_count, span, stride=tuple(conv.stride), padding=padding,
        dilation=tuple(conv.dilation), groups=conv.groups, bias=conv.bias is not None,
        padding_mode=conv.padding_mode, interpolation=interpolation, sigma=sigma, learn_sigma=learn_sigma,
        device=w.device, dtype=w.dtype,
    )
    # Grid coordinates of every span point, kernel-centred; the original kernel occupies the centred block.
    offsets = [(s - k) // 2 for s, k in zip(span, ksize)]
    axes = [torch.arange(s, device=w.device) for s in span]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij")).reshape(ndim, -1)  # [ndim, n_span]
    inside = torch.ones(n_span, dtype=torch.bool, device=w.device)
    for d in range(ndim):
        inside &= (grid[d] >= offsets[d]) & (grid[d] < offsets[d] + ksize[d])
    # Dense weights embedded in the span (zero outside the original kernel).
    big = torch.zeros((out_c, in_g, n_span), device=w.device, dtype=w.dtype)
    big[:, :, inside] = w.reshape(out_c, in_g, n_grid)
    # Rank span points by |w|; ties (zeros) prefer points inside the original kernel, then grid order.
    key = big.abs().float() * 4 + inside.float() * 2 - torch.arange(n_span, device=w.device) / (2.0 * n_span)
    idx = key.topk(kernel_count, dim=-1).indices  # [O, I/g, kc]
    module.weight.copy_(torch.gather(big, 2, idx))
    centre = torch.tensor([s // 2 for s in span], device=w.device).view(ndim, 1, 1, 1)
    module.positions.copy_((grid[:, idx] - centre).to(w.dtype))
    if conv.bias is not None:
        module.bias.copy_(conv.bias)
    kept = module.weight.abs().pow(2).sum()
    total = w.abs().pow(2).sum()
    module.conversion_error = float(((total - kept).clamp_min(0) / total.clamp_min(1e-30)).sqrt()) if total > 0 else 0.0
    if interpolation != "bilinear" or module.conversion_error > 0:
        exact = module.kernel().reshape(out_c, in_g, -1)
        err = (exact - big).norm() / big.norm().clamp_min(1e-30)
        module.conversion_error = float(err)
        if module.conversion_error > 1e-6:
            warnings.warn(
                f"{cls.__name__}.from_dense: kernel_count={kernel_count} ({interpolation}) does not represent "
                f"the dense kernel exactly: relative kernel error {module.conversion_error:.3g}.",
                stacklevel=3,
            )
    return module
