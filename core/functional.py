"""Functional DCLS ops: the lean dense-kernel construction and the DCLS convolution.

The dense kernel of a DCLS convolution is, per (out, in) pair, a sum over taps of products of per-axis 1-D
profiles (both interpolations are separable across axes). :func:`dcls_kernel` builds it as batched matrix
products and has a hand-written backward that recomputes the profiles, so neither direction ever holds the
``prod(span) x ndim x O x I/g x kc`` tensor that the plain formula (:mod:`dclszoo.reference`) needs. Work is
done in row chunks so that temporaries stay a fraction of the dense kernel's own size.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .reference import GAUSS_EPS, dcls_kernel_reference

__all__ = ["dcls_kernel", "dcls_kernel_reference", "dcls_conv", "INTERPOLATIONS"]

INTERPOLATIONS = ("gauss", "bilinear")

# Temporaries of one chunk are kept under this fraction of the dense kernel (and this many elements at least).
_CHUNK_FRACTION = 0.25
_MIN_CHUNK_ELEMENTS = 1 << 16


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _profiles(p: torch.Tensor, s: torch.Tensor | None, span: tuple[int, ...], interpolation: str):
    """Per-axis 1-D profiles ``A[d]: [n, K, S_d]`` and what their derivatives need.

    Returns a list of ``(A, u, dA_dp)`` per axis: for gauss ``u`` is the normalised distance and ``dA_dp`` is
    None; for bilinear ``u`` is None and ``dA_dp`` the (+1/-1) derivative pattern of the floor form.
    """
    out = []
    for d, size in enumerate(span):
        x = torch.arange(size, device=p.device, dtype=p.dtype) - (size // 2)
        pd = p[d].unsqueeze(-1)
        if interpolation == "gauss":
            u = (x - pd) / s[d].unsqueeze(-1)
            out.append((torch.exp(-0.5 * u * u), u, None))
        else:
            fl = torch.floor(pd)
            r = pd - fl
            lo = (x == fl).to(p.dtype)
            hi = (x == fl + 1).to(p.dtype)
            out.append((lo * (1 - r) + hi * r, None, hi - lo))
    return out


def _contract_forward(scale: torch.Tensor, a: list[torch.Tensor]) -> torch.Tensor:
    """``sum_k scale[n,k] * A0[n,k,:] x A1[n,k,:] x ...`` as batched matmuls -> ``[n, *span]``."""
    n = scale.shape[0]
    if len(a) == 1:
        return torch.bmm(scale.unsqueeze(1), a[0]).squeeze(1)
    left = (a[0] * scale.unsqueeze(-1)).transpose(1, 2)  # [n, S0, K]
    if len(a) == 2:
        return torch.bmm(left, a[1])
    right = (a[1].unsqueeze(-1) * a[2].unsqueeze(-2)).flatten(2)  # [n, K, S1*S2]
    return torch.bmm(left, right).view(n, a[0].shape[-1], a[1].shape[-1], a[2].shape[-1])


def _contract_backward(g: torch.Tensor, a: list[torch.Tensor]) -> list[torch.Tensor]:
    """For each axis d: ``E_d[n,k,x_d] = sum_{other axes} g[n, ...] * prod_{e != d} A_e[n,k,x_e]``."""
    if len(a) == 1:
        return [g.unsqueeze(1).expand_as(a[0])]
    if len(a) == 2:
        e0 = torch.bmm(a[1], g.transpose(1, 2))  # [n, K, S0]
        e1 = torch.bmm(a[0], g)  # [n, K, S1]
        return [e0, e1]
    n, s0, s1, s2 = g.shape
    h = torch.bmm(a[2], g.reshape(n, s0 * s1, s2).transpose(1, 2)).view(n, -1, s0, s1)  # [n, K, S0, S1]
    e0 = (h * a[1].unsqueeze(-2)).sum(-1)
    e1 = (h * a[0].unsqueeze(-1)).sum(-2)
    outer = (a[0].unsqueeze(-1) * a[1].unsqueeze(-2)).flatten(2)  # [n, K, S0*S1]
    e2 = torch.bmm(outer, g.reshape(n, s0 * s1, s2))
    return [e0, e1, e2]


def _scale(w: torch.Tensor, sums: list[torch.Tensor] | None):
    if sums is None:
        return w, None
    prod = sums[0]
    for s_d in sums[1:]:
        prod = prod * s_d
    return w / (prod + GAUSS_EPS), prod


def _chunk_rows(rows: int, per_row_tmp: int, per_row_dense: int) -> int:
    budget = max(_MIN_CHUNK_ELEMENTS, int(_CHUNK_FRACTION * per_row_dense * rows))
    return max(1, min(rows, budget // max(1, per_row_tmp)))


def _per_row_tmp(k: int, span: tuple[int, ...]) -> int:
    extra = span[1] * span[2] if len(span) == 3 else 0
    return 4 * k * (sum(span) + extra)


class _DclsKernel(torch.autograd.Function):
    """Autograd op building the dense kernel; backward recomputes per-axis profiles chunk by chunk."""

    @staticmethod
    def forward(ctx, weight, positions, sigma, span, interpolation):
        ndim = positions.shape[0]
        o, i, k = weight.shape
        out_dtype = weight.dtype
        cdt = _compute_dtype(out_dtype)
        w = weight.reshape(o * i, k).to(cdt)
        p = positions.reshape(ndim, o * i, k).to(cdt)
        s = None
        if interpolation == "gauss":
            s = sigma.to(cdt).expand(ndim, o, i, k).reshape(ndim, o * i, k)
        rows = o * i
        out = torch.empty((rows,) + span, device=weight.device, dtype=cdt)
        step = _chunk_rows(rows, _per_row_tmp(k, span), math.prod(span))
        for a in range(0, rows, step):
            b = min(rows, a + step)
            prof = _profiles(p[:, a:b], None if s is None else s[:, a:b], span, interpolation)
            sums = [pr[0].sum(-1) for pr in prof] if interpolation == "gauss" else None
            scale, _ = _scale(w[a:b], sums)
            out[a:b] = _contract_forward(scale, [pr[0] for pr in prof])
        ctx.save_for_backward(weight, positions, sigma)
        ctx.span = span
        ctx.interpolation = interpolation
        return out.view((o, i) + span).to(out_dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        weight, positions, sigma = ctx.saved_tensors
        span, interpolation = ctx.span, ctx.interpolation
        ndim = positions.shape[0]
        o, i, k = weight.shape
        cdt = _compute_dtype(weight.dtype)
        rows = o * i
        w = weight.reshape(rows, k).to(cdt)
        p = positions.reshape(ndim, rows, k).to(cdt)
        g = grad.reshape((rows,) + span).to(cdt)
        gauss = interpolation == "gauss"
        s = sigma.to(cdt).expand(ndim, o, i, k).reshape(ndim, rows, k) if gauss else None
        need_w, need_p, need_s = ctx.needs_input_grad[:3]
        need_s = need_s and gauss
        gw = torch.empty_like(w) if need_w else None
        gp = torch.empty_like(p) if need_p else None
        gs = torch.empty((ndim, rows, k), device=w.device, dtype=cdt) if need_s else None
        step = _chunk_rows(rows, 2 * _per_row_tmp(k, span), math.prod(span))
        for a in range(0, rows, step):
            b = min(rows, a + step)
            prof = _profiles(p[:, a:b], None if s is None else s[:, a:b], span, interpolation)
            prof_a = [pr[0] for pr in prof]
            sums = [x.sum(-1) for x in prof_a] if gauss else None
            scale, prod = _scale(w[a:b], sums)
            contr = _contract_backward(g[a:b], prof_a)
            gscale = (contr[0] * prof_a[0]).sum(-1)  # dL/dscale [n, K]
            if gw is not None:
                gw[a:b] = gscale / (prod + GAUSS_EPS) if gauss else gscale
            if gp is None and gs is None:
                continue
            if gauss:
                gprod = -gscale * scale / (prod + GAUSS_EPS)  # dL/dP
            for d, (a_d, u, dadp) in enumerate(prof):
                dl_da = contr[d] * scale.unsqueeze(-1)
                if gauss:
                    others = 1
                    for e in range(ndim):
                        if e != d:
                            others = others * sums[e]
                    dl_da = dl_da + (gprod * others).unsqueeze(-1)
                    t = dl_da * a_d * u
                    inv_s = 1.0 / s[d, a:b]
                    if gp is not None:
                        gp[d, a:b] = t.sum(-1) * inv_s
                    if gs is not None:
                        gs[d, a:b] = (t * u).sum(-1) * inv_s
                elif gp is not None:
                    gp[d, a:b] = (dl_da * dadp).sum(-1)
        gw = gw.view(o, i, k).to(weight.dtype) if gw is not None else None
        gp = gp.view(ndim, o, i, k).to(positions.dtype) if gp is not None else None
        if gs is not None:
            gs = gs.view(ndim, o, i, k)
            gs = gs.sum_to_size(sigma.shape).to(sigma.dtype)
        return gw, gp, gs, None, None


def _check_op_args(weight, positions, sigma, span, interpolation):
    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"interpolation={interpolation!r} is not supported: expected one of {INTERPOLATIONS}."
        )
    if weight.dim() != 3:
        raise ValueError(f"weight must be [O, I/groups, kernel_count], got shape {tuple(weight.shape)}.")
    if positions.dim() != 4 or tuple(positions.shape[1:]) != tuple(weight.shape):
        raise ValueError(
            f"positions must be [ndim, {', '.join(map(str, weight.shape))}] to match weight, "
            f"got shape {tuple(positions.shape)}."
        )
    if len(span) != positions.shape[0]:
        raise ValueError(f"span={tuple(span)} has {len(span)} axes but positions has {positions.shape[0]}.")
    if not 1 <= len(span) <= 3:
        raise ValueError(f"span={tuple(span)}: only 1, 2 or 3 spatial axes are supported.")
    if any(int(x) < 1 for x in span):
        raise ValueError(f"span={tuple(span)}: every axis must be >= 1.")


def dcls_kernel(
    weight: torch.Tensor,
    positions: torch.Tensor,
    sigma: torch.Tensor | float | None,
    span: Sequence[int],
    interpolation: str = "gauss",
) -> torch.Tensor:
    """Build the dense DCLS kernel ``[O, I/g, *span]`` from taps, without a ``prod(span)``-per-tap tensor.

    ``K[o,i,x] = sum_k w[o,i,k] * phi(x - c - p[:,o,i,k]) / Z[o,i,k]`` with ``c = span // 2``. For ``'gauss'``,
    ``phi`` is a Gaussian of standard deviation ``sigma`` and ``Z`` its sum over the span plus ``1e-7``; for
    ``'bilinear'``, ``phi`` is the floor-form bilinear interpolation (``Z = 1``), which keeps a non-zero
    position gradient at integer positions.

    Args:
        weight: Tap weights ``[O, I/g, kc]``.
        positions: Kernel-centred positions ``[ndim, O, I/g, kc]`` (0 = centre of the span).
        sigma: Gaussian standard deviations broadcastable to ``positions``; ``None`` for bilinear.
        span: Dense kernel size per spatial axis.
        interpolation: ``'gauss'`` or ``'bilinear'``.

    Returns:
        Dense kernel ``[O, I/g, *span]`` in ``weight``'s dtype.
    """
    span = tuple(int(x) for x in span)
    _check_op_args(weight, positions, sigma, span, interpolation)
    if interpolation == "gauss":
        if sigma is None:
            raise ValueError("sigma=None: the 'gauss' interpolation needs a standard deviation.")
        if not isinstance(sigma, torch.Tensor):
            sigma = torch.tensor(float(sigma), device=positions.device, dtype=positions.dtype)
    else:
        sigma = positions.new_zeros(())
    return _DclsKernel.apply(weight, positions, sigma, span, interpolation)


def dcls_conv(
    input: torch.Tensor,
    weight: torch.Tensor,
    positions: torch.Tensor,
    sigma: torch.Tensor | float | None,
    span: Sequence[int],
    bias: torch.Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    interpolation: str = "gauss",
) -> torch.Tensor:
    """DCLS convolution: :func:`dcls_kernel` followed by the ordinary ``conv{1,2,3}d`` with it."""
    kernel = dcls_kernel(weight, positions, sigma, span, interpolation)
    conv = (F.conv1d, F.conv2d, F.conv3d)[len(span) - 1]
    return conv(input, kernel.to(input.dtype), bias, stride, padding, dilation, groups)
