"""Triton kernels of the DCLS kernel construction (private; used by :mod:`dclszoo.kernels.construct`).

``K[r, y, x] = sum_k w[r, k] * a0[r, k, y] * a1[r, k, x] / Z[r, k]`` for the ``R = O * I/g`` rows ``r`` of a 1-D or
2-D kernel (1-D: one axis of size 1 whose profile is 1). ``a_d`` is the per-axis profile of tap ``k`` (Gaussian
``exp(-(g - p)^2 / 2 s^2)`` on the centred grid ``g``, or the floor-form bilinear pair ``1 - r, r``), ``Z`` the
Gaussian normaliser ``sum(a0) * sum(a1) + 1e-7`` (1 for bilinear).

One launch per direction, one program per block of ``BR`` rows:

- forward: the ``[BR, S0, S1]`` kernel block is accumulated in registers over the taps (each tap: two profiles
  and one outer product, ``BR * S0 * S1`` FMAs) and stored once. Nothing but the kernel is written.
- backward: the upstream gradient block ``G [BR, S0, S1]`` is loaded once; per tap the profiles are recomputed
  and ``E0 = G a1`` (``[BR, S0]``), ``E1 = G^T a0`` give every parameter gradient in closed form:
  ``dL/dw = sum(E0 a0) / Z``, ``dL/dp_d = (w / Z) (sum(E_d a_d') - (dL/dw) S_other sum(a_d'))`` with ``a_d'`` the
  profile's derivative (Gaussian: ``a (g - p) / s^2`` for positions, ``a (g - p)^2 / s^3`` for sigma; bilinear:
  ``-1, +1`` at the two cells). Only the parameter gradients are written.

Work: ``R * K * S0 * S1`` FMAs forward, ~3x that backward, all in registers. For the largest layers of the
presets (a 768-channel depthwise kernel, 34 taps in 17 x 17; 256 x 256, 9 taps in 7 x 7) that is 7.5M and 29M
FMAs, microseconds on a GPU: the op costs about its launch plus writing the kernel (0.9 MB and 12.8 MB).

Positions are clamped into ``bounds`` with a straight-through gradient and sigma goes through
``max(|sigma|, floor)``, as in the other backends. Arithmetic is float32 whatever the parameters' dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .backend import pow2 as _pow2

__all__ = ["forward", "backward"]

_BLOCK_ELEMENTS = 4096  # rows per program x padded kernel size: registers of one program's kernel block


@triton.jit
def _profile(p, s, S: tl.constexpr, SP: tl.constexpr, HI, GAUSS: tl.constexpr):
    """Profile ``[BR, SP]`` of positions ``p [BR]`` on the centred grid of size ``S`` (zero past ``S``), its
    derivatives with respect to the position and to sigma (Gaussian; zeros for bilinear)."""
    g = (tl.arange(0, SP) - (S // 2)).to(tl.float32)[None, :]
    inside = (tl.arange(0, SP) < S)[None, :]
    if GAUSS:
        u = g - p[:, None]
        inv = 1.0 / s[:, None]
        a = tl.where(inside, tl.exp(-0.5 * (u * inv) * (u * inv)), 0.0)
        dp = a * u * inv * inv
        ds = dp * u * inv
    else:
        fl = tl.floor(p)
        # at the upper border p == hi, use the cell [hi - 1, hi] (same value, inward derivative)
        if S >= 2:
            fl = tl.where(p == HI, fl - 1.0, fl)
        r = (p - fl)[:, None]
        lo_cell = inside & (g == fl[:, None])
        hi_cell = inside & (g == fl[:, None] + 1.0)
        a = tl.where(lo_cell, 1.0 - r, 0.0) + tl.where(hi_cell, r, 0.0)
        dp = tl.where(hi_cell, 1.0, 0.0) - tl.where(lo_cell, 1.0, 0.0)
        ds = dp * 0.0
    return a, dp, ds


@triton.jit
def _tap(w_ptr, p_ptr, s_ptr, o, i, k, rmask,
         sw_o, sw_i, sw_k, sp_d, sp_o, sp_i, sp_k, ss_d, ss_o, ss_i, ss_k,
         d: tl.constexpr, lo, hi, floor, BOUNDED: tl.constexpr, FLOORED: tl.constexpr, GAUSS: tl.constexpr):
    """Position (clamped), effective sigma and the sigma chain factor of axis ``d`` of tap ``k``, ``[BR]`` each."""
    p = tl.load(p_ptr + d * sp_d + o * sp_o + i * sp_i + k * sp_k, mask=rmask, other=0.0).to(tl.float32)
    if BOUNDED:
        p = tl.minimum(tl.maximum(p, lo), hi)
    if GAUSS:
        s = tl.load(s_ptr + d * ss_d + o * ss_o + i * ss_i + k * ss_k, mask=rmask, other=1.0).to(tl.float32)
        if FLOORED:
            a = tl.abs(s)
            chain = tl.where(a >= floor, tl.where(s < 0, -1.0, 1.0), 0.0)
            s = tl.maximum(a, floor)
        else:
            chain = s * 0.0 + 1.0
    else:
        s = p * 0.0 + 1.0
        chain = s
    return p, s, chain


@triton.jit
def _tap_profiles(w_ptr, p_ptr, s_ptr, o, i, k, rmask,
                  sw_o, sw_i, sw_k, sp_d, sp_o, sp_i, sp_k, ss_d, ss_o, ss_i, ss_k,
                  lo0, hi0, lo1, hi1, floor, top0, top1,
                  S0: tl.constexpr, S1: tl.constexpr, S0P: tl.constexpr, S1P: tl.constexpr, NDIM: tl.constexpr,
                  GAUSS: tl.constexpr, BOUNDED: tl.constexpr, FLOORED: tl.constexpr):
    """Weight ``[BR]`` of tap ``k`` and, per axis, its profile, the profile's derivatives (position, sigma) and the
    sigma chain factor; axis 1 of a 1-D kernel is a profile of ones (zero derivatives)."""
    w = tl.load(w_ptr + o * sw_o + i * sw_i + k * sw_k, mask=rmask, other=0.0).to(tl.float32)
    p0, s0, c0 = _tap(w_ptr, p_ptr, s_ptr, o, i, k, rmask, sw_o, sw_i, sw_k, sp_d, sp_o, sp_i, sp_k,
                      ss_d, ss_o, ss_i, ss_k, 0, lo0, hi0, floor, BOUNDED, FLOORED, GAUSS)
    a0, dp0, ds0 = _profile(p0, s0, S0, S0P, top0, GAUSS)
    if NDIM == 2:
        p1, s1, c1 = _tap(w_ptr, p_ptr, s_ptr, o, i, k, rmask, sw_o, sw_i, sw_k, sp_d, sp_o, sp_i, sp_k,
                          ss_d, ss_o, ss_i, ss_k, 1, lo1, hi1, floor, BOUNDED, FLOORED, GAUSS)
        a1, dp1, ds1 = _profile(p1, s1, S1, S1P, top1, GAUSS)
    else:
        a1 = tl.full((p0.shape[0], S1P), 1.0, tl.float32)
        dp1 = a1 * 0.0
        ds1 = dp1
        c1 = c0
    return w, a0, dp0, ds0, c0, a1, dp1, ds1, c1


@triton.jit
def _construct_fwd(
    w_ptr, p_ptr, s_ptr, out_ptr, R, I, K,
    sw_o, sw_i, sw_k, sp_d, sp_o, sp_i, sp_k, ss_d, ss_o, ss_i, ss_k,
    lo0, hi0, lo1, hi1, floor, top0, top1,
    S0: tl.constexpr, S1: tl.constexpr, S0P: tl.constexpr, S1P: tl.constexpr, NDIM: tl.constexpr,
    GAUSS: tl.constexpr, BOUNDED: tl.constexpr, FLOORED: tl.constexpr, BR: tl.constexpr,
):
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    rmask = rows < R
    o = rows // I
    i = rows % I
    acc = tl.zeros((BR, S0P, S1P), dtype=tl.float32)
    for k in range(K):
        w, a0, _dp0, _ds0, _c0, a1, _dp1, _ds1, _c1 = _tap_profiles(
            w_ptr, p_ptr, s_ptr, o, i, k, rmask, sw_o, sw_i, sw_k, sp_d, sp_o, sp_i, sp_k, ss_d, ss_o, ss_i, ss_k,
            lo0, hi0, lo1, hi1, floor, top0, top1, S0, S1, S0P, S1P, NDIM, GAUSS, BOUNDED, FLOORED)
        scale = w
        if GAUSS:
            scale = w / (tl.sum(a0, axis=1) * tl.sum(a1, axis=1) + 1e-7)
        acc += scale[:, None, None] * a0[:, :, None] * a1[:, None, :]
    y = tl.arange(0, S0P)[None, :, None]
    x = tl.arange(0, S1P)[None, None, :]
    offs = rows[:, None, None] * (S0 * S1) + y * S1 + x
    tl.store(out_ptr + offs, acc, mask=rmask[:, None, None] & (y < S0) & (x < S1))


@triton.jit
def _construct_bwd(
    g_ptr, w_ptr, p_ptr, s_ptr, gw_ptr, gp_ptr, gs_ptr, R, I, K,
    sw_o, sw_i, sw_k, sp_d, sp_o, sp_i, sp_k, ss_d, ss_o, ss_i, ss_k,
    lo0, hi0, lo1, hi1, floor, top0, top1,
    S0: tl.constexpr, S1: tl.constexpr, S0P: tl.constexpr, S1P: tl.constexpr, NDIM: tl.constexpr,
    GAUSS: tl.constexpr, BOUNDED: tl.constexpr, FLOORED: tl.constexpr,
    NEED_W: tl.constexpr, NEED_P: tl.constexpr, NEED_S: tl.constexpr, BR: tl.constexpr,
):
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    rmask = rows < R
    o = rows // I
    i = rows % I
    y = tl.arange(0, S0P)[None, :, None]
    x = tl.arange(0, S1P)[None, None, :]
    offs = rows[:, None, None] * (S0 * S1) + y * S1 + x
    G = tl.load(g_ptr + offs, mask=rmask[:, None, None] & (y < S0) & (x < S1), other=0.0).to(tl.float32)
    RK = R * K  # gradients are written as [ndim, R, K], contiguous
    for k in range(K):
        w, a0, dp0, ds0, c0, a1, dp1, ds1, c1 = _tap_profiles(
            w_ptr, p_ptr, s_ptr, o, i, k, rmask, sw_o, sw_i, sw_k, sp_d, sp_o, sp_i, sp_k, ss_d, ss_o, ss_i, ss_k,
            lo0, hi0, lo1, hi1, floor, top0, top1, S0, S1, S0P, S1P, NDIM, GAUSS, BOUNDED, FLOORED)
        e0 = tl.sum(G * a1[:, None, :], axis=2)  # [BR, S0P]: the gradient reaching profile a0
        t = tl.sum(e0 * a0, axis=1)  # dL/d(w / Z)
        sum0 = tl.sum(a0, axis=1)
        sum1 = tl.sum(a1, axis=1)
        if GAUSS:
            inv_z = 1.0 / (sum0 * sum1 + 1e-7)
        else:
            inv_z = sum0 * 0.0 + 1.0
        tap = rows * K + k
        if NEED_W:
            tl.store(gw_ptr + tap, t * inv_z, mask=rmask)
        scale = w * inv_z
        shared = t * inv_z  # dL/dw: with Gaussians, the normaliser's share of dL/dp is -scale * shared * dZ/dp
        if NEED_P:
            gp0 = tl.sum(e0 * dp0, axis=1)
            if GAUSS:
                gp0 = gp0 - shared * sum1 * tl.sum(dp0, axis=1)
            tl.store(gp_ptr + tap, gp0 * scale, mask=rmask)
        if NEED_S:
            gs0 = tl.sum(e0 * ds0, axis=1) - shared * sum1 * tl.sum(ds0, axis=1)
            tl.store(gs_ptr + tap, gs0 * scale * c0, mask=rmask)
        if NDIM == 2:
            if NEED_P or NEED_S:
                e1 = tl.sum(G * a0[:, :, None], axis=1)  # [BR, S1P]: the gradient reaching profile a1
                if NEED_P:
                    gp1 = tl.sum(e1 * dp1, axis=1)
                    if GAUSS:
                        gp1 = gp1 - shared * sum0 * tl.sum(dp1, axis=1)
                    tl.store(gp_ptr + RK + tap, gp1 * scale, mask=rmask)
                if NEED_S:
                    gs1 = tl.sum(e1 * ds1, axis=1) - shared * sum0 * tl.sum(ds1, axis=1)
                    tl.store(gs_ptr + RK + tap, gs1 * scale * c1, mask=rmask)


class _Launch:
    """Shapes, strides and scalar settings shared by the two kernels' launches."""

    def __init__(self, weight, positions, sigma, span, gauss, bounds, sigma_floor):
        self.ndim = len(span)
        o, i, k = weight.shape
        self.o, self.i, self.k, self.rows = o, i, k, o * i
        self.s0, self.s1 = span[0], (span[1] if self.ndim == 2 else 1)
        self.s0p, self.s1p = _pow2(self.s0), _pow2(self.s1)
        self.br = max(1, min(_BLOCK_ELEMENTS // (self.s0p * self.s1p), _pow2(self.rows)))
        self.grid = (triton.cdiv(self.rows, self.br),)
        self.gauss = bool(gauss)
        self.weight, self.positions = weight, positions
        s = sigma.expand(positions.shape) if self.gauss else positions
        self.sigma = s
        lo, hi = bounds if bounds is not None else ((0.0,) * self.ndim, (0.0,) * self.ndim)
        lo, hi = list(lo) + [0.0], list(hi) + [0.0]
        # the bilinear cell choice at the grid's upper end (p == s - 1 - s // 2)
        tops = [float(s - 1 - s // 2) for s in (self.s0, self.s1)]
        self.scalars = (lo[0], hi[0], lo[1], hi[1], float(sigma_floor or 0.0), tops[0], tops[1])
        self.flags = dict(S0=self.s0, S1=self.s1, S0P=self.s0p, S1P=self.s1p, NDIM=self.ndim, GAUSS=self.gauss,
                          BOUNDED=bounds is not None, FLOORED=sigma_floor is not None, BR=self.br)

    def strides(self):
        return (*self.weight.stride(), *self.positions.stride(), *self.sigma.stride())


def forward(weight, positions, sigma, span, gauss, bounds, sigma_floor) -> torch.Tensor:
    """Dense kernel ``[O, I/g, *span]`` in float32; arguments as in :func:`dclszoo.functional.dcls_kernel`
    (``gauss`` a flag, ``bounds`` as ``(lows, highs)`` or None)."""
    span = tuple(int(s) for s in span)
    a = _Launch(weight, positions, sigma, span, gauss, bounds, sigma_floor)
    out = torch.empty((a.o, a.i) + span, device=weight.device, dtype=torch.float32)
    if a.rows == 0:
        return out
    if a.k == 0:
        return out.zero_()
    _construct_fwd[a.grid](weight, positions, a.sigma, out, a.rows, a.i, a.k, *a.strides(), *a.scalars, **a.flags)
    return out


def backward(grad, weight, positions, sigma, span, gauss, bounds, sigma_floor, need_w, need_p, need_s):
    """``(grad_weight, grad_positions, grad_sigma)`` in float32, None where not needed; the sigma gradient is
    summed to sigma's (broadcast) shape."""
    span = tuple(int(s) for s in span)
    a = _Launch(weight, positions, sigma, span, gauss, bounds, sigma_floor)
    need_s = bool(need_s and a.gauss)
    dev, f32 = weight.device, torch.float32
    gw = torch.empty(weight.shape, device=dev, dtype=f32) if need_w else None
    gp = torch.empty(positions.shape, device=dev, dtype=f32) if need_p else None
    gs = torch.empty(positions.shape, device=dev, dtype=f32) if need_s else None
    if a.rows and a.k and (need_w or need_p or need_s):
        g = grad if grad.is_contiguous() else grad.contiguous()  # e.g. the expanded gradient of kernel.sum()
        unused = g  # pointer for the gradients not wanted (never written)
        _construct_bwd[a.grid](
            g, weight, positions, a.sigma, unused if gw is None else gw, unused if gp is None else gp,
            unused if gs is None else gs, a.rows, a.i, a.k, *a.strides(), *a.scalars,
            NEED_W=bool(need_w), NEED_P=bool(need_p), NEED_S=need_s, **a.flags,
        )
    else:
        for t in (gw, gp, gs):
            if t is not None:
                t.zero_()
    if gs is not None and tuple(sigma.shape) != tuple(positions.shape):
        s4 = (1,) * (positions.dim() - sigma.dim()) + tuple(sigma.shape)
        gs = gs.sum_to_size(s4).reshape(sigma.shape)
    return gw, gp, gs

