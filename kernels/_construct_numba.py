"""Numba CPU kernels of the DCLS kernel construction (private; imported lazily by :mod:`dclszoo.kernels.construct`).

Work unit: a block of ``LANES = 16`` consecutive (out, in) rows held "lane-major" in small per-thread arrays
(``A[k, x, lane]``: tap ``k``, grid point ``x``, row ``lane``), so that every vector operation covers the 16
rows of a block whatever the span and the tap count are. The hot loops are explicit 16-wide vector code
(:mod:`dclszoo.kernels._simd_numba`). Per block:

- forward: the block's parameters with the position clamp and the sigma floor applied (fused: nothing
  parameter-sized is allocated), per-axis profiles ``A_d[k, x_d]`` and their sums ``Z_d`` (one vector ``exp``
  per grid point), tap scales ``w / (prod_d Z_d + 1e-7)`` (bilinear: ``w``), the sum over taps of outer
  products of the profiles, and a store into the block's output rows through 16 x 16 transposes;
- backward: the same profiles again, the upstream gradient rows read once (transposed into the block),
  ``E_d[k, x_d]`` = the gradient contracted with the other axis' profile, then per tap the weight, position
  (straight through the clamp) and sigma (through ``max(|s|, floor)``) gradients.

1-D constructions are 2-D ones whose second axis has size 1 and profile 1. Gaussian values below
``exp(-tail)`` of the peak are zero, as in the torch path (:mod:`dclszoo._construct`).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._simd_numba import WIDTH, vdot, vgauss_grads, vgauss_profile, vtranspose

LANES = WIDTH  # rows per block

_F = np.float32
_ONE, _ZERO = _F(1.0), _F(0.0)
_EPS = _F(1e-7)  # dclszoo.reference.GAUSS_EPS

_OPTS = dict(parallel=True, fastmath=True, nogil=True, cache=True, error_model="numpy")
_INNER = dict(fastmath=True, nogil=True, inline="always", error_model="numpy")


@njit(**_INNER)
def _load_params(w, p, s, r0, rows, ndim, gauss, lo, hi, bounded, floor, wl, pl, sl, chain):  # pragma: no cover
    """Block parameters, lane-major, from ``w [R, K]``, ``p [D, R, K]``, ``s [D, R, K]`` (any strides): weights
    ``wl [K, L]``, clamped positions ``pl [D, K, L]``, effective std ``sl [D, K, L]`` and the sigma chain
    factor ``chain [D, K, L]`` (lanes past the last row repeat it)."""
    k_taps = w.shape[1]
    for lane in range(LANES):
        row = min(r0 + lane, rows - 1)
        for k in range(k_taps):
            wl[k, lane] = w[row, k]
        for d in range(ndim):
            for k in range(k_taps):
                pl[d, k, lane] = p[d, row, k]
            if gauss:
                for k in range(k_taps):
                    sl[d, k, lane] = s[d, row, k]
    n = k_taps * LANES
    plf, slf, chf = pl.reshape(pl.size), sl.reshape(sl.size), chain.reshape(chain.size)
    if bounded:
        for d in range(ndim):
            low, high = lo[d], hi[d]
            for j in range(d * n, (d + 1) * n):
                plf[j] = min(max(plf[j], low), high)
    if gauss and floor > _ZERO:
        for j in range(ndim * n):
            sv = slf[j]
            av = abs(sv)
            chf[j] = ((_ONE if sv >= _ZERO else -_ONE) if av >= floor else _ZERO)
            slf[j] = max(av, floor)


@njit(**_INNER)
def _bilinear_profile(pl, a):  # pragma: no cover - jitted
    """Floor-form bilinear profile ``a[k, x, L]``: ``1 - r`` at ``floor(p)``, ``r`` at ``floor(p) + 1``; a position
    exactly at the upper border uses the cell below it (inward derivative)."""
    k_taps, size = a.shape[0], a.shape[1]
    c = size // 2
    top = _F(size - 1 - c)
    for k in range(k_taps):
        for x in range(size):
            xc = _F(x - c)
            for lane in range(LANES):
                pv = pl[k, lane]
                fl = np.floor(pv)
                if size >= 2 and pv == top:
                    fl -= _ONE
                r = pv - fl
                a[k, x, lane] = (_ONE - r) if xc == fl else (r if xc == fl + _ONE else _ZERO)


@njit(**_INNER)
def _profiles(ndim, gauss, pl, sl, tail, a0, a1, z0, z1):  # pragma: no cover - jitted
    """Profiles ``a_d [K, S_d, L]`` and (Gaussian) their sums ``z_d [K, L]`` of the block's taps."""
    for d in range(ndim):
        a, z = (a0, z0) if d == 0 else (a1, z1)
        k_taps, size = a.shape[0], a.shape[1]
        if gauss:
            af, zf, pf, sf = a.reshape(a.size), z.reshape(z.size), pl[d].reshape(z.size), sl[d].reshape(z.size)
            for k in range(k_taps):
                vgauss_profile(af, k * size * LANES, zf, k * LANES, pf, sf, k * LANES, _F(-(size // 2)), size, tail)
        else:
            _bilinear_profile(pl[d], a)


@njit(**_INNER)
def _scale(gauss, ndim, wl, z0, z1, sc, den):  # pragma: no cover - jitted
    """``sc = w / den`` with ``den = prod_d Z_d + 1e-7`` (Gaussian) or 1 (bilinear), all ``[K, L]``."""
    wf, z0f, z1f, scf, denf = wl.reshape(wl.size), z0.reshape(wl.size), z1.reshape(wl.size), sc.reshape(wl.size), \
        den.reshape(wl.size)
    for j in range(wl.size):
        dv = (z0f[j] * z1f[j] + _EPS) if gauss else _ONE
        denf[j] = dv
        scf[j] = wf[j] / dv


@njit(**_INNER)
def _store_rows(accf, out, r0, valid, m):  # pragma: no cover - jitted
    """Block result ``accf [m, L]`` (flat) into output rows ``out[(r0 + lane) * m + j]`` (flat)."""
    if valid == LANES and m >= LANES:
        for j0 in range(0, m - LANES + 1, LANES):
            vtranspose(accf, j0 * LANES, LANES, out, r0 * m + j0, m)
        if m % LANES:  # the last columns: one more (overlapping) block, rewriting equal values
            vtranspose(accf, (m - LANES) * LANES, LANES, out, r0 * m + m - LANES, m)
    else:
        for lane in range(valid):
            for j in range(m):
                out[(r0 + lane) * m + j] = accf[j * LANES + lane]


@njit(**_INNER)
def _load_rows(g, r0, valid, m, glf):  # pragma: no cover - jitted
    """Upstream gradient rows ``g[(r0 + lane) * m + j]`` (flat) into the block ``glf [m, L]`` (0 past the end)."""
    if valid == LANES and m >= LANES:
        for j0 in range(0, m - LANES + 1, LANES):
            vtranspose(g, r0 * m + j0, m, glf, j0 * LANES, LANES)
        if m % LANES:
            vtranspose(g, r0 * m + m - LANES, m, glf, (m - LANES) * LANES, LANES)
    else:
        glf[:] = _ZERO
        for lane in range(valid):
            for j in range(m):
                glf[j * LANES + lane] = g[(r0 + lane) * m + j]


@njit(**_OPTS)
def construct_forward(w, p, s, ndim, gauss, lo, hi, bounded, floor, tail, n_chunks, s0, s1, out):  # pragma: no cover
    """Dense kernel rows, flat ``out [R * S0 * S1]`` (``S1 = 1`` in 1-D), of ``w [R, K]``, ``p [D, R, K]`` and
    ``s [D, R, K]`` (any strides; ``p`` again for bilinear)."""
    rows, k_taps = w.shape
    m = s0 * s1
    n_blocks = (rows + LANES - 1) // LANES
    per = (n_blocks + n_chunks - 1) // n_chunks
    for chunk in prange(n_chunks):
        wl = np.empty((k_taps, LANES), dtype=np.float32)
        pl = np.zeros((2, k_taps, LANES), dtype=np.float32)
        sl = np.ones((2, k_taps, LANES), dtype=np.float32)
        chain = np.ones((2, k_taps, LANES), dtype=np.float32)
        a0 = np.empty((k_taps, s0, LANES), dtype=np.float32)
        a1 = np.ones((k_taps, s1, LANES), dtype=np.float32)
        bk = np.empty(k_taps * s0 * LANES, dtype=np.float32)
        z0 = np.empty((k_taps, LANES), dtype=np.float32)
        z1 = np.ones((k_taps, LANES), dtype=np.float32)
        sc = np.empty((k_taps, LANES), dtype=np.float32)
        den = np.empty((k_taps, LANES), dtype=np.float32)
        accf = np.empty(m * LANES, dtype=np.float32)
        a0f, a1f, scf = a0.reshape(a0.size), a1.reshape(a1.size), sc.reshape(sc.size)
        for block in range(chunk * per, min(n_blocks, (chunk + 1) * per)):
            r0 = block * LANES
            _load_params(w, p, s, r0, rows, ndim, gauss, lo, hi, bounded, floor, wl, pl, sl, chain)
            _profiles(ndim, gauss, pl, sl, tail, a0, a1, z0, z1)
            _scale(gauss, ndim, wl, z0, z1, sc, den)
            if ndim == 1:  # acc[x] = sum_k sc[k] a0[k, x]
                for x0 in range(s0):
                    vdot(accf, x0 * LANES, False, scf, 0, LANES, a0f, x0 * LANES, s0 * LANES, k_taps)
            else:  # acc[x0, x1] = sum_k (sc a0)[k, x0] a1[k, x1]
                for j in range(k_taps * s0):
                    vdot(bk, j * LANES, False, scf, (j // s0) * LANES, 0, a0f, j * LANES, 0, 1)
                for x0 in range(s0):
                    for x1 in range(s1):
                        vdot(accf, (x0 * s1 + x1) * LANES, False, bk, x0 * LANES, s0 * LANES,
                             a1f, x1 * LANES, s1 * LANES, k_taps)
            _store_rows(accf, out, r0, min(LANES, rows - r0), m)


@njit(**_OPTS)
def construct_backward(
    w, p, s, g, ndim, gauss, lo, hi, bounded, floor, tail, n_chunks, s0, s1, need_w, need_p, need_s, gs_full,
    gw, gp, gs, gs_part,
):  # pragma: no cover - jitted
    """Gradients of :func:`construct_forward` for the flat upstream ``g [R * S0 * S1]``: ``gw [R, K]``,
    ``gp [D, R, K]`` (straight through the clamp) and, for a Gaussian with ``need_s``, the sigma gradient per
    entry into ``gs [D, R, K]`` (``gs_full``) or summed over rows per chunk into ``gs_part [n_chunks, D, K]``."""
    rows, k_taps = w.shape
    m = s0 * s1
    n_blocks = (rows + LANES - 1) // LANES
    per = (n_blocks + n_chunks - 1) // n_chunks
    need_taps = need_p or (need_s and gauss)
    for chunk in prange(n_chunks):
        wl = np.empty((k_taps, LANES), dtype=np.float32)
        pl = np.zeros((2, k_taps, LANES), dtype=np.float32)
        sl = np.ones((2, k_taps, LANES), dtype=np.float32)
        chain = np.ones((2, k_taps, LANES), dtype=np.float32)
        a0 = np.empty((k_taps, s0, LANES), dtype=np.float32)
        a1 = np.ones((k_taps, s1, LANES), dtype=np.float32)
        z0 = np.empty((k_taps, LANES), dtype=np.float32)
        z1 = np.ones((k_taps, LANES), dtype=np.float32)
        sc = np.empty((k_taps, LANES), dtype=np.float32)
        den = np.empty((k_taps, LANES), dtype=np.float32)
        glf = np.empty(m * LANES, dtype=np.float32)
        e0f = np.empty(k_taps * s0 * LANES, dtype=np.float32)
        e1f = np.empty(k_taps * s1 * LANES, dtype=np.float32)
        gsc = np.empty((k_taps, LANES), dtype=np.float32)
        res = np.zeros((2, 2, k_taps, LANES), dtype=np.float32)  # (position, sigma) x axis
        a0f, a1f, gscf = a0.reshape(a0.size), a1.reshape(a1.size), gsc.reshape(gsc.size)
        for block in range(chunk * per, min(n_blocks, (chunk + 1) * per)):
            r0 = block * LANES
            valid = min(LANES, rows - r0)
            _load_params(w, p, s, r0, rows, ndim, gauss, lo, hi, bounded, floor, wl, pl, sl, chain)
            _profiles(ndim, gauss, pl, sl, tail, a0, a1, z0, z1)
            _scale(gauss, ndim, wl, z0, z1, sc, den)
            _load_rows(g, r0, valid, m, glf)
            # E_0[k, x0] = sum_x1 g[x0, x1] A_1[k, x1] (1-D: g itself); E_1[k, x1] = sum_x0 g[x0, x1] A_0[k, x0]
            if ndim == 1:
                e_0, e_tap0 = glf, 0
            else:
                e_0, e_tap0 = e0f, s0 * LANES
                for k in range(k_taps):
                    for x0 in range(s0):
                        vdot(e0f, (k * s0 + x0) * LANES, False, glf, x0 * s1 * LANES, LANES,
                             a1f, k * s1 * LANES, LANES, s1)
                    if need_taps:
                        for x1 in range(s1):
                            vdot(e1f, (k * s1 + x1) * LANES, False, glf, x1 * LANES, s1 * LANES,
                                 a0f, k * s0 * LANES, LANES, s0)
            for k in range(k_taps):  # dL/dscale[k] = sum_x0 A_0[k, x0] E_0[k, x0]
                vdot(gscf, k * LANES, False, a0f, k * s0 * LANES, LANES, e_0, k * e_tap0, LANES, s0)
            if need_taps:
                _tap_grads(ndim, gauss, pl, sl, chain, a0f, a1f, e_0, e1f, e_tap0, s0, s1, z0, z1, sc, den, gsc, res)
            _write_grads(r0, valid, ndim, chunk, need_w, need_p, need_s and gauss, gs_full, gsc, den, res,
                         gw, gp, gs, gs_part)


@njit(**_INNER)
def _tap_grads(ndim, gauss, pl, sl, chain, a0f, a1f, e0f, e1f, e_tap0, s0, s1, z0, z1, sc, den, gsc, res):
    # pragma: no cover - jitted
    """Position and sigma gradients per axis and tap into ``res[0|1, d, k, L]``; ``e_tap0`` is the offset between
    taps in ``e0f`` (0 in 1-D, where every tap sees the gradient itself)."""
    k_taps = sc.shape[0]
    n = k_taps * LANES
    scf, gscf, denf, resf = sc.reshape(n), gsc.reshape(n), den.reshape(n), res.reshape(res.size)
    for d in range(ndim):
        size = s0 if d == 0 else s1
        af = a0f if d == 0 else a1f
        ef = e0f if d == 0 else e1f
        e_tap = e_tap0 if d == 0 else s1 * LANES
        c = size // 2
        if gauss:  # zo: the other axis' sums (ones in 1-D)
            zo = z1.reshape(n) if d == 0 else z0.reshape(n)
            pf, sf, cf = pl[d].reshape(n), sl[d].reshape(n), chain[d].reshape(n)
            for k in range(k_taps):
                vgauss_grads(resf, (d * k_taps + k) * LANES, ((2 + d) * k_taps + k) * LANES, ef, k * e_tap,
                             af, k * size * LANES, pf, sf, cf, scf, gscf, denf, zo, k * LANES, _F(-c), size)
        else:  # dA_d/dp_d = +1 at floor(p) + 1 and -1 at floor(p) (inside the span)
            top = _F(size - 1 - c)
            for k in range(k_taps):
                for lane in range(LANES):
                    pv = pl[d, k, lane]
                    fl = np.floor(pv)
                    if size >= 2 and pv == top:
                        fl -= _ONE
                    idx = np.int64(fl) + c
                    acc = _ZERO
                    if 0 <= idx < size:
                        acc -= ef[k * e_tap + idx * LANES + lane]
                    if 0 <= idx + 1 < size:
                        acc += ef[k * e_tap + (idx + 1) * LANES + lane]
                    res[0, d, k, lane] = acc * sc[k, lane]


@njit(**_INNER)
def _write_grads(r0, valid, ndim, chunk, need_w, need_p, need_s, gs_full, gsc, den, res, gw, gp, gs, gs_part):
    # pragma: no cover - jitted
    """The block's gradients from lane-major ``[.., K, L]`` into the row-major outputs."""
    k_taps = gsc.shape[0]
    if need_w:
        for lane in range(valid):
            for k in range(k_taps):
                gw[r0 + lane, k] = gsc[k, lane] / den[k, lane]
    for d in range(ndim):
        if need_p:
            for lane in range(valid):
                for k in range(k_taps):
                    gp[d, r0 + lane, k] = res[0, d, k, lane]
        if need_s and gs_full:
            for lane in range(valid):
                for k in range(k_taps):
                    gs[d, r0 + lane, k] = res[1, d, k, lane]
        elif need_s:
            for k in range(k_taps):
                total = _ZERO
                for lane in range(valid):
                    total += res[1, d, k, lane]
                gs_part[chunk, d, k] += total
