"""Functional DCLS ops: the lean dense-kernel construction and the DCLS convolution.

The dense kernel of a DCLS convolution is, per (out, in) pair, a sum over taps of products of per-axis 1-D
profiles (both interpolations are separable across axes). :func:`dcls_kernel` builds it as batched matrix
products and has a hand-written backward that recomputes the profiles, so neither direction ever holds the
``prod(span) x ndim x O x I/g x kc`` tensor that the plain formula (:mod:`dclszoo.reference`) needs. Work is
done in chunks of (out, in) rows whose temporaries stay a small fraction of the dense kernel's own size, with
in-place arithmetic so that each chunk holds at most three profile-sized tensors.

Gaussian profile values below ``exp(-25)`` (float32; ``exp(-200)`` in float64) of the peak are set to zero: far
below the float precision of the result, and it keeps denormal numbers (very slow on CPUs) out of the products.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .reference import GAUSS_EPS, dcls_kernel_reference

__all__ = ["dcls_kernel", "dcls_kernel_reference", "dcls_conv", "INTERPOLATIONS"]

INTERPOLATIONS = ("gauss", "bilinear")

# Chunking: the temporaries of one chunk may use what is left of a budget of _MEMORY_ENVELOPE dense kernels
# once the output kernel (forward) and the parameter gradients (backward) are counted, but never less than
# _CHUNK_FRACTION of the dense kernel nor fewer than _MIN_CHUNK_ELEMENTS elements.
_MEMORY_ENVELOPE = 1.8
_CHUNK_FRACTION = 0.05
_MIN_CHUNK_ELEMENTS = 1 << 14
_GAUSS_TAIL = {torch.float32: 25.0, torch.float64: 200.0}


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class _Plan:
    """Static description of one construction: shapes, axis groups, grids and chunking."""

    def __init__(self, rows: int, k: int, span: tuple[int, ...], interpolation: str, like: torch.Tensor):
        self.rows, self.k, self.span, self.ndim = rows, k, span, len(span)
        self.gauss = interpolation == "gauss"
        # Axes of equal size are processed together as one stacked [axes, n, K, S] tensor.
        if len(set(span)) == 1:
            self.groups = [(0, self.ndim, span[0])]
        else:
            self.groups = [(d, d + 1, size) for d, size in enumerate(span)]
        self.grids = {size: torch.arange(size, device=like.device, dtype=like.dtype) - (size // 2) for size in span}
        self.ones = {size: torch.ones(size, device=like.device, dtype=like.dtype) for size in span}
        self.tail = _GAUSS_TAIL.get(like.dtype, 25.0)
        self.tail_value = math.exp(-self.tail)
        cube = k * span[1] * span[2] if self.ndim == 3 else 0
        # Elements of temporaries per row: profile-sized tensors plus a few [ndim, n, K] ones.
        small = k * self.ndim
        self.fwd_row = 4 * small if (self.ndim == 1 and k == 1) else k * sum(span) + 4 * small + cube
        self.bwd_row = 2 * k * sum(span) + 10 * small + 2 * cube
        self.profile_in_output = self.ndim == 1 and k == 1

    def chunks(self, per_row: int, reserved: int = 0):
        """Row ranges whose temporaries (``per_row`` elements a row) fit the budget left after ``reserved``."""
        dense = self.rows * math.prod(self.span)
        fraction = max(_CHUNK_FRACTION, _MEMORY_ENVELOPE - 1.0 - reserved / dense)
        budget = max(_MIN_CHUNK_ELEMENTS, int(fraction * dense))
        step = max(1, min(self.rows, budget // max(1, per_row)))
        for a in range(0, self.rows, step):
            yield a, min(self.rows, a + step)

    def lastsum(self, t: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Sum over the last axis of a contiguous tensor as one matrix-vector product (faster than ``sum``)."""
        size = t.shape[-1]
        flat = t.view(-1, size)
        if out is None:
            return torch.mv(flat, self.ones[size]).view(t.shape[:-1])
        torch.mv(flat, self.ones[size], out=out.view(-1))
        return out


