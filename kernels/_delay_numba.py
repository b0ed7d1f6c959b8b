"""Numba CPU kernels of the sparse delay op (private; imported lazily by :mod:`dclszoo.kernels.delay`).

Layout: every channel is one contiguous row of ``T * B`` float32 values (time-major, so a delay of ``d``
steps is a shift of ``s = d * B`` elements along the row). A synapse tap ``(o, i, j)`` is then an AXPY
``y[o, s:] += c * x[i, :W - s]``, its coefficient gradient the dot product of ``gy[o, s:]`` and
``x[i, :W - s]``, and its input gradient the transposed AXPY ``gx[i, :W - s] += c * gy[o, s:]``.

Tiling: the work is split into (output block) x (input block) tiles so that both blocks of rows stay in the
per-core L2 cache while every synapse of the tile is applied; the outer block (output rows for the forward,
input rows for the backward) is the parallel one, so no two threads ever write the same row. Each row is thus
fetched from memory once per tile whatever the offsets are: time does not depend on the delay range. Inner
loops run over 1-D slices starting at 0, the form LLVM vectorises (an offset index into a 2-D array is not).
"""

from __future__ import annotations

import numba
from numba import njit, prange

_OPTS = dict(parallel=True, fastmath=True, cache=False, nogil=True)


@njit(**_OPTS)
def delay_forward(xt, coeff, offsets, batch, out_block, in_block, yt):  # pragma: no cover - jitted
    """``yt[o, s:] += coeff[o,i,j] * xt[i, :W-s]`` with ``s = offsets[o,i,j] * batch`` (yt zeroed by caller)."""
    n_out, n_in, n_taps = coeff.shape
    width = xt.shape[1]
    for ob in prange((n_out + out_block - 1) // out_block):
        o0 = ob * out_block
        o1 = min(n_out, o0 + out_block)
        for i0 in range(0, n_in, in_block):
            for o in range(o0, o1):
                yr = yt[o]
                for i in range(i0, min(n_in, i0 + in_block)):
                    xr = xt[i]
                    for j in range(n_taps):
                        c = coeff[o, i, j]
                        s = offsets[o, i, j] * batch
                        if c == 0.0 or s >= width:
                            continue
                        ys = yr[s:]
                        for k in range(width - s):
                            ys[k] += c * xr[k]


@njit(**_OPTS)
def delay_backward(xt, coeff, offsets, gyt, batch, in_block, out_block, need_x, need_c, gxt, gc):  # pragma: no cover
    """Input and coefficient gradients (gxt, gc zeroed by caller); each input block owns its rows of ``gxt``
    and its entries ``gc[:, i, :]``."""
    n_out, n_in, n_taps = coeff.shape
    width = xt.shape[1]
    for ib in prange((n_in + in_block - 1) // in_block):
        i0 = ib * in_block
        i1 = min(n_in, i0 + in_block)
        for o0 in range(0, n_out, out_block):
            for i in range(i0, i1):
                gxr = gxt[i]
                xr = xt[i]
                for o in range(o0, min(n_out, o0 + out_block)):
                    for j in range(n_taps):
                        s = offsets[o, i, j] * batch
                        if s >= width:
                            continue
                        gs = gyt[o, s:]
                        n = width - s
                        if need_x:
                            c = coeff[o, i, j]
                            for k in range(n):
                                gxr[k] += c * gs[k]
                        if need_c:
                            acc = numba.float32(0.0)
                            for k in range(n):
                                acc += gs[k] * xr[k]
                            gc[o, i, j] = acc
