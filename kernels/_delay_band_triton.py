"""Triton kernels of the sparse delay op for banded taps (private; used by :mod:`dclszoo.kernels._delay_triton`).

Banded taps: the ``J`` taps of a synapse are ``J`` consecutive delays, ``offsets[o, i, g * J + j] = s[o, i, g]
+ j`` (``G`` groups of ``J`` per synapse), as the narrow Gaussian phase of the delay synapses produces. Then the
``J`` taps of a synapse read ``J`` consecutive time steps of one input, and a tile of ``R`` consecutive output
steps needs ``R + J - 1`` input steps instead of ``R * J``: the kernels load that window once into registers
and run the ``R * J`` multiply-adds from it. The general kernels (:mod:`._delay_triton`) load every tap
separately, one gathered element per multiply-add, and are bound by the load path (32 elements per clock per
SM from L1); here a multiply-add costs ``(R + J - 1) / (R * J)`` loads plus the coefficients' ``(J + 1) / (R * J)``
(e.g. 0.29 at ``R = 16, J = 6``), so the FMA pipe (128 per clock per SM) bounds instead.

Layout: a channel is a row of ``T * B`` values (time-major, ``m = t * B + b``), copied into a padded buffer
row of ``PAD + T * B`` values with ``PAD = (T + J - 1) * B`` zeros before (``x``: reads go back in time) or
after (``grad_y``: reads go forward) the values, so that a read up to ``T + J - 1`` steps out of range lands
in zeros without a mask (shifts are clamped to ``T``). A tile is ``R`` time steps x ``L`` batch lanes x ``BN``
columns, held as a tuple of ``R`` ``[BN, L]`` accumulators (``R`` need not be a power of two).

Programs:

- forward, one per (``R`` steps, ``L`` batch lanes, ``BN`` outputs): for each of the ``Q = I * G`` tap groups
  load the ``BN`` shifts and ``J x BN`` coefficients, the window ``x_i[t0 - s - J + 1 + w]``, ``w < R + J - 1``,
  per column, and ``acc[r] += sum_j c_j * window[r + J - 1 - j]``.
- input gradient: the same kernel with in/out swapped and time reversed: ``gx[t, i] += sum_{o, g, j}
  c[o, i, g, j] * gy_o[t + s + j]``, window ``gy_o[t0 + s + w]``, ``acc[r] += c_j * window[r + j]``.
- coefficient gradient, one per (output ``o``, ``BC`` groups, share of the steps x batch tile): ``J``
  accumulators ``[BC, L]``; per chunk of ``R`` steps load ``gy_o`` once for the ``BC`` columns and each
  column's window of ``x``, ``acc[j] += sum_r gy[r] * window[r + J - 1 - j]``; reduced at the end, partial sums
  added atomically when the steps are split over programs to fill the GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._delay_triton import _acc_dtype, _check_width, _configs, _INTERPRETED, _on, _target_programs

__all__ = ["band_forward", "band_backward", "lanes_for"]

# (R steps, BN / BC columns) per program and warps; L (batch lanes) follows the batch size (lanes_for). From
# the SASS of sm_90 builds (fp32, J = 6, B = 32): no spills, no shared memory in the loops; per multiply-add
# 1.39 instructions (forward, input gradient: R = 32) / 1.36-1.40 (coefficient gradient); R = 16 at 1.51 / 1.36
# trades a little issue for less waste when T is not a multiple of 32. Registers 96-168.
_FWD_CONFIGS = _configs(
    [({"R": 32, "BN": 8}, 4), ({"R": 32, "BN": 16}, 8), ({"R": 16, "BN": 8}, 4), ({"R": 16, "BN": 16}, 4)],
    {"R": 3, "BN": 4},
)
_BWD_C_CONFIGS = _configs(
    [({"R": 32, "BC": 8}, 4), ({"R": 32, "BC": 16}, 4), ({"R": 16, "BC": 16}, 4), ({"R": 32, "BC": 16}, 8)],
    {"R": 3, "BC": 4},
)
_MAX_R = max(c.kwargs["R"] for c in _FWD_CONFIGS + _BWD_C_CONFIGS)
_MAX_LANES = 4 if _INTERPRETED else 32  # small lanes under the interpreter: tests cross batch tiles
_MAX_SHARES = 8  # most shares of the reduction over input groups (float32 partial sums of the output)


def lanes_for(batch: int) -> int:
    """Batch lanes of a tile: the smallest power of two >= ``batch``, at most 32 (a warp's width)."""
    return min(_MAX_LANES, triton.next_power_of_2(max(batch, 1)))


# ----------------------------------------------------------------------------------------------- kernels
@triton.autotune(configs=_FWD_CONFIGS, key=["T", "B", "N", "Q", "J", "SIGN"])
@triton.jit
def _band_kernel(src_ptr, c_ptr, s_ptr, dst_ptr, T, N, Q, G, ROW, PAD, S, B: tl.constexpr, J: tl.constexpr,
                 SIGN: tl.constexpr, ACC: tl.constexpr, L: tl.constexpr, R: tl.constexpr, BN: tl.constexpr):
    """``dst[k, t, b, n] = sum_{q, j} c[q, j, n] * src[q // G][(t + SIGN * (s[q, n] + j)) * B + b]`` over the
    ``k``-th of ``S`` shares of the ``Q`` groups (``S = 1``: the whole sum, dst ``[T, B, N]``).

    src: padded rows of ``ROW`` values (``SIGN = -1``: ``PAD`` zeros then the row; ``+1``: the row then zeros),
    c ``[Q + 1, N, J]``, s ``[Q + 1, N]`` int32 clamped to ``T`` (row ``Q`` is look-ahead padding).
    """
    t0 = tl.program_id(0) * R
    b = tl.program_id(1) * L + tl.arange(0, L)
    n = tl.program_id(2) // S * BN + tl.arange(0, BN)
    share = tl.program_id(2) % S
    per = tl.cdiv(Q, S)
    q_lo = share * per
    q_hi = tl.minimum(q_lo + per, Q)
    n_c = tl.minimum(n, N - 1)  # absent columns repeat the last one (not stored): loads need no mask
    lanes = b[None, :]
    acc = (tl.zeros((BN, L), dtype=ACC),) * R
    s_next = tl.load(s_ptr + q_lo * N + n_c)
    for q in range(q_lo, q_hi):
        shift = s_next
        s_next = tl.load(s_ptr + (q + 1) * N + n_c)  # the next group's, in flight during this one
        cs = ()
        for j in tl.static_range(J):
            cs = cs + (tl.load(c_ptr + (q * N + n_c) * J + j).to(ACC)[:, None],)
        row = src_ptr + tl.cast(q // G, tl.int64) * ROW
        if SIGN < 0:
            start = PAD + (t0 - shift - (J - 1)) * B  # >= 0: shift <= T, PAD = (T + J - 1) * B
        else:
            start = (t0 + shift) * B
        ptrs = row + start[:, None] + lanes
        win = ()
        for w in tl.static_range(R + J - 1):
            win = win + (tl.load(ptrs + w * B).to(ACC),)
        new = ()
        for r in tl.static_range(R):
            a = acc[r]
            for j in tl.static_range(J):
                if SIGN < 0:
                    a = a + win[r + J - 1 - j] * cs[j]
                else:
                    a = a + win[r + j] * cs[j]
            new = new + (a,)
        acc = new
    ok = (lanes < B) & (n[:, None] < N)
    out = dst_ptr + share.to(tl.int64) * T * B * N + lanes.to(tl.int64) * N + n[:, None]
    for r in tl.static_range(R):
        t = t0 + r
        tl.store(out + tl.cast(t, tl.int64) * B * N, acc[r].to(dst_ptr.dtype.element_ty), mask=ok & (t < T))


@triton.autotune(configs=_BWD_C_CONFIGS, key=["T", "B", "Q", "J"], reset_to_zero=["gc_ptr"])
@triton.jit
def _band_grad_coeff_kernel(x_ptr, gy_ptr, s_ptr, gc_ptr, T, Q, G, ROW, PAD, N_BT, B: tl.constexpr,
                            J: tl.constexpr, ACC: tl.constexpr, L: tl.constexpr, R: tl.constexpr, BC: tl.constexpr):
    """``gc[o, q, j] = sum_{t, b} gy[o][t * B + b] * x[q // G][(t - s[o, q] - j) * B + b]`` over this program's
    steps and batch tile; x in left-padded rows, gy in right-padded rows (both of ``ROW`` values), s ``[O, Q]``
    int32 clamped to ``T``, gc ``[O, Q, J]`` float32/64."""
    o = tl.program_id(0).to(tl.int64)
    col = tl.program_id(1) * BC + tl.arange(0, BC)
    tile = tl.program_id(2)
    n_split = tl.num_programs(2) // N_BT
    split = tile // N_BT
    b = (tile % N_BT) * L + tl.arange(0, L)
    b_ok = b < B
    c_ok = col < Q
    shift = tl.load(s_ptr + o * Q + col, mask=c_ok, other=0)
    row = tl.where(c_ok, col // G, 0).to(tl.int64)
    x_base = x_ptr + row * ROW + PAD  # time 0 of each column's row
    per = tl.cdiv(tl.cdiv(T, R), n_split) * R
    begin = split * per
    stop = tl.minimum(begin + per, T)
    # chunks of R steps from `begin` (a multiple of R, as `per`): a chunk ends at `stop` or runs past T into
    # grad_y's zero padding, so only the lanes are masked. Chunks before the smallest shift read zeros of x.
    lo = tl.min(tl.where(c_ok, shift, T), axis=0)
    first = begin + tl.maximum(lo - begin, 0) // R * R
    gy_row = gy_ptr + o * ROW
    acc = (tl.zeros((BC, L), dtype=ACC),) * J
    for t0 in range(first, stop, R):
        g = ()
        for r in tl.static_range(R):
            g = g + (tl.load(gy_row + (t0 + r) * B + b, mask=b_ok, other=0.0).to(ACC)[None, :],)
        # steps t0 + r >= T read x past its row (the next row or the tail), times g = 0
        ptrs = x_base[:, None] + ((t0 - shift - (J - 1)) * B)[:, None] + b[None, :]
        win = ()
        for w in tl.static_range(R + J - 1):
            win = win + (tl.load(ptrs + w * B).to(ACC),)
        new = ()
        for j in tl.static_range(J):
            a = acc[j]
            for r in tl.static_range(R):
                a = a + win[r + J - 1 - j] * g[r]
            new = new + (a,)
        acc = new
    out = gc_ptr + (o * Q + col) * J
    for j in tl.static_range(J):
        total = tl.sum(acc[j], axis=1)
        if tl.num_programs(2) > 1:
            tl.atomic_add(out + j, total, mask=c_ok)
        else:
            tl.store(out + j, total, mask=c_ok)


# ----------------------------------------------------------------------------------------------- launchers
def _band_rows(t: torch.Tensor, pad: int, left: bool) -> tuple[torch.Tensor, int]:
    """``[T, B, C]`` as ``C`` rows of ``pad + T * B`` values (``pad`` zeros before or after the channel's
    values) in one flat zeroed buffer with a tail for the last tile's over-reads; returns (buffer, row length)."""
    steps, batch, ch = t.shape
    width = steps * batch
    row = pad + width
    tail = (_MAX_R + 1) * batch + _MAX_LANES
    buf = t.new_zeros(ch * row + tail)
    rows = buf[: ch * row].view(ch, row)
    (rows[:, pad:] if left else rows[:, :width]).view(ch, steps, batch).copy_(t.permute(2, 0, 1))
    return buf, row


def _tables(coeff: torch.Tensor, offsets: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``coeff [N, A, G, J]`` / ``offsets [N, A, G, J]`` -> c ``[A * G + 1, N, J]`` and s ``[A * G + 1, N]`` int32
    (the group's first offset clamped to ``steps``); the extra row is look-ahead padding."""
    n, a, g, j = coeff.shape
    c = coeff.new_zeros((a * g + 1, n, j))
    c[:-1].view(a, g, n, j).copy_(coeff.permute(1, 2, 0, 3))
    s = torch.zeros((a * g + 1, n), dtype=torch.int32, device=coeff.device)
    s[:-1].view(a, g, n).copy_(offsets[..., 0].clamp(max=steps).permute(1, 2, 0))
    return c, s


def _gather(src: torch.Tensor, row: int, pad: int, c: torch.Tensor, s: torch.Tensor, like: torch.Tensor,
            n: int, q: int, groups: int, band: int, sign: int, shares: int | None) -> torch.Tensor:
    """Run ``_band_kernel``: ``[T, B, n]`` in ``like``'s dtype. The ``q`` groups are split into shares (float32
    partial sums, added after the kernel: deterministic) when the tiles alone would not fill the GPU."""
    steps, batch, _ = like.shape
    lanes = lanes_for(batch)
    tiles = triton.cdiv(steps, 16) * triton.cdiv(batch, lanes) * triton.cdiv(n, 16)  # at the middle tile size
    if shares is None:
        shares = min(_MAX_SHARES, triton.cdiv(_target_programs(like.device), tiles), max(1, q // 64))
    shares = max(1, min(shares, q))
    if shares == 1:
        dst = like.new_empty((steps, batch, n))
    else:
        dst = torch.empty((shares, steps, batch, n), device=like.device,
                          dtype=torch.float64 if like.dtype == torch.float64 else torch.float32)
    grid = lambda meta: (triton.cdiv(steps, meta["R"]), triton.cdiv(batch, lanes), triton.cdiv(n, meta["BN"]) * shares)  # noqa: E731
    _band_kernel[grid](src, c, s, dst, steps, n, q, groups, row, pad, shares, batch, band, sign,
                       ACC=_acc_dtype(like.dtype), L=lanes)
    return dst if shares == 1 else dst.sum(0).to(like.dtype)


def band_forward(x: torch.Tensor, coeff: torch.Tensor, offsets: torch.Tensor, band: int,
                 shares: int | None = None) -> torch.Tensor:
    """``y [T, B, O]`` for banded taps (``coeff``/``offsets [O, I, G * band]``, arguments already checked);
    ``shares`` forces the split of the input groups (default: enough programs to fill the GPU)."""
    steps, batch, n_in = x.shape
    n_out, _, taps = coeff.shape
    groups = taps // band
    _check_width(steps * batch + (steps + band) * batch)
    if steps * batch == 0 or n_out == 0 or taps == 0:
        return x.new_zeros((steps, batch, n_out))
    pad = (steps + band - 1) * batch
    xp, row = _band_rows(x.detach(), pad, left=True)
    shape = (n_out, n_in, groups, band)
    c, s = _tables(coeff.detach().reshape(shape), offsets.reshape(shape), steps)
    with _on(x):
        return _gather(xp, row, pad, c, s, x, n_out, n_in * groups, groups, band, -1, shares)


def band_backward(
    grad_y: torch.Tensor, x: torch.Tensor, coeff: torch.Tensor, offsets: torch.Tensor, band: int,
    need_x: bool = True, need_coeff: bool = True, split: int | None = None, shares: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(grad_x, grad_coeff)`` for banded taps, None where not needed (as ``_delay_triton.delay_backward``);
    ``shares`` as in :func:`band_forward` for the input gradient, ``split`` the steps' split of the coefficient
    gradient."""
    steps, batch, n_in = x.shape
    n_out, _, taps = coeff.shape
    groups = taps // band
    _check_width(steps * batch + (steps + band) * batch)
    if steps * batch == 0 or n_out == 0 or taps == 0 or not (need_x or need_coeff):
        return (x.new_zeros(x.shape) if need_x else None), (coeff.new_zeros(coeff.shape) if need_coeff else None)
    acc = _acc_dtype(x.dtype)
    pad = (steps + band - 1) * batch
    lanes = lanes_for(batch)
    n_bt = triton.cdiv(batch, lanes)
    gyp, row = _band_rows(grad_y, pad, left=False)
    gx, gc = None, None
    with _on(x):
        if need_x:
            shape = (n_out, n_in, groups, band)
            c, s = _tables(coeff.detach().reshape(shape).transpose(0, 1), offsets.reshape(shape).transpose(0, 1), steps)
            gx = _gather(gyp, row, pad, c, s, x, n_in, n_out * groups, groups, band, 1, shares)
        if need_coeff:
            xp, _ = _band_rows(x.detach(), pad, left=True)
            q = n_in * groups
            s = offsets.reshape(n_out, q, band)[..., 0].clamp(max=steps).to(torch.int32).contiguous()
            buf = torch.zeros((n_out, q, band), device=x.device,
                              dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
            target = _target_programs(x.device)

            def grid(meta):
                tiles = n_out * triton.cdiv(q, meta["BC"]) * n_bt
                chunks = triton.cdiv(steps, meta["R"])
                n_split = split if split is not None else triton.cdiv(target, tiles)
                return (n_out, triton.cdiv(q, meta["BC"]), max(1, min(n_split, chunks)) * n_bt)

            _band_grad_coeff_kernel[grid](xp, gyp, s, buf, steps, q, groups, row, pad, n_bt, batch, band,
                                          ACC=acc, L=lanes)
            gc = buf.view(n_out, n_in, taps)
            gc = gc if gc.dtype == coeff.dtype else gc.to(coeff.dtype)
    return gx, gc
