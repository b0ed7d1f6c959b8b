"""Numba CPU kernels of the sparse delay op (private; imported lazily by :mod:`dclszoo.kernels.delay`).

Layout: every input channel is one contiguous row of ``T * B`` float32 values (time-major, so a delay of
``d`` steps is a shift of ``d * B`` elements along the row). A synapse ``(o, i, j)`` is then an AXPY
``y[o, s:] += c * x[i, :n - s]`` (``s = d * B``), its coefficient gradient a dot product of the same two rows
and its input gradient the transposed AXPY. The loops are tiled over a block of rows and a chunk of time so
that the block being written stays in cache while each row it reads is streamed once per block.
"""

from __future__ import annotations

import numba
from numba import njit, prange

_OPTS = dict(parallel=True, fastmath=True, cache=False, nogil=True)


@njit(**_OPTS)
def delay_forward(xt, coeff, offsets, steps, batch, block, chunk, yt):  # pragma: no cover - jitted
    """``yt [O, T*B] += sum_{i,j} coeff[o,i,j] * shift(xt[i], offsets[o,i,j] * batch)`` (yt zeroed by caller)."""
    n_out, n_in, n_taps = coeff.shape
    width = steps * batch
    n_blocks = (n_out + block - 1) // block
    for ob in prange(n_blocks):
        o0 = ob * block
        o1 = min(n_out, o0 + block)
        for t0 in range(0, width, chunk):
            t1 = min(width, t0 + chunk)
            for i in range(n_in):
                for o in range(o0, o1):
                    for j in range(n_taps):
                        c = coeff[o, i, j]
                        d = offsets[o, i, j]
                        if c == 0.0 or d >= steps:
                            continue
                        s = d * batch
                        lo = max(t0, s)
                        for k in range(lo, t1):
                            yt[o, k] += c * xt[i, k - s]


@njit(**_OPTS)
def delay_backward(xt, coeff, offsets, gyt, steps, batch, block, chunk, need_x, need_c, gxt, gc):  # pragma: no cover
    """Input and coefficient gradients, tiled over blocks of input rows (gxt, gc zeroed by caller)."""
    n_out, n_in, n_taps = coeff.shape
    width = steps * batch
    n_blocks = (n_in + block - 1) // block
    for ib in prange(n_blocks):
        i0 = ib * block
        i1 = min(n_in, i0 + block)
        for t0 in range(0, width, chunk):
            t1 = min(width, t0 + chunk)
            for o in range(n_out):
                for i in range(i0, i1):
                    for j in range(n_taps):
                        d = offsets[o, i, j]
                        if d >= steps:
                            continue
                        s = d * batch
                        # output positions k in [lo, t1) read input k - s; the chunk is over the input index
                        lo = t0
                        hi = min(t1, width - s)
                        if hi <= lo:
                            continue
                        if need_x:
                            c = coeff[o, i, j]
                            for k in range(lo, hi):
                                gxt[i, k] += c * gyt[o, k + s]
                        if need_c:
                            acc = numba.float32(0.0)
                            for k in range(lo, hi):
                                acc += gyt[o, k + s] * xt[i, k]
                            gc[o, i, j] += acc
