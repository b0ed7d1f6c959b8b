"""Explicit 16-wide float32 vector operations for numba kernels (private; LLVM IR built with llvmlite).

LLVM cannot vectorise the small lane loops of :mod:`dclszoo.kernels._construct_numba` by itself: it fully
unrolls a loop of constant trip count 16 and then cannot reorder the loads and stores of numba's arrays,
which might alias. These intrinsics emit the vector loads, arithmetic and stores directly. Arrays are 1-D
C-contiguous float32 (flat views of the kernels' scratch arrays); indices are element offsets, and every vector
is ``WIDTH`` consecutive elements starting there (no bounds checks: callers guarantee them).
The Gaussian-specific operations (vector ``exp``, profile and gradient moments) live in
:mod:`dclszoo.kernels._gauss_simd_numba`.

The kernels using these are cached on disk by numba, keyed on their own file: after editing this file, touch
``_construct_numba.py`` (or delete its ``__pycache__/*.nb*``) so that they are recompiled.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

WIDTH = 16
_VEC = ir.VectorType(ir.FloatType(), WIDTH)
_I32VEC = ir.VectorType(ir.IntType(32), WIDTH)
_FAST = ("fast",)


def _check_arrays(*arrays) -> bool:
    return all(isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.float32 for a in arrays)


def _vec_pointer(context, builder, aryty, ary, index, vec=_VEC):
    data = context.make_array(aryty)(context, builder, ary).data
    return builder.bitcast(builder.gep(data, [index]), vec.as_pointer())


@intrinsic
def vdot(typingctx, dst, d0, add, x, x0, xs, y, y0, ys, n):
    """``dst[d0:d0+W] (+)= sum_{j<n} x[x0 + j*xs : +W] * y[y0 + j*ys : +W]`` (``+=`` when ``add``).

    The sum is kept in a register; ``n = 1`` with stride 0 is an element-wise product.
    """
    if not _check_arrays(dst, x, y):
        return None
    sig = types.void(dst, d0, add, x, x0, xs, y, y0, ys, n)

    def codegen(context, builder, signature, args):
        dst_v, d0_v, add_v, x_v, x0_v, xs_v, y_v, y0_v, ys_v, n_v = args
        aty = signature.args
        i64 = ir.IntType(64)
        casts = [context.cast(builder, v, t, types.int64) for v, t in
                 ((d0_v, aty[1]), (x0_v, aty[4]), (xs_v, aty[5]), (y0_v, aty[7]), (ys_v, aty[8]), (n_v, aty[9]))]
        d0_v, x0_v, xs_v, y0_v, ys_v, n_v = casts
        acc_ptr = cgutils.alloca_once(builder, _VEC)
        builder.store(ir.Constant(_VEC, [0.0] * WIDTH), acc_ptr)
        with cgutils.for_range(builder, n_v, intp=i64) as loop:
            j = loop.index
            vx = builder.load(_vec_pointer(context, builder, aty[3], x_v, builder.add(x0_v, builder.mul(j, xs_v))),
                              align=4)
            vy = builder.load(_vec_pointer(context, builder, aty[6], y_v, builder.add(y0_v, builder.mul(j, ys_v))),
                              align=4)
            prod = builder.fmul(vx, vy, flags=_FAST)
            builder.store(builder.fadd(builder.load(acc_ptr), prod, flags=_FAST), acc_ptr)
        out_ptr = _vec_pointer(context, builder, aty[0], dst_v, d0_v)
        add_bit = context.cast(builder, add_v, aty[2], types.boolean)
        with builder.if_then(add_bit):
            builder.store(builder.fadd(builder.load(acc_ptr), builder.load(out_ptr, align=4), flags=_FAST), acc_ptr)
        builder.store(builder.load(acc_ptr), out_ptr, align=4)
        return context.get_dummy_value()

    return sig, codegen


def _tile_loop(context, builder, aty, args, n_rows, n_cols):
    """The code of one :func:`vtile` shape (``n_rows x n_cols`` sums kept in registers over the ``j`` loop)."""
    dst_v, x_v, y_v = args[0], args[4], args[8]
    d0_v, dr_v, dc_v, x0_v, xs_v, xr_v, y0_v, ys_v, yc_v, n_v = (
        context.cast(builder, args[i], aty[i], types.int64) for i in (1, 2, 3, 5, 6, 7, 9, 10, 11, 12))
    i64 = ir.IntType(64)
    accs = [[cgutils.alloca_once(builder, _VEC) for _ in range(n_cols)] for _ in range(n_rows)]
    for row in accs:
        for acc in row:
            builder.store(_splat(0.0), acc)
    with cgutils.for_range(builder, n_v, intp=i64) as loop:
        xj = builder.add(x0_v, builder.mul(loop.index, xs_v))
        yj = builder.add(y0_v, builder.mul(loop.index, ys_v))
        vx = [_load_vec(context, builder, aty[4], x_v, builder.add(xj, builder.mul(ir.Constant(i64, r), xr_v)))
              for r in range(n_rows)]
        vy = [_load_vec(context, builder, aty[8], y_v, builder.add(yj, builder.mul(ir.Constant(i64, c), yc_v)))
              for c in range(n_cols)]
        for r in range(n_rows):
            for c in range(n_cols):
                acc = accs[r][c]
                builder.store(builder.fadd(builder.load(acc), builder.fmul(vx[r], vy[c], flags=_FAST), flags=_FAST),
                              acc)
    for r in range(n_rows):
        for c in range(n_cols):
            index = builder.add(d0_v, builder.add(builder.mul(ir.Constant(i64, r), dr_v),
                                                  builder.mul(ir.Constant(i64, c), dc_v)))
            builder.store(builder.load(accs[r][c]), _vec_pointer(context, builder, aty[0], dst_v, index), align=4)


TILE = 4  # largest tile side of vtile


@intrinsic
def vtile(typingctx, dst, d0, dr, dc, x, x0, xs, xr, y, y0, ys, yc, n, rows, cols):
    """A register tile of ``rows x cols`` :func:`vdot` sums (``1 <= rows, cols <= TILE``, a code path per shape):
    ``dst[d0 + r*dr + c*dc : +W] = sum_{j<n} x[x0 + j*xs + r*xr : +W] * y[y0 + j*ys + c*yc : +W]``.

    Each step of ``j`` loads ``rows + cols`` vectors for ``rows * cols`` products (a column-at-a-time
    :func:`vdot` loads two per product). Other ``rows``/``cols`` do nothing (callers split larger products)."""
    if not _check_arrays(dst, x, y):
        return None
    sig = types.void(dst, d0, dr, dc, x, x0, xs, xr, y, y0, ys, yc, n, rows, cols)

    def codegen(context, builder, signature, args):
        aty = signature.args
        i64 = ir.IntType(64)
        rows_v, cols_v = (context.cast(builder, args[i], aty[i], types.int64) for i in (13, 14))
        shape = builder.add(builder.mul(rows_v, ir.Constant(i64, TILE + 1)), cols_v)
        done = builder.append_basic_block("vtile.done")
        switch = builder.switch(shape, done)
        for n_rows in range(1, TILE + 1):
            for n_cols in range(1, TILE + 1):
                case = builder.append_basic_block(f"vtile.{n_rows}x{n_cols}")
                switch.add_case(ir.Constant(i64, n_rows * (TILE + 1) + n_cols), case)
                with builder.goto_block(case):
                    _tile_loop(context, builder, aty, args, n_rows, n_cols)
                    builder.branch(done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def vcopy(typingctx, dst, d0, src, s0, n):
    """``dst[d0 + j] = src[s0 + j]`` for ``j < n * W`` (``n`` whole vectors, ascending)."""
    if not _check_arrays(dst, src):
        return None
    sig = types.void(dst, d0, src, s0, n)

    def codegen(context, builder, signature, args):
        aty = signature.args
        dst_v, d0_v, src_v, s0_v, n_v = args
        d0_v, s0_v, n_v = (context.cast(builder, v, aty[i], types.int64) for v, i in ((d0_v, 1), (s0_v, 3), (n_v, 4)))
        i64 = ir.IntType(64)
        with cgutils.for_range(builder, n_v, intp=i64) as loop:
            step = builder.mul(loop.index, ir.Constant(i64, WIDTH))
            vec = _load_vec(context, builder, aty[2], src_v, builder.add(s0_v, step))
            builder.store(vec, _vec_pointer(context, builder, aty[0], dst_v, builder.add(d0_v, step)), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def vprefetch(typingctx, x, x0, n, write):
    """Hint the caches to fetch ``x[x0 : x0 + n]`` (one prefetch per 64-byte line; ``write``: for writing).
    Addresses past the array are harmless (prefetches never fault)."""
    if not _check_arrays(x):
        return None
    sig = types.void(x, x0, n, write)

    def codegen(context, builder, signature, args):
        aty = signature.args
        x_v, x0_v, n_v, w_v = args
        x0_v, n_v = (context.cast(builder, v, aty[i], types.int64) for v, i in ((x0_v, 1), (n_v, 2)))
        i8p, i32, i64 = ir.IntType(8).as_pointer(), ir.IntType(32), ir.IntType(64)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0i8")
        data = context.make_array(aty[0])(context, builder, x_v).data
        lines = builder.udiv(builder.add(n_v, ir.Constant(i64, WIDTH - 1)), ir.Constant(i64, WIDTH))
        write_bit = context.cast(builder, w_v, aty[3], types.boolean)
        with cgutils.for_range(builder, lines, intp=i64) as loop:
            ptr = builder.bitcast(builder.gep(data, [builder.add(x0_v, builder.mul(loop.index, ir.Constant(i64, WIDTH)))]),
                                  i8p)
            with builder.if_else(write_bit) as (for_write, for_read):
                with for_write:
                    builder.call(fn, [ptr, ir.Constant(i32, 1), ir.Constant(i32, 3), ir.Constant(i32, 1)])
                with for_read:
                    builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def vgather(typingctx, dst, d0, src, s0, ss):
    """``dst[d0 + lane] = src[s0 + lane * ss]`` for ``lane < W`` (a strided load into one vector)."""
    if not _check_arrays(dst, src):
        return None
    sig = types.void(dst, d0, src, s0, ss)

    def codegen(context, builder, signature, args):
        aty = signature.args
        dst_v, d0_v, src_v, s0_v, ss_v = args
        d0_v, s0_v, ss_v = (context.cast(builder, v, aty[i], types.int64) for v, i in
                            ((d0_v, 1), (s0_v, 3), (ss_v, 4)))
        data = context.make_array(aty[2])(context, builder, src_v).data
        i64, i32 = ir.IntType(64), ir.IntType(32)
        out_ptr = _vec_pointer(context, builder, aty[0], dst_v, d0_v)
        with builder.if_else(builder.icmp_signed("==", ss_v, ir.Constant(i64, 1))) as (contiguous, strided):
            with contiguous:
                builder.store(_load_vec(context, builder, aty[2], src_v, s0_v), out_ptr, align=4)
            with strided:
                vec = ir.Constant(_VEC, None)
                for lane in range(WIDTH):
                    index = builder.add(s0_v, builder.mul(ir.Constant(i64, lane), ss_v))
                    vec = builder.insert_element(vec, builder.load(builder.gep(data, [index])), ir.Constant(i32, lane))
                builder.store(vec, out_ptr, align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def vscatter(typingctx, dst, d0, ds, src, s0):
    """``dst[d0 + lane * ds] = src[s0 + lane]`` for ``lane < W`` (one vector stored with a stride)."""
    if not _check_arrays(dst, src):
        return None
    sig = types.void(dst, d0, ds, src, s0)

    def codegen(context, builder, signature, args):
        aty = signature.args
        dst_v, d0_v, ds_v, src_v, s0_v = args
        d0_v, ds_v, s0_v = (context.cast(builder, v, aty[i], types.int64) for v, i in
                            ((d0_v, 1), (ds_v, 2), (s0_v, 4)))
        vec = builder.load(_vec_pointer(context, builder, aty[3], src_v, s0_v), align=4)
        data = context.make_array(aty[0])(context, builder, dst_v).data
        i64, i32 = ir.IntType(64), ir.IntType(32)
        with builder.if_else(builder.icmp_signed("==", ds_v, ir.Constant(i64, 1))) as (contiguous, strided):
            with contiguous:
                builder.store(vec, _vec_pointer(context, builder, aty[0], dst_v, d0_v), align=4)
            with strided:
                for lane in range(WIDTH):
                    index = builder.add(d0_v, builder.mul(ir.Constant(i64, lane), ds_v))
                    builder.store(builder.extract_element(vec, ir.Constant(i32, lane)), builder.gep(data, [index]))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def vscale(typingctx, dst, d0, x, x0, c, c0, n):
    """``dst[d0 + j*W : +W] = x[x0 + j*W : +W] * c[c0:+W]`` for ``j < n`` (``n`` consecutive vectors, one scale)."""
    if not _check_arrays(dst, x, c):
        return None
    sig = types.void(dst, d0, x, x0, c, c0, n)

    def codegen(context, builder, signature, args):
        aty = signature.args
        dst_v, d0_v, x_v, x0_v, c_v, c0_v, n_v = args
        d0_v, x0_v, c0_v, n_v = (context.cast(builder, v, aty[i], types.int64)
                                 for v, i in ((d0_v, 1), (x0_v, 3), (c0_v, 5), (n_v, 6)))
        i64 = ir.IntType(64)
        scale = _load_vec(context, builder, aty[4], c_v, c0_v)
        with cgutils.for_range(builder, n_v, intp=i64) as loop:
            step = builder.mul(loop.index, ir.Constant(i64, WIDTH))
            vec = builder.fmul(_load_vec(context, builder, aty[2], x_v, builder.add(x0_v, step)), scale, flags=_FAST)
            builder.store(vec, _vec_pointer(context, builder, aty[0], dst_v, builder.add(d0_v, step)), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def vclamp(typingctx, x, x0, low, high):
    """``x[x0:+W] = min(max(x[x0:+W], low), high)`` (scalars ``low``, ``high``)."""
    if not _check_arrays(x):
        return None
    sig = types.void(x, x0, low, high)

    def codegen(context, builder, signature, args):
        aty = signature.args
        x_v, x0_v, lo_v, hi_v = args
        x0_v = context.cast(builder, x0_v, aty[1], types.int64)
        lo_v = _broadcast(builder, context.cast(builder, lo_v, aty[2], types.float32))
        hi_v = _broadcast(builder, context.cast(builder, hi_v, aty[3], types.float32))
        ptr = _vec_pointer(context, builder, aty[0], x_v, x0_v)
        v = builder.load(ptr, align=4)
        v = builder.select(builder.fcmp_ordered("<", v, lo_v), lo_v, v)
        v = builder.select(builder.fcmp_ordered(">", v, hi_v), hi_v, v)
        builder.store(v, ptr, align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def vfloor_sigma(typingctx, s, chain, x0, floor):
    """``s[x0:+W] = max(|s|, floor)`` and ``chain[x0:+W] = d(that)/ds = sign(s) * (|s| >= floor)``."""
    if not _check_arrays(s, chain):
        return None
    sig = types.void(s, chain, x0, floor)

    def codegen(context, builder, signature, args):
        aty = signature.args
        s_v, ch_v, x0_v, fl_v = args
        x0_v = context.cast(builder, x0_v, aty[2], types.int64)
        fl_v = _broadcast(builder, context.cast(builder, fl_v, aty[3], types.float32))
        s_ptr = _vec_pointer(context, builder, aty[0], s_v, x0_v)
        v = builder.load(s_ptr, align=4)
        fabs = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC]), f"llvm.fabs.v{WIDTH}f32")
        av = builder.call(fabs, [v])
        above = builder.fcmp_ordered(">=", av, fl_v)
        sign = builder.select(builder.fcmp_ordered(">=", v, _splat(0.0)), _splat(1.0), _splat(-1.0))
        builder.store(builder.select(above, sign, _splat(0.0)), _vec_pointer(context, builder, aty[1], ch_v, x0_v),
                      align=4)
        builder.store(builder.select(above, av, fl_v), s_ptr, align=4)
        return context.get_dummy_value()

    return sig, codegen


_HALF = WIDTH // 2
_HVEC = ir.VectorType(ir.FloatType(), _HALF)


def _transpose_stages():
    """Shuffle masks of the 3 butterfly stages of an 8 x 8 transpose: at stage ``h`` the pair of vectors
    ``(a, b) = (v[j], v[j + h])`` exchanges its off-diagonal ``h``-blocks."""
    stages, h = [], _HALF // 2
    i32vec = ir.VectorType(ir.IntType(32), _HALF)
    while h >= 1:
        lo = [lane if lane & h == 0 else _HALF + lane - h for lane in range(_HALF)]
        hi = [lane + h if lane & h == 0 else _HALF + lane for lane in range(_HALF)]
        stages.append((h, ir.Constant(i32vec, lo), ir.Constant(i32vec, hi)))
        h //= 2
    return stages


_STAGES = _transpose_stages()


@intrinsic
def vtranspose(typingctx, src, s0, ss, dst, d0, ds):
    """``dst[d0 + i*ds + j] = src[s0 + j*ss + i]`` for ``i, j < W``: one 16 x 16 block, transposed in registers.

    Done as four 8 x 8 blocks of 8-wide vectors: a 16 x 16 butterfly holds 16 vectors of 16 floats, twice the
    16 registers of an AVX2 core, and spilled (3x slower measured on a Zen3 host). Output rows are stored in
    ascending order, each left half before its right half, so that with ``ds < W`` every row overwrites the
    previous row's excess (callers rely on it)."""
    if not _check_arrays(src, dst):
        return None
    sig = types.void(src, s0, ss, dst, d0, ds)

    def codegen(context, builder, signature, args):
        src_v, s0_v, ss_v, dst_v, d0_v, ds_v = args
        aty = signature.args
        s0_v, ss_v, d0_v, ds_v = (context.cast(builder, v, t, types.int64) for v, t in
                                  ((s0_v, aty[1]), (ss_v, aty[2]), (d0_v, aty[4]), (ds_v, aty[5])))
        i64 = ir.IntType(64)
        for bi in (0, _HALF):  # output rows bi..bi+7: both column halves, then stored row by row
            halves = []
            for bj in (0, _HALF):
                vecs = []
                for j in range(_HALF):
                    index = builder.add(s0_v, builder.add(builder.mul(ir.Constant(i64, bj + j), ss_v),
                                                          ir.Constant(i64, bi)))
                    vecs.append(builder.load(_vec_pointer(context, builder, aty[0], src_v, index, _HVEC), align=4))
                for h, lo, hi in _STAGES:
                    new = list(vecs)
                    for j in range(_HALF):
                        if j & h == 0:
                            new[j] = builder.shuffle_vector(vecs[j], vecs[j + h], lo)
                            new[j + h] = builder.shuffle_vector(vecs[j], vecs[j + h], hi)
                    vecs = new
                halves.append(vecs)
            for i in range(_HALF):
                for vecs, bj in zip(halves, (0, _HALF)):
                    index = builder.add(d0_v, builder.add(builder.mul(ir.Constant(i64, bi + i), ds_v),
                                                          ir.Constant(i64, bj)))
                    builder.store(vecs[i], _vec_pointer(context, builder, aty[3], dst_v, index, _HVEC), align=4)
        return context.get_dummy_value()

    return sig, codegen


def _load_vec(context, builder, aty, ary, index):
    return builder.load(_vec_pointer(context, builder, aty, ary, index), align=4)


def _broadcast(builder, scalar):
    i32 = ir.IntType(32)
    vec = builder.insert_element(ir.Constant(_VEC, None), scalar, ir.Constant(i32, 0))
    return builder.shuffle_vector(vec, vec, ir.Constant(_I32VEC, [0] * WIDTH))


def _splat(value: float):
    return ir.Constant(_VEC, [float(value)] * WIDTH)
