"""Pure-PyTorch twins of the fast paths: the plain formulas, used as CPU fallback and as test oracles.

Nothing here is clever on purpose. ``dcls_kernel_reference`` materialises the full
``[ndim, O, I/g, kc, *span]`` grid exactly as the DCLS formula is written (see ``docs/math.md``), so that the
fast, separable op in :mod:`dclszoo.functional` can be checked against it value by value and gradient by
gradient.
"""

from __future__ import annotations

from typing import Sequence

import torch

GAUSS_EPS = 1e-7
"""Added to the Gaussian normaliser ``Z`` (sum of the tap over the span), as in the DCLS papers."""


def _axis_coords(span: Sequence[int], ndim: int, d: int, device, dtype) -> torch.Tensor:
    """Centred coordinates of spatial axis ``d`` shaped to broadcast against ``[O, I, K, *span]``."""
    x = torch.arange(span[d], device=device, dtype=dtype) - (span[d] // 2)
    shape = [1, 1, 1] + [1] * ndim
    shape[3 + d] = span[d]
    return x.view(shape)


def dcls_kernel_reference(
    weight: torch.Tensor,
    positions: torch.Tensor,
    sigma: torch.Tensor | float | None,
    span: Sequence[int],
    interpolation: str = "gauss",
) -> torch.Tensor:
    """Dense DCLS kernel by the plain formula (the test oracle of :func:`dclszoo.functional.dcls_kernel`).

    Args:
        weight: Tap weights ``[O, I/g, kc]``.
        positions: Kernel-centred tap positions ``[ndim, O, I/g, kc]``; axis ``d`` moves along spatial axis ``d``.
        sigma: Gaussian standard deviation, broadcastable to ``positions`` (ignored for bilinear).
        span: Size of the dense kernel per spatial axis.
        interpolation: ``'gauss'`` (normalised Gaussian) or ``'bilinear'`` (floor form).

    Returns:
        The dense kernel ``[O, I/g, *span]``.
    """
    ndim = positions.shape[0]
    span = tuple(int(s) for s in span)
    expand = (Ellipsis,) + (None,) * ndim
    p = positions[expand]  # [ndim, O, I, K, 1, ..., 1]
    if interpolation == "gauss":
        s = torch.as_tensor(sigma, dtype=positions.dtype, device=positions.device)
        s = s.expand_as(positions)[expand]
        sq = 0
        for d in range(ndim):
            x = _axis_coords(span, ndim, d, positions.device, positions.dtype)
            sq = sq + ((x - p[d]) / s[d]) ** 2
        phi = torch.exp(-0.5 * sq)
        z = phi.sum(dim=tuple(range(3, 3 + ndim)), keepdim=True) + GAUSS_EPS
        phi = phi / z
    elif interpolation == "bilinear":
        phi = 1
        for d in range(ndim):
            x = _axis_coords(span, ndim, d, positions.device, positions.dtype)
            fl = torch.floor(p[d]).detach()
            r = p[d] - fl
            phi = phi * ((1 - r) * (x == fl) + r * (x == fl + 1))
    else:
        raise ValueError(f"interpolation={interpolation!r}: expected 'gauss' or 'bilinear'.")
    return (weight[expand] * phi).sum(dim=2)