def _gauss(plan: _Plan, p: torch.Tensor, s: torch.Tensor, size: int, out: torch.Tensor | None = None):
    """Gaussian profiles ``A [g, n, K, S]`` of positions ``p [g, n, K]`` with std ``s`` (into ``out``)."""
    a = torch.sub(plan.grids[size], p.unsqueeze(-1), out=out)
    a.square_().mul_(torch.square(s).reciprocal_().mul_(-0.5).unsqueeze(-1)).clamp_(min=-plan.tail).exp_()
    return F.threshold(a, plan.tail_value, 0.0, inplace=True)


def _bilinear(plan: _Plan, p: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear profiles ``relu(1 - |x - p|)`` (the values of the floor form) ``[g, n, K, S]``."""
    return (plan.grids[size] - p.unsqueeze(-1)).abs_().neg_().add_(1.0).relu_()


def _profiles(plan: _Plan, p: torch.Tensor, s: torch.Tensor | None) -> list[torch.Tensor]:
    """Profiles per axis group, ``A_g [axes, n, K, S]``."""
    if plan.gauss:
        return [_gauss(plan, p[lo:hi], s[lo:hi], size) for lo, hi, size in plan.groups]
    return [_bilinear(plan, p[lo:hi], size) for lo, hi, size in plan.groups]


def _axes(groups: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t for g in groups for t in g.unbind(0)]


def _scale(plan: _Plan, w: torch.Tensor, prof: list[torch.Tensor]):
    """``(scale, sums, denom)``: tap weight over its normaliser (gauss); ``sums [ndim, n, K]``."""
    if not plan.gauss:
        return w, None, None
    sums = torch.cat([plan.lastsum(a) for a in prof]) if len(prof) > 1 else plan.lastsum(prof[0])
    denom = (sums.prod(0) if plan.ndim > 1 else sums[0]) + GAUSS_EPS
    return w / denom, sums, denom


def _contract_forward(scale: torch.Tensor, a: list[torch.Tensor], out: torch.Tensor) -> None:
    """``out[n] = sum_k scale[n,k] * A0[n,k,:] x A1[n,k,:] x ...`` (overwrites ``a[0]``)."""
    n, k = scale.shape
    if len(a) == 1:
        if k == 1:
            torch.mul(a[0][:, 0], scale, out=out)
        else:
            torch.sum(a[0].mul_(scale.unsqueeze(-1)), dim=1, out=out)
        return
    left = a[0].mul_(scale.unsqueeze(-1)).transpose(1, 2)  # [n, S0, K]
    if len(a) == 2:
        torch.bmm(left, a[1], out=out)
        return
    right = (a[1].unsqueeze(-1) * a[2].unsqueeze(-2)).flatten(2)  # [n, K, S1*S2]
    torch.bmm(left, right, out=out.view(n, out.shape[1], -1))


def _contract_backward(g: torch.Tensor, a: list[torch.Tensor], e: list[torch.Tensor]) -> None:
    """``e[d][n,k,x_d] = sum_{other axes} g[n, ...] * prod_{e != d} A_e[n,k,x_e]`` written into ``e``."""
    if len(a) == 2:
        torch.bmm(a[1], g.transpose(1, 2), out=e[0])
        torch.bmm(a[0], g, out=e[1])
        return
    n, s0, s1, s2 = g.shape
    flat = g.reshape(n, s0, s1 * s2)
    outer = (a[1].unsqueeze(-1) * a[2].unsqueeze(-2)).flatten(2)  # [n, K, S1*S2]
    torch.bmm(outer, flat.transpose(1, 2), out=e[0])
    del outer
    h = torch.bmm(a[0], flat).view(n, -1, s1, s2)  # [n, K, S1, S2]
    torch.sum(h * a[2].unsqueeze(-2), dim=-1, out=e[1])
    torch.sum(h.mul_(a[1].unsqueeze(-1)), dim=-2, out=e[2])


class _SigmaGrad:
    """Gradient buffer for a sigma of any broadcast shape, filled chunk by chunk without a full-size copy."""

    def __init__(self, sigma: torch.Tensor, shape4: tuple[int, ...], rows: int, dtype: torch.dtype):
        ndim, o, i, k = shape4
        self.sigma, self.shape4 = sigma, shape4
        s4 = (1,) * (4 - sigma.dim()) + tuple(sigma.shape)
        self.s4 = s4
        self.full = s4 == shape4
        self.shared_rows = s4[1] == 1 and s4[2] == 1
        if self.full or not self.shared_rows:
            self.buf = torch.zeros((ndim, rows, k), device=sigma.device, dtype=dtype)
        else:
            self.buf = torch.zeros((s4[0], 1, s4[3]), device=sigma.device, dtype=dtype)

    def add(self, a: int, b: int, chunk: torch.Tensor) -> None:
        if self.full or not self.shared_rows:
            self.buf[:, a:b] = chunk
        else:
            self.buf += chunk.sum_to_size(self.buf.shape)

    def result(self) -> torch.Tensor:
        if self.full:
            g = self.buf.view(self.shape4)
        elif self.shared_rows:
            g = self.buf.view(self.s4)
        else:
            g = self.buf.view(self.shape4).sum_to_size(self.s4)
        return g.reshape(self.sigma.shape).to(self.sigma.dtype)


def _rows_view(t: torch.Tensor, shape4: tuple[int, ...]) -> torch.Tensor:
    """``t`` broadcast to ``[ndim, O, I, K]`` as ``[ndim, O*I, K]``, without a copy whenever strides allow."""
    full = t.expand(shape4)
    try:
        return full.view(shape4[0], -1, shape4[3])
    except RuntimeError:
        return full.reshape(shape4[0], -1, shape4[3])


class _DclsKernel(torch.autograd.Function):
    """Autograd op building the dense kernel; backward recomputes per-axis profiles chunk by chunk."""

    @staticmethod
    def forward(ctx, weight, positions, sigma, span, interpolation, bounds, sigma_floor):
        ndim = positions.shape[0]
        o, i, k = weight.shape
        shape4 = (ndim, o, i, k)
        cdt = _compute_dtype(weight.dtype)
        w = weight.reshape(o * i, k).to(cdt)
        p = positions.reshape(ndim, o * i, k).to(cdt)
        plan = _Plan(o * i, k, span, interpolation, p)
        s = _rows_view(sigma.to(cdt), shape4) if plan.gauss else None
        bounds_t = _bounds(bounds, p)
        out = torch.empty((o * i,) + span, device=weight.device, dtype=cdt)
        for a, b in plan.chunks(plan.fwd_row):
            p_ab = _clamp(p[:, a:b], bounds_t)
            s_ab = None if s is None else _floor(s[:, a:b], sigma_floor)
            if plan.profile_in_output:  # 1-D, one tap: the profile is built in the output itself
                prof = [_profile_into(plan, p_ab, s_ab, out[a:b].unsqueeze(0).unsqueeze(2))]
                scale, _, _ = _scale(plan, w[a:b], prof)
                out[a:b].mul_(scale)
                continue
            prof = _profiles(plan, p_ab, s_ab)
            scale, _, _ = _scale(plan, w[a:b], prof)
            _contract_forward(scale, _axes(prof), out[a:b])
            del prof  # or it would still be alive while the next chunk's profiles are built
        ctx.save_for_backward(weight, positions, sigma)
        ctx.span, ctx.interpolation, ctx.bounds, ctx.sigma_floor = span, interpolation, bounds, sigma_floor
        return out.view((o, i) + span).to(weight.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        weight, positions, sigma = ctx.saved_tensors
        span, interpolation, bounds, sigma_floor = ctx.span, ctx.interpolation, ctx.bounds, ctx.sigma_floor
        ndim = positions.shape[0]
        o, i, k = weight.shape
        shape4, rows = (ndim, o, i, k), o * i
        cdt = _compute_dtype(weight.dtype)
        w = weight.reshape(rows, k).to(cdt)
        p = positions.reshape(ndim, rows, k).to(cdt)
        plan = _Plan(rows, k, span, interpolation, p)
        g = grad.reshape((rows,) + span).to(cdt)
        s = _rows_view(sigma.to(cdt), shape4) if plan.gauss else None
        need_w, need_p, need_s = ctx.needs_input_grad[:3]
        gw = torch.empty((rows, k), device=w.device, dtype=cdt) if need_w else None
        gp = torch.empty((ndim, rows, k), device=w.device, dtype=cdt) if need_p else None
        gs = _SigmaGrad(sigma, shape4, rows, cdt) if need_s and plan.gauss else None
        bounds_t = _bounds(bounds, p)
        reserved = sum(t.numel() for t in (gw, gp) if t is not None) + (gs.buf.numel() if gs is not None else 0)
        for a, b in plan.chunks(plan.bwd_row, reserved):
            p_ab = _clamp(p[:, a:b], bounds_t)
            s_raw = None if s is None else s[:, a:b]
            s_ab = None if s is None else _floor(s_raw, sigma_floor)
            prof = _profiles(plan, p_ab, s_ab)
            scale, sums, denom = _scale(plan, w[a:b], prof)
            g_ab = g[a:b].contiguous()  # e.g. the expanded gradient of kernel.sum(): copy one chunk at a time
            if plan.gauss:
                chain = None if sigma_floor is None else torch.sign(s_raw) * (s_raw.abs() >= sigma_floor)
                _gauss_backward(plan, g_ab, p_ab, s_ab, chain, scale, sums, denom, prof, gw, gp, gs, a, b)
            else:
                _bilinear_backward(plan, g_ab, p_ab, scale, prof, gw, gp, a, b)
            del prof
        gw = gw.view(o, i, k).to(weight.dtype) if gw is not None else None
        gp = gp.view(shape4).to(positions.dtype) if gp is not None else None
        return gw, gp, (gs.result() if gs is not None else None), None, None, None, None


def _bounds(bounds, like: torch.Tensor):
    """``(lows, highs)`` of python floats as ``[ndim, 1, 1]`` tensors (or None)."""
    if bounds is None:
        return None
    return tuple(torch.tensor(b, device=like.device, dtype=like.dtype).view(-1, 1, 1) for b in bounds)


def _clamp(p: torch.Tensor, bounds: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Positions clamped into ``bounds`` (value only: the backward passes gradients straight through)."""
    return p if bounds is None else torch.maximum(torch.minimum(p, bounds[1]), bounds[0])


def _floor(s: torch.Tensor, sigma_floor: float | None) -> torch.Tensor:
    return s if sigma_floor is None else s.abs().clamp_min(sigma_floor)


def _profile_into(plan: _Plan, p: torch.Tensor, s: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """The single profile group of a 1-D construction, written into ``out [1, n, 1, S]``."""
    if plan.gauss:
        return _gauss(plan, p, s, plan.span[0], out=out)
    return out.copy_(_bilinear(plan, p, plan.span[0]))


def _tap_grads(plan: _Plan, g: torch.Tensor, prof: list[torch.Tensor], times_profile: bool) -> list[torch.Tensor]:
    """Per group ``E_g [axes, n, K, S]`` (``E * A`` when ``times_profile``): grad reaching each axis profile."""
    if plan.ndim == 1:
        g1 = g.unsqueeze(-2).unsqueeze(0)  # [1, n, 1, S]
        return [prof[0] * g1 if times_profile else g1.expand_as(prof[0])]
    e_groups = [torch.empty_like(a) for a in prof]
    _contract_backward(g, _axes(prof), _axes(e_groups))
    if times_profile:
        for e, a in zip(e_groups, prof):
            e.mul_(a)
    return e_groups


def _gauss_backward(plan, g, p, s, chain, scale, sums, denom, prof, gw, gp, gs, a, b):
    ea = _tap_grads(plan, g, prof, times_profile=True)  # E_d * A_d, per group
    gscale = plan.lastsum(ea[0][0])  # dL/dscale [n, K]
    if gw is not None:
        torch.div(gscale, denom, out=gw[a:b])
    if gp is None and gs is None:
        return
    gprod = gscale.mul_(scale).div_(denom).neg_()  # dL/d(normaliser product)
    if plan.ndim == 1:
        coef = gprod.unsqueeze(0)
    elif plan.ndim == 2:
        coef = sums.flip(0).mul_(gprod)
    else:
        coef = torch.stack([sums[1] * sums[2], sums[0] * sums[2], sums[0] * sums[1]]).mul_(gprod)
    # coef[d]: the normaliser's share of dL/dA_d (the same at every grid point)
    inv_s2 = (s * s).reciprocal_()
    moments = torch.empty((2,) + coef.shape, device=coef.device, dtype=coef.dtype)
    for (lo, hi, size), t, a_g in zip(plan.groups, ea, prof):
        t.mul_(scale.unsqueeze(-1)).addcmul_(a_g, coef[lo:hi].unsqueeze(-1))  # (dL/dA) * A
        d = torch.sub(plan.grids[size], p[lo:hi].unsqueeze(-1), out=a_g)  # x - p, in A's storage
        plan.lastsum(t.mul_(d), out=moments[0, lo:hi])
        if gs is not None:
            plan.lastsum(t.mul_(d), out=moments[1, lo:hi])
    if gp is not None:
        torch.mul(moments[0], inv_s2, out=gp[:, a:b])
    if gs is not None:
        gsig = moments[1].mul_(inv_s2).div_(s)
        gs.add(a, b, gsig if chain is None else gsig.mul_(chain))


def _bilinear_backward(plan, g, p, scale, prof, gw, gp, a, b):
    e = _axes(_tap_grads(plan, g, prof, times_profile=False))  # E_d per axis
    fl = torch.floor(p)
    r = p - fl
    vals = []  # per axis: E_d at floor(p) and floor(p) + 1 (zero where outside the span)
    for d, size in enumerate(plan.span):
        idx = (fl[d] + (size // 2)).long().unsqueeze(-1)
        pair = torch.cat([idx, idx + 1], dim=-1)  # [n, K, 2]
        valid = (pair >= 0) & (pair < size)
        vals.append(torch.gather(e[d], -1, pair.clamp(0, size - 1)).mul_(valid))
    if gw is not None:
        gw[a:b] = vals[0][..., 0] * (1 - r[0]) + vals[0][..., 1] * r[0]
    if gp is not None:
        for d in range(plan.ndim):
            gp[d, a:b] = (vals[d][..., 1] - vals[d][..., 0]) * scale


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
    *,
    position_bounds: tuple[Sequence[float], Sequence[float]] | None = None,
    sigma_floor: float | None = None,
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
        position_bounds: Optional ``(lows, highs)`` per axis: positions are clamped into them in value while
            their gradient passes straight through (no dead zone at the border). Done chunk by chunk, so it
            costs no position-sized temporary (unlike clamping before the call).
        sigma_floor: Optional: use ``max(|sigma|, sigma_floor)`` as the std (gradient of ``abs`` and of the
            floor applied), again without a sigma-sized temporary.

    Returns:
        Dense kernel ``[O, I/g, *span]`` in ``weight``'s dtype.
    """
    span = tuple(int(x) for x in span)
    _check_op_args(weight, positions, sigma, span, interpolation)
    if position_bounds is not None:
        if len(position_bounds) != 2 or any(len(b) != len(span) for b in position_bounds):
            raise ValueError(
                f"position_bounds={position_bounds!r}: expected (lows, highs), each with {len(span)} floats."
            )
        position_bounds = tuple(tuple(float(v) for v in b) for b in position_bounds)
    if sigma_floor is not None and not (math.isfinite(sigma_floor) and sigma_floor > 0):
        raise ValueError(f"sigma_floor={sigma_floor!r}: expected a positive finite float or None.")
    if interpolation == "gauss":
        if sigma is None:
            raise ValueError("sigma=None: the 'gauss' interpolation needs a standard deviation.")
        if not isinstance(sigma, torch.Tensor):
            sigma = torch.tensor(float(sigma), device=positions.device, dtype=positions.dtype)
    else:
        sigma = positions.new_zeros(())
    return _DclsKernel.apply(weight, positions, sigma, span, interpolation, position_bounds, sigma_floor)


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
