"""Explicit 16-wide vector code for the Gaussian profiles and their gradients (private; see :mod:`._simd_numba`).

``2**t`` is evaluated as ``2**n * 2**f`` (``n`` the nearest integer, a degree-6 polynomial for ``2**f``, the
exponent bits built directly), so the profile of a tap costs one vector ``exp`` per grid point for 16 rows.
Like :mod:`._simd_numba`: after editing, touch ``_construct_numba.py`` so that numba's disk cache is refreshed.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._simd_numba import _FAST, _I32VEC, _VEC, WIDTH, _broadcast, _check_arrays, _load_vec, _splat, _vec_pointer


_LOG2E = 1.4426950408889634
# Taylor coefficients of 2^f = exp(f ln 2), |f| <= 1/2 (truncation error below 1.2e-7 relative at degree 6)
_EXP2_POLY = (1.0, 0.6931471805599453, 0.2402265069591007, 0.05550410866482158, 0.009618129107628477,
              0.0013333558146428443, 0.00015403530393381606)


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


def _vminmax(builder, which, x, y):
    """Lane-wise ``llvm.minnum`` / ``llvm.maxnum`` of two vectors."""
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC, _VEC]), f"llvm.{which}.v{WIDTH}f32")
    return builder.call(fn, [x, y])


def _all(builder, mask):
    """Whether every lane of a 16-lane comparison is true."""
    return builder.icmp_unsigned("==", builder.bitcast(mask, ir.IntType(WIDTH)), ir.Constant(ir.IntType(WIDTH), -1))


_SAFE = 120.0  # recurrence only where every factor stays within 2**+-120 (float32 normals: 2**+-126)


def _profile_direct(context, builder, aty, a_v, a0_v, z_ptr, u0, coef, limit, n_v):
    """One ``exp`` per grid point: ``a[a0 + j*W] = 2**(coef u_j^2)`` (0 below ``2**limit``), sums into ``z_ptr``."""
    i64 = ir.IntType(64)
    u_ptr = cgutils.alloca_once(builder, _VEC)
    builder.store(u0, u_ptr)
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


def _profile_walk(context, builder, aty, a_v, a0_v, z_ptr, start, walks, q2, threshold, count, flush):
    """From the grid point ``start`` (its value already stored and summed), ``count`` points in each direction of
    ``walks`` (``[(value, ratio, step)]``, ``step`` = +-1, the walks interleaved: independent chains of
    multiplications): ``value *= ratio; ratio *= q2``, stored as 0 below ``threshold``, summed into ``z_ptr``;
    with ``flush``, values and ratios below ``2**-SAFE`` are flushed to 0 (they only decrease from there: no
    denormals). Without it the caller knows every value of the walk is at least ``2**-SAFE``. Returns the
    ``(value, ratio)`` of every walk after its ``count`` points."""
    i64 = ir.IntType(64)
    tiny = _splat(2.0 ** -_SAFE)
    state = []
    for value, ratio, step in walks:
        v_ptr, r_ptr, s_ptr = (cgutils.alloca_once(builder, _VEC) for _ in range(3))
        builder.store(value, v_ptr)
        builder.store(ratio, r_ptr)
        builder.store(_splat(0.0), s_ptr)
        state.append((v_ptr, r_ptr, s_ptr, step))
    with cgutils.for_range(builder, count, intp=i64) as loop:
        for v_ptr, r_ptr, s_ptr, step in state:
            r = builder.load(r_ptr)
            v = builder.fmul(builder.load(v_ptr), r, flags=_FAST)
            r = builder.fmul(r, q2, flags=_FAST)
            if flush:
                v = builder.select(builder.fcmp_ordered("<", v, tiny), _splat(0.0), v)
                r = builder.select(builder.fcmp_ordered("<", r, tiny), _splat(0.0), r)
            builder.store(r, r_ptr)
            builder.store(v, v_ptr)
            out = builder.select(builder.fcmp_ordered(">", v, threshold), v, _splat(0.0))
            j = builder.add(start, builder.mul(builder.add(loop.index, ir.Constant(i64, 1)), ir.Constant(i64, step)))
            index = builder.add(a0_v, builder.mul(j, ir.Constant(i64, WIDTH)))
            builder.store(out, _vec_pointer(context, builder, aty[0], a_v, index), align=4)
            builder.store(builder.fadd(builder.load(s_ptr), out, flags=_FAST), s_ptr)
    total = builder.load(z_ptr)
    for _, _, s_ptr, _ in state:
        total = builder.fadd(total, builder.load(s_ptr), flags=_FAST)
    builder.store(total, z_ptr)
    return [(builder.load(v_ptr), builder.load(r_ptr)) for v_ptr, r_ptr, _, _ in state]


@intrinsic
def vgauss_profile(typingctx, a, a0, z, z0, p, sg, v0, c0, n, tail, thr):
    """Gaussian profile of one tap on 16 rows: with ``u_j = c0 + j - p[v0:+W]`` and ``s = sg[v0:+W]``, writes
    ``a[a0 + j*W : +W] = exp(-u_j^2 / (2 s^2))`` (0 where the exponent is below ``-tail``) for ``j < n`` and
    their sum into ``z[z0:+W]``; ``thr = exp(-tail)`` (computed once by the caller).

    Where every factor stays in range (all lanes: not too small a ``s`` for the distance of the peak from the
    middle point), three ``exp`` and a recurrence: from the middle point ``m`` outwards,
    ``phi(u+-1) = phi(u) * r``, ``r *= q`` with ``r = exp2(coef (1 +- 2u))``, ``q = exp2(2 coef)``; otherwise one
    ``exp`` per point.
    """
    if not _check_arrays(a, z, p, sg):
        return None
    sig = types.void(a, a0, z, z0, p, sg, v0, c0, n, tail, thr)

    def codegen(context, builder, signature, args):
        aty = signature.args
        a_v, a0_v, z_v, z0_v, p_v, sg_v, v0_v, c0_v, n_v, tail_v, thr_v = args
        a0_v, z0_v, v0_v, n_v = (context.cast(builder, v, aty[i], types.int64) for v, i in
                                 ((a0_v, 1), (z0_v, 3), (v0_v, 6), (n_v, 8)))
        c0_v = context.cast(builder, c0_v, aty[7], types.float32)
        tail_v = context.cast(builder, tail_v, aty[9], types.float32)
        thr_v = _broadcast(builder, context.cast(builder, thr_v, aty[10], types.float32))
        i64 = ir.IntType(64)
        fm = lambda x, y: builder.fmul(x, y, flags=_FAST)  # noqa: E731
        pos = builder.load(_vec_pointer(context, builder, aty[4], p_v, v0_v), align=4)
        std = builder.load(_vec_pointer(context, builder, aty[5], sg_v, v0_v), align=4)
        coef = builder.fdiv(_splat(-0.5 * _LOG2E), fm(std, std), flags=_FAST)
        limit = fm(_broadcast(builder, tail_v), _splat(-_LOG2E))
        z_ptr = cgutils.alloca_once(builder, _VEC)
        builder.store(_splat(0.0), z_ptr)
        mid = builder.ashr(n_v, ir.Constant(i64, 1))
        um = builder.fsub(builder.fadd(_broadcast(builder, c0_v), _broadcast(builder, builder.sitofp(mid, ir.FloatType())),
                                       flags=_FAST), pos, flags=_FAST)
        t_mid = fm(fm(um, um), coef)
        t_up = fm(coef, builder.fadd(fm(um, _splat(2.0)), _splat(1.0), flags=_FAST))
        t_down = fm(coef, builder.fsub(_splat(1.0), fm(um, _splat(2.0)), flags=_FAST))
        t_q = fm(coef, _splat(2.0))
        u_lo = builder.fsub(_broadcast(builder, c0_v), pos, flags=_FAST)  # u at the first grid point
        # every lane in range: one comparison of a minimum (an and of 16-lane masks is a pack sequence on AVX2)
        low = _vminmax(builder, "minnum", _vminmax(builder, "minnum", t_mid, t_q),
                       builder.fneg(_vminmax(builder, "maxnum", t_up, t_down), flags=_FAST))
        all_ok = _all(builder, builder.fcmp_ordered(">=", low, _splat(-_SAFE)))
        with builder.if_else(all_ok) as (walk, direct):
            with walk:
                keep = builder.fcmp_ordered(">", t_mid, limit)
                value = _exp2(builder, t_mid)
                first = builder.select(keep, value, _splat(0.0))
                q2 = _exp2(builder, t_q)
                index = builder.add(a0_v, builder.mul(mid, ir.Constant(i64, WIDTH)))
                builder.store(first, _vec_pointer(context, builder, aty[0], a_v, index), align=4)
                builder.store(first, z_ptr)
                up = builder.sub(builder.sub(n_v, mid), ir.Constant(i64, 1))
                ratios = []
                for ratio in (t_up, t_down):
                    # a ratio below 2**-100 (clamped there: only larger) takes the next value below the threshold
                    ratio = builder.select(builder.fcmp_ordered("<", ratio, _splat(-100.0)), _splat(-100.0), ratio)
                    ratios.append(_exp2(builder, ratio))
                # both ends of the span at least 2**-SAFE in every lane (the usual case): nothing to flush
                u_hi = builder.fadd(u_lo, _broadcast(builder, builder.sitofp(builder.sub(n_v, ir.Constant(i64, 1)),
                                                                              ir.FloatType())), flags=_FAST)
                far = _vminmax(builder, "maxnum", fm(u_lo, u_lo), fm(u_hi, u_hi))  # coef < 0: the smaller end
                in_range = _all(builder, builder.fcmp_ordered(">=", fm(far, coef), _splat(-_SAFE)))
                with builder.if_else(in_range) as (plain, flushed):
                    for block, flush in ((plain, False), (flushed, True)):
                        with block:
                            # both directions together for up = min(up, mid) points, then the last point below
                            # (even spans: mid = up + 1)
                            both = [(value, ratios[0], 1), (value, ratios[1], -1)]
                            (_, _), (v_down, r_down) = _profile_walk(context, builder, aty, a_v, a0_v, z_ptr, mid,
                                                                     both, q2, thr_v, up, flush)
                            rest = builder.sub(mid, up)  # the point left below, if any, starts from there
                            _profile_walk(context, builder, aty, a_v, a0_v, z_ptr, rest, [(v_down, r_down, -1)],
                                          q2, thr_v, rest, flush)
            with direct:
                _profile_direct(context, builder, aty, a_v, a0_v, z_ptr, u_lo, coef, limit, n_v)
        builder.store(builder.load(z_ptr), _vec_pointer(context, builder, aty[2], z_v, z0_v), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def vgauss_grads(typingctx, res, rp, rs, e, e0, a, a0, p, s, chain, q0, sc, gsc, den, zo, v0, c0, n):
    """Position and sigma gradients of one Gaussian tap along one axis, on 16 rows.

    Per-row vectors are read at ``q0``: position ``p``, std ``s``, sigma chain factor ``chain``, and at ``v0``: tap
    scale ``sc``, ``gsc = dL/dsc``, normaliser ``den`` and ``zo``, the product of the other axes' sums. With
    ``u_j = c0 + j - p`` and ``t_j = (sc * e[e0 + j*W] + coef) * a[a0 + j*W] * u_j``, ``coef = -gsc * sc / den * zo`` (the
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
