"""Function-preserving conversion of a trained dense ``nn.ConvNd`` into a DCLS convolution."""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import torch
import torch.nn as nn

_DENSE = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _resolve_class(cls, conv: nn.Module):
    """The ``DclsConv{1,2,3}d`` to build: ``cls`` itself, or picked from ``conv`` when called on the base class."""
    from .dcls_conv import DclsConv1d, DclsConv2d, DclsConv3d

    if getattr(cls, "_ndim", 0) == 0:
        for dense_cls, dcls_cls in zip(_DENSE, (DclsConv1d, DclsConv2d, DclsConv3d)):
            if isinstance(conv, dense_cls):
                return dcls_cls
        raise TypeError(f"conv={type(conv).__name__}: from_dense expects an nn.Conv1d, nn.Conv2d or nn.Conv3d.")
    conv_cls = _DENSE[cls._ndim - 1]
    if not isinstance(conv, conv_cls):
        raise TypeError(f"conv={type(conv).__name__}: {cls.__name__}.from_dense expects an nn.{conv_cls.__name__}.")
    return cls


def _placement(conv: nn.Module, ksize, span, ndim: int):
    """Padding of the DCLS module and offset of the dense kernel inside the span, per axis."""
    pad = conv.padding
    if pad == "valid":
        pad = (0,) * ndim
    dilation = tuple(conv.dilation)
    if pad == "same":
        # 'same' puts d*(k-1)//2 on the left; the kernel must move by the change of that amount, in taps.
        offsets = []
        for d, s, k in zip(dilation, span, ksize):
            shift = (d * (s - 1)) // 2 - (d * (k - 1)) // 2
            if shift % d:
                raise ValueError(
                    f"span={span} with padding='same' and dilation={dilation}: the dense kernel {ksize} cannot be "
                    f"placed on the span grid without shifting the output. Use span = kernel_size + an even number."
                )
            offsets.append(shift // d)
        return "same", offsets
    pad = tuple(pad) if isinstance(pad, (tuple, list)) else (pad,) * ndim
    if any((s - k) % 2 for s, k in zip(span, ksize)):
        raise ValueError(
            f"span={span} differs from kernel_size={ksize} by an odd amount; with numeric padding the output "
            f"would shift. Use span = kernel_size + an even number per axis."
        )
    offsets = [(s - k) // 2 for s, k in zip(span, ksize)]
    return tuple(p + d * o for p, d, o in zip(pad, dilation, offsets)), offsets


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
    """Build a ``cls`` (a ``DclsConvNd`` subclass, or the base class to pick by ``conv``) with ``conv``'s output.

    Taps are placed on the original grid (centred in ``span`` when it is larger than the kernel). With
    ``kernel_count`` >= the number of non-zero weights per filter the output is identical (bilinear); with fewer
    taps the largest-magnitude weights are kept. ``module.conversion_error`` holds the relative (Frobenius)
    kernel error, which is the expected relative output error for white-noise input (bias aside); it is 0 for
    an exact conversion and reported with a warning when above 1e-6. Spare taps get zero weight and sit on
    unused grid points.

    Raises:
        TypeError: ``conv`` is not an ``nn.ConvNd`` of the class's dimensionality, or is transposed.
        ValueError: ``span`` smaller than the kernel, a span/padding combination that would shift the output,
            or more taps than grid points.
    """
    cls = _resolve_class(cls, conv)
    ndim = cls._ndim
    if getattr(conv, "transposed", False):
        raise TypeError("from_dense does not convert transposed convolutions.")
    ksize = tuple(conv.kernel_size)
    if span is None:
        span = ksize
    span = (span,) * ndim if isinstance(span, int) else tuple(span)
    if len(span) != ndim or not all(isinstance(s, int) for s in span) or any(s < k for s, k in zip(span, ksize)):
        raise ValueError(f"span={span}: expected {ndim} ints, each >= the dense kernel_size {ksize}.")
    padding, offsets = _placement(conv, ksize, span, ndim)
    w = conv.weight.detach()
    out_c, in_g = w.shape[:2]
    n_grid, n_span = math.prod(ksize), math.prod(span)
    if kernel_count is None:
        kernel_count = n_grid
    if not isinstance(kernel_count, int) or isinstance(kernel_count, bool) or not 1 <= kernel_count <= n_span:
        raise ValueError(f"kernel_count={kernel_count!r}: expected an int in [1, {n_span}] (grid points of span={span}).")
    module = cls(
        conv.in_channels, conv.out_channels, kernel_count, span, stride=tuple(conv.stride), padding=padding,
        dilation=tuple(conv.dilation), groups=conv.groups, bias=conv.bias is not None,
        padding_mode=conv.padding_mode, interpolation=interpolation, sigma=sigma, learn_sigma=learn_sigma,
        device=w.device, dtype=w.dtype,
    )
    # Grid coordinates of every span point; the original kernel occupies the block starting at `offsets`.
    axes = [torch.arange(s, device=w.device) for s in span]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij")).reshape(ndim, -1)  # [ndim, n_span]
    inside = torch.ones(n_span, dtype=torch.bool, device=w.device)
    for d in range(ndim):
        inside &= (grid[d] >= offsets[d]) & (grid[d] < offsets[d] + ksize[d])
    big = torch.zeros((out_c, in_g, n_span), device=w.device, dtype=w.dtype)
    big[:, :, inside] = w.reshape(out_c, in_g, n_grid)
    # Rank span points by |w| (descending); ties, e.g. zeros, prefer points inside the kernel, then grid order:
    # list the inside points first and sort stably.
    order = torch.cat([inside.nonzero().flatten(), (~inside).nonzero().flatten()])
    ranked = torch.sort(big[:, :, order].abs().float(), dim=-1, descending=True, stable=True).indices
    idx = order[ranked[:, :, :kernel_count]]  # [O, I/g, kc]
    module.weight.copy_(torch.gather(big, 2, idx))
    centre = torch.tensor([s // 2 for s in span], device=w.device).view(ndim, 1, 1, 1)
    module.positions.copy_((grid[:, idx] - centre).to(w.dtype))
    if conv.bias is not None:
        module.bias.copy_(conv.bias)
    total = w.double().pow(2).sum()
    exact = module.kernel().double().reshape(out_c, in_g, -1)
    error = float((exact - big.double()).norm() / total.sqrt()) if total > 0 else 0.0
    module.conversion_error = error
    if error > 1e-6:
        warnings.warn(
            f"{cls.__name__}.from_dense: kernel_count={kernel_count} ({interpolation}) does not represent the "
            f"dense kernel exactly: relative kernel error {error:.3g} (see module.conversion_error).",
            stacklevel=3,
        )
    return module
