"""Chunk-level building blocks of :func:`dclszoo.functional.dcls_kernel` (private).

Everything here works on one chunk of ``n`` (out, in) rows: per-axis profiles ``[axes, n, K, S]`` (axes of
equal size stacked), their contraction into the dense kernel (forward) and the contractions and reductions of
the hand-written backward. ``plan`` is the op's ``_Plan``: span, axis groups, coordinate grids and constants.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import GAUSS_EPS


def gauss_profiles(plan, p: torch.Tensor, s: torch.Tensor, size: int, out: torch.Tensor | None = None):
    """Gaussian profiles ``A [g, n, K, S]`` of positions ``p [g, n, K]`` with std ``s`` (into ``out``)."""
    a = torch.sub(plan.grids[size], p.unsqueeze(-1), out=out)
    a.square_().mul_(torch.square(s).reciprocal_().mul_(-0.5).unsqueeze(-1)).clamp_(min=-plan.tail).exp_()
    # exp of very negative numbers (underflow, denormals, -inf) is several times slower than of -tail
    return F.threshold(a, plan.tail_value, 0.0, inplace=True)


def bilinear_profiles(plan, p: torch.Tensor, size: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Bilinear profiles ``relu(1 - |x - p|)`` (the values of the floor form) ``[g, n, K, S]`` (into ``out``)."""
    return torch.sub(plan.grids[size], p.unsqueeze(-1), out=out).abs_().neg_().add_(1.0).relu_()


def profiles(plan, p: torch.Tensor, s: torch.Tensor | None) -> list[torch.Tensor]:
    """Profiles per axis group, ``A_g [axes, n, K, S]``."""
    if plan.gauss:
        return [gauss_profiles(plan, p[lo:hi], s[lo:hi], size) for lo, hi, size in plan.groups]
    return [bilinear_profiles(plan, p[lo:hi], size) for lo, hi, size in plan.groups]


def axes(groups: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t for g in groups for t in g.unbind(0)]


def scale_and_sums(plan, w: torch.Tensor, prof: list[torch.Tensor]):
    """``(scale, sums, denom)``: tap weight over its normaliser (gauss); ``sums [ndim, n, K]``."""
    if not plan.gauss:
        return w, None, None
    sums = torch.cat([plan.lastsum(a) for a in prof]) if len(prof) > 1 else plan.lastsum(prof[0])
    denom = (sums.prod(0) if plan.ndim > 1 else sums[0]) + GAUSS_EPS
    return w / denom, sums, denom


def contract_forward(scale: torch.Tensor, a: list[torch.Tensor], out: torch.Tensor) -> None:
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


def contract_backward(g: torch.Tensor, a: list[torch.Tensor], e: list[torch.Tensor]) -> None:
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


class SigmaGrad:
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


def rows_view(t: torch.Tensor, shape4: tuple[int, ...]) -> torch.Tensor:
    """``t`` broadcast to ``[ndim, O, I, K]`` as ``[ndim, O*I, K]``, without a copy whenever strides allow."""
    full = t.expand(shape4)
    try:
        return full.view(shape4[0], -1, shape4[3])
    except RuntimeError:
        return full.reshape(shape4[0], -1, shape4[3])


def bounds_tensors(bounds, like: torch.Tensor):
    """``(lows, highs)`` of python floats as ``[ndim, 1, 1]`` tensors (or None)."""
    if bounds is None:
        return None
    return tuple(torch.tensor(b, device=like.device, dtype=like.dtype).view(-1, 1, 1) for b in bounds)


def clamp_positions(p: torch.Tensor, bounds: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Positions clamped into ``bounds`` (value only: the backward passes gradients straight through)."""
    return p if bounds is None else torch.maximum(torch.minimum(p, bounds[1]), bounds[0])


def floor_sigma(s: torch.Tensor, sigma_floor: float | None) -> torch.Tensor:
    return s if sigma_floor is None else s.abs().clamp_min(sigma_floor)


def profile_into(plan, p: torch.Tensor, s: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """The single profile group of a 1-D construction, written into ``out [1, n, 1, S]``."""
    if plan.gauss:
        return gauss_profiles(plan, p, s, plan.span[0], out=out)
    return bilinear_profiles(plan, p, plan.span[0], out=out)


def tap_grads(plan, g: torch.Tensor, prof: list[torch.Tensor], times_profile: bool) -> list[torch.Tensor]:
    """Per group ``E_g [axes, n, K, S]`` (``E * A`` when ``times_profile``): grad reaching each axis profile."""
    if plan.ndim == 1:
        g1 = g.unsqueeze(-2).unsqueeze(0)  # [1, n, 1, S]
        return [prof[0] * g1 if times_profile else g1.expand_as(prof[0])]
    e_groups = [torch.empty_like(a) for a in prof]
    contract_backward(g, axes(prof), axes(e_groups))
    if times_profile:
        for e, a in zip(e_groups, prof):
            e.mul_(a)
    return e_groups


def gauss_backward(plan, g, p, s, chain, scale, sums, denom, prof, gw, gp, gs, a, b):
    ea = tap_grads(plan, g, prof, times_profile=True)  # E_d * A_d, per group
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


def bilinear_backward(plan, g, p, scale, prof, gw, gp, a, b):
    e = axes(tap_grads(plan, g, prof, times_profile=False))  # E_d per axis
    fl = torch.floor(p)
    for d, size in enumerate(plan.span):  # at the upper border p == hi use the cell [hi - 1, hi] (inward slope)
        if size >= 2:
            fl[d] -= (p[d] == size - 1 - size // 2).to(fl.dtype)
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
