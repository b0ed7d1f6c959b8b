"""Explicit 16-wide float32 vector operations for numba kernels (private; LLVM IR built with llvmlite).

LLVM cannot vectorise the small lane loops of :mod:`dclszoo.kernels._construct_numba` by itself: it fully
unrolls a loop of constant trip count 16 and then cannot reorder the loads and stores of numba's arrays,
which might alias. These intrinsics emit the vector loads, arithmetic and stores directly. Arrays are 1-D
C-contiguous float32 (flat views of the kernels' scratch arrays); indices are element offsets, and every vector
is ``WIDTH`` consecutive elements starting there (no bounds checks: callers guarantee them).

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


def _vec_pointer(context, builder, aryty, ary, index):
    data = context.make_array(aryty)(context, builder, ary).data
    return builder.bitcast(builder.gep(data, [index]), _VEC.as_pointer())


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


def _transpose_stages():
    """Shuffle masks of the 4 butterfly stages of a 16 x 16 transpose: at stage ``h`` the pair of vectors
    ``(a, b) = (v[j], v[j + h])`` exchanges its off-diagonal ``h``-blocks."""
    stages, h = [], WIDTH // 2
    while h >= 1:
        lo = [lane if lane & h == 0 else WIDTH + lane - h for lane in range(WIDTH)]
        hi = [lane + h if lane & h == 0 else WIDTH + lane for lane in range(WIDTH)]
        stages.append((h, ir.Constant(_I32VEC, lo), ir.Constant(_I32VEC, hi)))
        h //= 2
    return stages


_STAGES = _transpose_stages()


@intrinsic
def vtranspose(typingctx, src, s0, ss, dst, d0, ds):
    """``dst[d0 + i*ds + j] = src[s0 + j*ss + i]`` for ``i, j < W``: one 16 x 16 block, transposed in registers."""
    if not _check_arrays(src, dst):
        return None
    sig = types.void(src, s0, ss, dst, d0, ds)

    def codegen(context, builder, signature, args):
        src_v, s0_v, ss_v, dst_v, d0_v, ds_v = args
        aty = signature.args
        s0_v, ss_v, d0_v, ds_v = (context.cast(builder, v, t, types.int64) for v, t in
                                  ((s0_v, aty[1]), (ss_v, aty[2]), (d0_v, aty[4]), (ds_v, aty[5])))
        i64 = ir.IntType(64)
        vecs = []
        for j in range(WIDTH):
            index = builder.add(s0_v, builder.mul(ir.Constant(i64, j), ss_v))
            vecs.append(builder.load(_vec_pointer(context, builder, aty[0], src_v, index), align=4))
        for h, lo, hi in _STAGES:
            new = list(vecs)
            for j in range(WIDTH):
                if j & h == 0:
                    new[j] = builder.shuffle_vector(vecs[j], vecs[j + h], lo)
                    new[j + h] = builder.shuffle_vector(vecs[j], vecs[j + h], hi)
            vecs = new
        for i in range(WIDTH):
            index = builder.add(d0_v, builder.mul(ir.Constant(i64, i), ds_v))
            builder.store(vecs[i], _vec_pointer(context, builder, aty[3], dst_v, index), align=4)
        return context.get_dummy_value()

    return sig, codegen



def _load_vec(context, builder, aty, ary, index):
    return builder.load(_vec_pointer(context, builder, aty, ary, index), align=4)


def _broadcast(builder, scalar):
    i32 = ir.IntType(32)
    vec = builder.insert_element(ir.Constant(_VEC, None), scalar, ir.Constant(i32, 0))
    return builder.shuffle_vector(vec, vec, ir.Constant(_I32VEC, [0] * WIDTH))


@intrinsic
def vgauss_grads(typingctx, res, rp, rs, e, e0, a, a0, p, s, chain, q0, sc, gsc, den, zo, v0, c0, n):
    """Position and sigma gradients of one Gaussian tap along one axis, on 16 rows.

    Per-row vectors are read at ``q0``: position ``p``, std ``s``, sigma chain factor ``chain``, and at ``v0``: tap
    scale ``sc``, ``gsc = dL/dsc``, normaliser ``den`` and ``zo``, the product of the other axes' sums. With ``u_j = c0 + j - p``
    and ``t_j = (sc * e[e0 + j*W] + coef) * a[a0 + j*W] * u_j``, ``coef = -gsc * sc / den * zo`` (the
    normaliser's share of dL/dA), writes ``res[rp:+W] = sum_j t_j / s^2`` (positions) and
    ``res[rs:+W] = chain * sum_j t_j u_j / s^3`` (sigma), ``j < n``.
    """
    if not _check_arrays(res, e, a, p, s, chain, sc, gsc, den, zo):  # noqa: SIM102
        return None
    sig = types.void(res, rp, rs, e, e0, a, a0, p, s, chain, q0, sc, gsc, den, zo, v0, c0, n)

    def codegen(context, builder, signature, args):
        aty = signature.args
        (res_v, rp_v, rs_v, e_v, e0_v, a_v, a0_v, p_v, s_v, ch_v, q0_v, sc_v, gsc_v, den_v, zo_v, v0_v, c0_v,
         n_v) = args
        rp_v, rs_v, e0_v, a0_v, q0_v, v0_v, n_v = (
            context.cast(builder, v, aty[i], types.int64)
            for v, i in ((rp_v, 1), (rs_v, 2), (e0_v, 4), (a0_v, 6), (q0_v, 10), (v0_v, 15), (n_v, 17)))
        c0_v = context.cast(builder, c0_v, aty[16], types.float32)
        i64 = ir.IntType(64)
        pos, std, chain_v = (_load_vec(context, builder, aty[i], v, q0_v) for i, v in ((7, p_v), (8, s_v), (9, ch_v)))
        scale, gscale, denom, zother = (_load_vec(context, builder, aty[i], v, v0_v)
                                        for i, v in ((11, sc_v), (12, gsc_v), (13, den_v), (14, zo_v)))
        fm = lambda x, y: builder.fmul(x, y, flags=_FAST)  # noqa: E731
        shift = builder.fdiv(fm(fm(builder.fneg(gscale, flags=_FAST), scale), zother), denom, flags=_FAST)
        m1_ptr, m2_ptr, u_ptr = (cgutils.alloca_once(builder, _VEC) for _ in range(3))
        builder.store(_splat(0.0), m1_ptr)
        builder.store(_splat(0.0), m2_ptr)
        builder.store(builder.fsub(_broadcast(builder, c0_v), pos, flags=_FAST), u_ptr)
        with cgutils.for_range(builder, n_v, intp=i64) as loop:
            step = builder.mul(loop.index, ir.Constant(i64, WIDTH))
            ev = _load_vec(context, builder, aty[3], e_v, builder.add(e0_v, step))
            av = _load_vec(context, builder, aty[5], a_v, builder.add(a0_v, step))
            u = builder.load(u_ptr)
            tv = fm(fm(builder.fadd(fm(scale, ev), shift, flags=_FAST), av), u)
            builder.store(builder.fadd(builder.load(m1_ptr), tv, flags=_FAST), m1_ptr)
            builder.store(builder.fadd(builder.load(m2_ptr), fm(tv, u), flags=_FAST), m2_ptr)
            builder.store(builder.fadd(u, _splat(1.0), flags=_FAST), u_ptr)
        inv2 = builder.fdiv(_splat(1.0), fm(std, std), flags=_FAST)
        gpos = fm(builder.load(m1_ptr), inv2)
        gsig = builder.fdiv(fm(fm(builder.load(m2_ptr), inv2), chain_v), std, flags=_FAST)
        builder.store(gpos, _vec_pointer(context, builder, aty[0], res_v, rp_v), align=4)
        builder.store(gsig, _vec_pointer(context, builder, aty[0], res_v, rs_v), align=4)
        return context.get_dummy_value()

    return sig, codegen


_LOG2E = 1.4426950408889634
# Taylor coefficients of 2^f = exp(f ln 2), |f| <= 1/2 (truncation error below 1.2e-7 relative at degree 6)
_EXP2_POLY = (1.0, 0.6931471805599453, 0.2402265069591007, 0.05550410866482158, 0.009618129107628477,
              0.0013333558146428443, 0.00015403530393381606)


def _splat(value: float):
    return ir.Constant(_VEC, [float(value)] * WIDTH)


def _exp2(builder, t):
    """``2**t`` for a float vector ``t >= -126``: ``t = n + f``, ``n`` the nearest integer, a polynomial for
    ``2**f`` and the exponent bits for ``2**n``."""
    rint = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC]), f"llvm.rint.v{WIDTH}f32")
    n = builder.call(rint, [t])
    f = builder.fsub(t, n, flags=_FAST)
    poly = _splat(_EXP2_POLY[-1])
    for c in reversed(_EXP2_POLY[:-1]):
        poly = builder.fadd(builder.fmul(poly, f, flags=_FAST), _splat(c), flags=_FAST)
    bits = builder.add(builder.fptosi(n, _I32VEC), ir.Constant(_I32VEC, [127] * WIDTH))
    bits = builder.shl(bits, ir.Constant(_I32VEC, [23] * WIDTH))
    return builder.fmul(poly, builder.bitcast(bits, _VEC), flags=_FAST)


@intrinsic
def vgauss_profile(typingctx, a, a0, z, z0, p, sg, v0, c0, n, tail):
    """Gaussian profile of one tap on 16 rows: with ``u_j = c0 + j - p[v0:+W]`` and ``s = sg[v0:+W]``, writes
    ``a[a0 + j*W : +W] = exp(-u_j^2 / (2 s^2))`` (0 where the exponent is below ``-tail``) for ``j < n`` and
    their sum into ``z[z0:+W]``."""
    if not _check_arrays(a, z, p, sg):
        return None
    sig = types.void(a, a0, z, z0, p, sg, v0, c0, n, tail)

    def codegen(context, builder, signature, args):
        aty = signature.args
        a_v, a0_v, z_v, z0_v, p_v, sg_v, v0_v, c0_v, n_v, tail_v = args
        a0_v, z0_v, v0_v, n_v = (context.cast(builder, v, aty[i], types.int64) for v, i in
                                 ((a0_v, 1), (z0_v, 3), (v0_v, 6), (n_v, 8)))
        c0_v = context.cast(builder, c0_v, aty[7], types.float32)
        tail_v = context.cast(builder, tail_v, aty[9], types.float32)
        i64 = ir.IntType(64)
        pos = builder.load(_vec_pointer(context, builder, aty[4], p_v, v0_v), align=4)
        std = builder.load(_vec_pointer(context, builder, aty[5], sg_v, v0_v), align=4)
        coef = builder.fdiv(_splat(-0.5 * _LOG2E), builder.fmul(std, std, flags=_FAST), flags=_FAST)
        limit = builder.fmul(_broadcast(builder, tail_v), _splat(-_LOG2E), flags=_FAST)
        start = _broadcast(builder, c0_v)
        u_ptr, z_ptr = cgutils.alloca_once(builder, _VEC), cgutils.alloca_once(builder, _VEC)
        builder.store(builder.fsub(start, pos, flags=_FAST), u_ptr)
        builder.store(_splat(0.0), z_ptr)
        with cgutils.for_range(builder, n_v, intp=i64) as loop:
            u = builder.load(u_ptr)
            t = builder.fmul(builder.fmul(u, u, flags=_FAST), coef, flags=_FAST)  # exponent in base 2
            keep = builder.fcmp_ordered(">", t, limit, flags=_FAST)
            value = _exp2(builder, builder.select(keep, t, _splat(-64.0)))  # no denormals
            value = builder.select(keep, value, _splat(0.0))
            index = builder.add(a0_v, builder.mul(loop.index, ir.Constant(i64, WIDTH)))
            builder.store(value, _vec_pointer(context, builder, aty[0], a_v, index), align=4)
            builder.store(builder.fadd(builder.load(z_ptr), value, flags=_FAST), z_ptr)
            builder.store(builder.fadd(u, _splat(1.0), flags=_FAST), u_ptr)
        builder.store(builder.load(z_ptr), _vec_pointer(context, builder, aty[2], z_v, z0_v), align=4)
        return context.get_dummy_value()

    return sig, codegen
