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
            # At the upper border p == hi, use the cell [hi - 1, hi] (r = 1): same value, inward derivative.
            fl = fl - ((p[d] == span[d] - 1 - span[d] // 2) & (span[d] >= 2)).to(fl.dtype).detach()
            r = p[d] - fl
            phi = phi * ((1 - r) * (x == fl) + r * (x == fl + 1))
    else:
        raise ValueError(f"interpolation={interpolation!r}: expected 'gauss' or 'bilinear'.")
    return (weight[expand] * phi).sum(dim=2)


# --------------------------------------------------------------------------------------------------------------
# Sparse synaptic delays (twin of dclszoo.kernels.delay.sparse_delay)
# --------------------------------------------------------------------------------------------------------------


def check_delay_args(x: torch.Tensor, coeff: torch.Tensor, offsets: torch.Tensor, values: bool = True,
                     band: int = 1) -> None:
    """Validate the arguments of ``sparse_delay`` / ``sparse_delay_reference``; raise a clear error if bad.

    ``values=False`` skips the checks that read the data (offsets >= 0, and banded offsets consecutive), which
    cost a device synchronisation on GPUs.

    Raises:
        TypeError: If an argument is not a tensor, ``x``/``coeff`` are not floating point or differ in dtype,
            or ``offsets`` is not an integer tensor.
        ValueError: If the shapes do not match ``x [T, B, I]``, ``coeff [O, I, J]``, ``offsets [O, I, J]``,
            the tensors are on different devices, or an offset is negative, or ``band`` does not divide ``J``
            or (values checked) a run of ``band`` taps is not ``band`` consecutive offsets.
    """
    for name, t in (("x", x), ("coeff", coeff), ("offsets", offsets)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"sparse_delay: {name} must be a torch.Tensor, got {type(t).__name__}.")
    if x.dim() != 3:
        raise ValueError(
            f"sparse_delay: x must be time-major [T, B, I], got shape {tuple(x.shape)}; "
            "permute batch-first input with x.transpose(0, 1)."
        )
    if coeff.dim() != 3:
        raise ValueError(
            f"sparse_delay: coeff must be [O, I, J] (out, in, taps), got shape {tuple(coeff.shape)}; "
            "use coeff.unsqueeze(-1) for one tap per synapse."
        )
    if tuple(offsets.shape) != tuple(coeff.shape):
        raise ValueError(
            f"sparse_delay: offsets must have the shape of coeff {tuple(coeff.shape)}, "
            f"got {tuple(offsets.shape)}."
        )
    if coeff.shape[1] != x.shape[2]:
        raise ValueError(
            f"sparse_delay: coeff has {coeff.shape[1]} input channels (dim 1) but x has {x.shape[2]} (dim 2); "
            "x must be [T, B, I] and coeff [O, I, J]."
        )
    if not x.is_floating_point() or not coeff.is_floating_point():
        raise TypeError(
            f"sparse_delay: x and coeff must be floating point, got {x.dtype} and {coeff.dtype}."
        )
    if x.dtype != coeff.dtype:
        raise TypeError(
            f"sparse_delay: x ({x.dtype}) and coeff ({coeff.dtype}) must have the same dtype; "
            f"cast one of them, e.g. coeff.to(x.dtype)."
        )
    if offsets.is_floating_point() or offsets.is_complex() or offsets.dtype == torch.bool:
        raise TypeError(
            f"sparse_delay: offsets must be an integer tensor (int64 delays in time steps), got {offsets.dtype}; "
            "round real-valued delays first, e.g. offsets.round().long()."
        )
    if not (x.device == coeff.device == offsets.device):
        raise ValueError(
            f"sparse_delay: x, coeff and offsets must be on one device, got {x.device}, {coeff.device} and "
            f"{offsets.device}."
        )
    if values and offsets.numel() and int(offsets.min()) < 0:
        raise ValueError(
            f"sparse_delay: offsets must be >= 0 (causal delays), got a minimum of {int(offsets.min())}."
        )
    if not isinstance(band, int) or isinstance(band, bool) or band < 1 or coeff.shape[2] % band:
        raise ValueError(
            f"sparse_delay: band={band!r}: expected an int >= 1 dividing the {coeff.shape[2]} taps per synapse "
            "(the taps come in runs of `band` consecutive offsets); pass band=1 for independent taps."
        )
    if values and band > 1 and offsets.numel():
        runs = offsets.reshape(*offsets.shape[:2], -1, band)
        step = torch.arange(band, device=offsets.device, dtype=offsets.dtype)
        if not bool(torch.equal(runs - runs[..., :1], step.expand_as(runs))):
            raise ValueError(
                f"sparse_delay: band={band} but some run of {band} taps is not {band} consecutive offsets "
                "(offsets[..., g * band + j] must equal offsets[..., g * band] + j); pass band=1 for independent taps."
            )


def _offset_buckets(offsets: torch.Tensor, steps: int):
    """Yield ``(d, mask)`` for every distinct offset ``d < steps``; ``mask [O, I, J]`` marks its taps."""
    for d in torch.unique(offsets).tolist():
        if d < steps:
            yield int(d), offsets == d


class _SparseDelayReference(torch.autograd.Function):
    """Bucketed pure-torch sparse delay: one dense matmul per distinct offset on time-shifted inputs.

    Memory beyond the output is one ``[O, I]`` matrix and one ``[O, I, J]`` mask at a time; only ``x``,
    ``coeff`` and ``offsets`` are saved for backward. Work is (number of distinct offsets) x a Linear.
    """

    @staticmethod
    def forward(ctx, x, coeff, offsets):
        steps, batch, _ = x.shape
        y = x.new_zeros(steps, batch, coeff.shape[0])
        for d, mask in _offset_buckets(offsets, steps):
            w = torch.where(mask, coeff, 0).sum(-1)  # [O, I]
            y[d:] += torch.matmul(x[: steps - d], w.t())
        ctx.save_for_backward(x, coeff, offsets)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        x, coeff, offsets = ctx.saved_tensors
        steps, batch, n_in = x.shape
        n_out = coeff.shape[0]
        need_x, need_c = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x = torch.zeros_like(x) if need_x else None
        grad_c = torch.zeros_like(coeff) if need_c else None
        for d, mask in _offset_buckets(offsets, steps):
            gy = grad_y[d:]
            if need_x:
                w = torch.where(mask, coeff, 0).sum(-1)
                grad_x[: steps - d] += torch.matmul(gy, w)
            if need_c:
                g = gy.reshape(-1, n_out).t() @ x[: steps - d].reshape(-1, n_in)  # [O, I]
                grad_c += torch.where(mask, g.unsqueeze(-1), 0)
        return grad_x, grad_c, None


def sparse_delay_reference(x: torch.Tensor, coeff: torch.Tensor, offsets: torch.Tensor, *,
                           check_values: bool = True) -> torch.Tensor:
    """Delayed sparse synapses in plain PyTorch (twin and oracle of ``dclszoo.kernels.delay.sparse_delay``).

    ``y[t, b, o] = sum_{i, j} coeff[o, i, j] * x[t - offsets[o, i, j], b, i]``; terms with
    ``t - offsets < 0`` are zero, so offsets ``>= T`` contribute nothing. Synapses are bucketed by offset value
    and each bucket is one dense matmul on the time-shifted input, so nothing of size ``O x I x J x T x B`` is
    ever built. Differentiable w.r.t. ``x`` and ``coeff``; runs on any device and floating dtype.

    Args:
        x: Input, time-major ``[T, B, I]``.
        coeff: Tap weights ``[O, I, J]`` (same dtype as ``x``).
        offsets: Integer delays in time steps ``[O, I, J]``, ``>= 0``.
        check_values: Check that no offset is negative (a device synchronisation on GPUs).

    Returns:
        ``y [T, B, O]``.
    """
    check_delay_args(x, coeff, offsets, values=check_values)
    return _SparseDelayReference.apply(x, coeff, offsets)
