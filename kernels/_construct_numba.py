"""Numba CPU kernels of the DCLS kernel construction (private; imported lazily by :mod:`dclszoo.kernels.construct`).

Work unit: a block of ``LANES = 16`` consecutive (out, in) rows held "lane-major" in small per-thread arrays
(``A[k, x, lane]``: tap ``k``, grid point ``x``, row ``lane``; all scratch is flat and allocated once per thread
chunk), so that every vector operation covers the 16 rows of a block whatever the span and the tap count are.
The hot loops are explicit 16-wide vector code (:mod:`dclszoo.kernels._simd_numba`). Per block:

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

from ._gauss_simd_numba import vgauss_grads, vgauss_profile
from ._simd_numba import (
    TILE, WIDTH, vclamp, vcopy, vdot, vfloor_sigma, vgather, vprefetch, vscale, vscatter, vtile, vtranspose,
)

LANES = WIDTH  # rows per block

_F = np.float32
_ONE, _ZERO = _F(1.0), _F(0.0)
_EPS = _F(1e-7)  # dclszoo.reference.GAUSS_EPS

_OPTS = dict(parallel=True, fastmath=True, nogil=True, cache=True, error_model="numpy")
_INNER = dict(fastmath=True, nogil=True, inline="always", error_model="numpy")
_CALLED = dict(fastmath=True, nogil=True, error_model="numpy")  # compiled once, called


@njit(**_CALLED)
def _tile(dst, d0, dr, dc, x, x0, xs, xr, y, y0, ys, yc, n, rows, cols):  # pragma: no cover - jitted
    """:func:`vtile` compiled once as a function of its own (its 16 shapes inlined at every call site would
    lengthen the first compilation by a third)."""
    vtile(dst, d0, dr, dc, x, x0, xs, xr, y, y0, ys, yc, n, rows, cols)


@njit(**_INNER)
def _tiles(dst, d0, dr, dc, x, x0, xs, xr, y, y0, ys, yc, n, rows, cols):  # pragma: no cover - jitted
    """``dst[d0 + r*dr + c*dc]`` = sum_j ``x[x0 + j*xs + r*xr] * y[y0 + j*ys + c*yc]`` (vectors of ``W``) for
    ``r < rows``, ``c < cols``: a small matrix product in register tiles of up to ``TILE x TILE`` (:func:`vtile`)."""
    for r in range(0, rows, TILE):
        tr = min(TILE, rows - r)
        for c in range(0, cols, TILE):
            _tile(dst, d0 + r * dr + c * dc, dr, dc, x, x0 + r * xr, xs, xr, y, y0 + c * yc, ys, yc, n, tr,
                  min(TILE, cols - c))


@njit(**_INNER)
def _tap_rows_in(src, base, k_taps, tmp, dst, d0):  # pragma: no cover - jitted
    """The block's 16 contiguous rows of ``K <= 16`` taps, ``src[base : base + 16 K]``, lane-major into
    ``dst[d0 : d0 + K L]`` through one 16 x 16 transpose (``tmp``: 512 floats of scratch). Where ``src`` and
    ``dst`` have room for whole 16-float rows (``dst`` ends in ``LANES * LANES`` floats of slack), in place."""
    if base + (LANES - 1) * k_taps + LANES <= src.shape[0] and d0 + LANES * LANES <= dst.shape[0]:
        vtranspose(src, base, k_taps, dst, d0, LANES)  # taps past K land in what follows (written later, or slack)
        return
    vcopy(tmp, 0, src, base, k_taps)
    vtranspose(tmp, 0, k_taps, tmp, LANES * LANES, LANES)
    vcopy(dst, d0, tmp, LANES * LANES, k_taps)


@njit(**_INNER)
def _tap_rows_out(src, s0, k_taps, tmp, dst, base, spill):  # pragma: no cover - jitted
    """Inverse of :func:`_tap_rows_in`: lane-major ``src[s0 : s0 + K L]`` (``src`` with slack) into the 16 contiguous
    rows ``dst[base : base + 16 K]``; directly when ``spill`` (the ``16 - K`` floats after them may be overwritten:
    the next block, written later by the same thread)."""
    if spill:
        vtranspose(src, s0, LANES, dst, base, k_taps)  # rows in order: each overwrites the last one's excess
        return
    vcopy(tmp, 0, src, s0, k_taps)
    vtranspose(tmp, 0, LANES, tmp, LANES * LANES, k_taps)  # rows in order: each overwrites the last one's excess
    vcopy(dst, base, tmp, LANES * LANES, k_taps)


@njit(**_INNER)
def _load_params(w, p, s, st, r0, rows, k_taps, ndim, gauss, lo, hi, bounded, floor, wl, pl, sl, chain, tmp):
    # pragma: no cover - jitted
    """Block parameters, lane-major: weights ``wl [K, L]``, clamped positions ``pl [D, K, L]``, effective std
    ``sl [D, K, L]`` and the sigma chain factor ``chain [D, K, L]`` (lanes past the last row repeat it).

    ``w``, ``p`` and ``s`` are flat storage; element ``(d, row, k)`` of each is at ``d * st[j, 0] + row * st[j, 1]
    + k * st[j, 2]`` with ``j`` = 0, 1, 2 for ``w``, ``p``, ``s`` (zero strides for broadcast sigma).
    """
    if r0 + LANES <= rows:  # rows of contiguous taps (K <= 16): transposed; otherwise gathered
        if st[0, 2] == 1 and st[0, 1] == k_taps and 1 < k_taps <= LANES:
            _tap_rows_in(w, r0 * k_taps, k_taps, tmp, wl, 0)
        else:
            for k in range(k_taps):
                vgather(wl, k * LANES, w, r0 * st[0, 1] + k * st[0, 2], st[0, 1])
        for d in range(ndim):
            if st[1, 2] == 1 and st[1, 1] == k_taps and 1 < k_taps <= LANES:
                _tap_rows_in(p, d * st[1, 0] + r0 * k_taps, k_taps, tmp, pl, d * k_taps * LANES)
            else:
                for k in range(k_taps):
                    vgather(pl, (d * k_taps + k) * LANES, p, d * st[1, 0] + r0 * st[1, 1] + k * st[1, 2], st[1, 1])
            if gauss and st[2, 2] == 1 and st[2, 1] == k_taps and 1 < k_taps <= LANES:
                _tap_rows_in(s, d * st[2, 0] + r0 * k_taps, k_taps, tmp, sl, d * k_taps * LANES)
            elif gauss:
                for k in range(k_taps):
                    vgather(sl, (d * k_taps + k) * LANES, s, d * st[2, 0] + r0 * st[2, 1] + k * st[2, 2], st[2, 1])
    else:
        for lane in range(LANES):
            row = min(r0 + lane, rows - 1)
            for k in range(k_taps):
                wl[k * LANES + lane] = w[row * st[0, 1] + k * st[0, 2]]
                for d in range(ndim):
                    j = (d * k_taps + k) * LANES + lane
                    pl[j] = p[d * st[1, 0] + row * st[1, 1] + k * st[1, 2]]
                    if gauss:
                        sl[j] = s[d * st[2, 0] + row * st[2, 1] + k * st[2, 2]]
    if bounded:
        for d in range(ndim):
            for k in range(k_taps):
                vclamp(pl, (d * k_taps + k) * LANES, lo[d], hi[d])
    if gauss and floor > _ZERO:
        for j in range(ndim * k_taps):
            vfloor_sigma(sl, chain, j * LANES, floor)


@njit(**_INNER)
def _cell(pv, top, size, c):  # pragma: no cover - jitted
    """Floor-form bilinear cell of position ``pv``: grid index of ``floor(p)`` and ``r = p - floor(p)``; a position
    exactly at the upper border ``top`` uses the cell below it (``r = 1``), so its derivative looks inward."""
    fl = np.floor(pv)
    if size >= 2 and pv == top:
        fl -= _ONE
    return np.int64(fl) + c, pv - fl


@njit(**_INNER)
def _bilinear_profile(pl, p0, k_taps, size, a):  # pragma: no cover - jitted
    """Floor-form bilinear profile ``a [K, S, L]``: ``1 - r`` at ``floor(p)``, ``r`` at ``floor(p) + 1``, with the
    positions ``pl[p0 + k * L + lane]``; a position exactly at the upper border uses the cell below it."""
    c = size // 2
    top = _F(size - 1 - c)
    a[: k_taps * size * LANES] = _ZERO
    for k in range(k_taps):
        for lane in range(LANES):
            idx, r = _cell(pl[p0 + k * LANES + lane], top, size, c)
            if 0 <= idx < size:
                a[(k * size + idx) * LANES + lane] = _ONE - r
            if 0 <= idx + 1 < size:
                a[(k * size + idx + 1) * LANES + lane] = r


@njit(**_INNER)
def _profiles(ndim, gauss, k_taps, s0, s1, pl, sl, tail, thr, a0, a1, z0, z1):  # pragma: no cover - jitted
    """Profiles ``a_d [K, S_d, L]`` and (Gaussian) their sums ``z_d [K, L]`` of the block's taps."""
    for d in range(ndim):
        size = s0 if d == 0 else s1
        a, z = (a0, z0) if d == 0 else (a1, z1)
        off = d * k_taps * LANES
        if gauss:
            for k in range(k_taps):
                vgauss_profile(a, k * size * LANES, z, k * LANES, pl, sl, off + k * LANES, _F(-(size // 2)), size,
                               tail, thr)
        else:
            _bilinear_profile(pl, off, k_taps, size, a)


@njit(**_INNER)
def _scale(gauss, n, wl, z0, z1, sc, den):  # pragma: no cover - jitted
    """``sc = w / den`` with ``den = prod_d Z_d + 1e-7`` (Gaussian; ``[K, L]``); bilinear: ``sc = w`` (``den`` is
    not used).

    Bilinear scales are copied, not divided by 1: under fastmath, LLVM may turn a division into a reciprocal
    estimate refined by a Newton step (seen on AVX2 hosts), which is not exact even for a divisor of 1, and
    ``from_dense`` promises bit-exact kernels."""
    if not gauss:
        sc[:n] = wl[:n]
        return
    for j in range(n):
        dv = z0[j] * z1[j] + _EPS
        den[j] = dv
        sc[j] = wl[j] / dv


@njit(**_INNER)
def _store_rows(accf, out, r0, valid, m):  # pragma: no cover - jitted
    """Block result ``accf [m, L]`` into output rows ``out[(r0 + lane) * m + j]`` (flat)."""
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


@njit(**_INNER)
def _buf(size, fill):  # pragma: no cover - jitted
    """Scratch of ``size`` floats filled with ``fill``, starting on a 64-byte boundary (numba's arrays are only
    32-byte aligned: every other 16-wide vector access would then straddle two cache lines)."""
    raw = np.empty(size + LANES, dtype=np.float32)
    skip = (-(raw.ctypes.data // 4)) % LANES
    out = raw[skip: skip + size]
    out[:] = fill
    return out


def _scratch(k_taps, s0, s1):  # pragma: no cover - inlined by numba as a plain function call
    n = k_taps * LANES
    slack = LANES * LANES  # whole 16 x 16 transposes in and out of the parameter blocks (_tap_rows_in/_out)
    return (_buf(n + slack, _ZERO), _buf(2 * n + slack, _ZERO), _buf(2 * n + slack, _ONE), _buf(2 * n, _ONE),
            _buf(n * s0, _ZERO),
            _buf(n * s1, _ONE), _buf(n, _ZERO), _buf(n, _ONE), _buf(n, _ZERO), _buf(n, _ONE))


_scratch = njit(**_INNER)(_scratch)


@njit(**_OPTS)
def construct_forward(
    w, p, s, st, rows, k_taps, ndim, gauss, lo, hi, bounded, floor, tail, thr, n_chunks, s0, s1, out,
):
    # pragma: no cover - jitted
    """Dense kernel rows, flat ``out [R * S0 * S1]`` (``S1 = 1`` in 1-D), of the taps ``w [R, K]``,
    ``p [D, R, K]`` and ``s [D, R, K]`` given as flat storage and element strides ``st`` (see
    :func:`_load_params`; ``p`` again for bilinear)."""
    m = s0 * s1
    n = k_taps * LANES
    n_blocks = (rows + LANES - 1) // LANES
    per = (n_blocks + n_chunks - 1) // n_chunks
    for chunk in prange(n_chunks):
        wl, pl, sl, chain, a0, a1, z0, z1, sc, den = _scratch(k_taps, s0, s1)
        bk = _buf(n * s0, _ZERO)
        tmp = _buf(2 * LANES * LANES, _ZERO)
        acc = _buf(m * LANES, _ZERO)
        for block in range(chunk * per, min(n_blocks, (chunk + 1) * per)):
            r0 = block * LANES
            _load_params(w, p, s, st, r0, rows, k_taps, ndim, gauss, lo, hi, bounded, floor, wl, pl, sl, chain, tmp)
            _profiles(ndim, gauss, k_taps, s0, s1, pl, sl, tail, thr, a0, a1, z0, z1)
            _scale(gauss, n, wl, z0, z1, sc, den)
            if ndim == 1 and k_taps == 1:  # one tap (synaptic delays): a scaled profile
                vscale(acc, 0, a0, 0, sc, 0, s0)
            elif ndim == 1:  # acc[x] = sum_k sc[k] a0[k, x]
                _tiles(acc, 0, 0, LANES, sc, 0, LANES, 0, a0, 0, s0 * LANES, LANES, k_taps, 1, s0)
            else:  # acc[x0, x1] = sum_k (sc a0)[k, x0] a1[k, x1]
                for k in range(k_taps):
                    vscale(bk, k * s0 * LANES, a0, k * s0 * LANES, sc, k * LANES, s0)
                _tiles(acc, 0, s1 * LANES, LANES, bk, 0, s0 * LANES, LANES, a1, 0, s1 * LANES, LANES, k_taps, s0, s1)
            _store_rows(acc, out, r0, min(LANES, rows - r0), m)
            vprefetch(out, (r0 + LANES) * m, LANES * m, True)  # the next block's output rows


@njit(**_OPTS)
def construct_backward(
    w, p, s, st, rows, k_taps, g, ndim, gauss, lo, hi, bounded, floor, tail, thr, n_chunks, s0, s1, need_w,
    need_p, need_s, gs_full, gw, gp, gs, gs_part,
):  # pragma: no cover - jitted
    """Gradients of :func:`construct_forward` for the flat upstream ``g [R * S0 * S1]``: ``gw [R, K]``,
    ``gp [D, R, K]`` (straight through the clamp) and, for a Gaussian with ``need_s``, the sigma gradient per
    entry into ``gs [D, R, K]`` (``gs_full``) or summed over rows per chunk into ``gs_part [n_chunks, D, K]``
    (all flat)."""
    m = s0 * s1
    n = k_taps * LANES
    n_blocks = (rows + LANES - 1) // LANES
    per = (n_blocks + n_chunks - 1) // n_chunks
    need_s = need_s and gauss
    need_taps = need_p or need_s
    for chunk in prange(n_chunks):
        wl, pl, sl, chain, a0, a1, z0, z1, sc, den = _scratch(k_taps, s0, s1)
        glf = _buf(m * LANES, _ZERO)
        tmp = _buf(2 * LANES * LANES, _ZERO)
        e0 = _buf(n * s0, _ZERO)
        e1 = _buf(n * s1, _ZERO)
        gsc = _buf(n, _ZERO)
        res = _buf(4 * n + LANES * LANES, _ZERO)  # [position | sigma, axis, K, L]
        for block in range(chunk * per, min(n_blocks, (chunk + 1) * per)):
            r0 = block * LANES
            valid = min(LANES, rows - r0)
            _load_params(w, p, s, st, r0, rows, k_taps, ndim, gauss, lo, hi, bounded, floor, wl, pl, sl, chain, tmp)
            _profiles(ndim, gauss, k_taps, s0, s1, pl, sl, tail, thr, a0, a1, z0, z1)
            _scale(gauss, n, wl, z0, z1, sc, den)
            _load_rows(g, r0, valid, m, glf)
            vprefetch(g, (r0 + LANES) * m, LANES * m, False)  # the next block's upstream rows
            # E_0[k, x0] = sum_x1 g[x0, x1] A_1[k, x1] (1-D: g itself); E_1[k, x1] = sum_x0 g[x0, x1] A_0[k, x0]
            if ndim == 1:
                e_0, e_tap0 = glf, 0
            else:
                e_0, e_tap0 = e0, s0 * LANES
                _tiles(e0, 0, LANES, s0 * LANES, glf, 0, LANES, s1 * LANES, a1, 0, LANES, s1 * LANES, s1, s0, k_taps)
                if need_taps:
                    _tiles(e1, 0, s1 * LANES, LANES, a0, 0, LANES, s0 * LANES, glf, 0, s1 * LANES, LANES, s0, k_taps,
                           s1)
            for k in range(k_taps):  # dL/dscale[k] = sum_x0 A_0[k, x0] E_0[k, x0]
                vdot(gsc, k * LANES, False, a0, k * s0 * LANES, LANES, e_0, k * e_tap0, LANES, s0)
            if need_taps:
                _tap_grads(ndim, gauss, k_taps, s0, s1, pl, sl, chain, a0, a1, e_0, e1, e_tap0, z0, z1, sc, den, gsc,
                           res)
            if need_w:
                if gauss:
                    for j in range(n):
                        wl[j] = gsc[j] / den[j]  # wl is free now: the weight gradient, lane-major
                else:
                    wl[:n] = gsc[:n]  # bilinear: no normaliser (and no division: see _scale)
            # the next block is full and this thread's, written after this one: it may take a row's spill
            spill = block + 1 < min(n_blocks, (chunk + 1) * per) and r0 + 2 * LANES <= rows
            _write_grads(r0, valid, rows, k_taps, ndim, chunk, need_w, need_p, need_s, gs_full, wl, res,
                         gw, gp, gs, gs_part, tmp, spill)


@njit(**_INNER)
def _tap_grads(ndim, gauss, k_taps, s0, s1, pl, sl, chain, a0, a1, e0, e1, e_tap0, z0, z1, sc, den, gsc, res):
    # pragma: no cover - jitted
    """Position and sigma gradients per axis and tap into ``res [2, D, K, L]``; ``e_tap0`` is the offset between
    taps in ``e0`` (0 in 1-D, where every tap sees the gradient itself)."""
    n = k_taps * LANES
    for d in range(ndim):
        size = s0 if d == 0 else s1
        a = a0 if d == 0 else a1
        e = e0 if d == 0 else e1
        e_tap = e_tap0 if d == 0 else s1 * LANES
        c = size // 2
        off = d * n
        if gauss:  # zo: the other axis' sums (ones in 1-D)
            zo = z1 if d == 0 else z0
            for k in range(k_taps):
                vgauss_grads(res, off + k * LANES, 2 * n + off + k * LANES, e, k * e_tap, a, k * size * LANES,
                             pl, sl, chain, off + k * LANES, sc, gsc, den, zo, k * LANES, _F(-c), size)
        else:  # dA_d/dp_d = +1 at floor(p) + 1 and -1 at floor(p) (inside the span)
            top = _F(size - 1 - c)
            for k in range(k_taps):
                for lane in range(LANES):
                    idx, _ = _cell(pl[off + k * LANES + lane], top, size, c)
                    acc = _ZERO
                    if 0 <= idx < size:
                        acc -= e[k * e_tap + idx * LANES + lane]
                    if 0 <= idx + 1 < size:
                        acc += e[k * e_tap + (idx + 1) * LANES + lane]
                    res[off + k * LANES + lane] = acc * sc[k * LANES + lane]


@njit(**_INNER)
def _write_grads(r0, valid, rows, k_taps, ndim, chunk, need_w, need_p, need_s, gs_full, gwl, res, gw, gp, gs,
                 gs_part, tmp, spill):  # pragma: no cover - jitted
    """The block's gradients from lane-major ``[.., K, L]`` into the flat row-major outputs."""
    n = k_taps * LANES
    full = valid == LANES
    if full and 1 < k_taps <= LANES:  # 16 rows of contiguous taps: transposed
        base = r0 * k_taps
        if need_w:
            _tap_rows_out(gwl, 0, k_taps, tmp, gw, base, spill)
        for d in range(ndim):
            if need_p:
                _tap_rows_out(res, d * n, k_taps, tmp, gp, d * rows * k_taps + base, spill)
            if need_s and gs_full:
                _tap_rows_out(res, 2 * n + d * n, k_taps, tmp, gs, d * rows * k_taps + base, spill)
        if not (need_s and not gs_full):
            return
        need_w, need_p, gs_full = False, False, False  # only the per-chunk sigma sums are left
    for k in range(k_taps):
        if need_w:
            if full:
                vscatter(gw, r0 * k_taps + k, k_taps, gwl, k * LANES)
            else:
                for lane in range(valid):
                    gw[(r0 + lane) * k_taps + k] = gwl[k * LANES + lane]
        for d in range(ndim):
            src = (d * k_taps + k) * LANES
            dst = (d * rows + r0) * k_taps + k
            if need_p:
                if full:
                    vscatter(gp, dst, k_taps, res, src)
                else:
                    for lane in range(valid):
                        gp[dst + lane * k_taps] = res[src + lane]
            if need_s and gs_full:
                if full:
                    vscatter(gs, dst, k_taps, res, 2 * n + src)
                else:
                    for lane in range(valid):
                        gs[dst + lane * k_taps] = res[2 * n + src + lane]
            elif need_s:
                total = _ZERO
                for lane in range(valid):
                    total += res[2 * n + src + lane]
                gs_part[(chunk * ndim + d) * k_taps + k] += total
