"""Triton kernels of the sparse delay op (private; imported lazily by :mod:`dclszoo.kernels.delay`).

``y[t, b, o] = sum_{i, j} coeff[o, i, j] * x[t - offsets[o, i, j], b, i]`` and its gradients w.r.t. ``x`` and
``coeff``. Triton is imported here only, when the first Triton delay is computed.

Runs of taps. The taps of a synapse come in ``G`` runs of ``J`` consecutive offsets, ``offsets[o, i, g * J + j] =
s[o, i, g] + j`` (``band = J``): a narrow Gaussian delay is one run of ``J = 2 * ceil(6 sigma)`` taps, an integer
delay one run of 1, and any offsets are runs of 1 (``band = 1``). The ``J`` taps of a run read ``J`` consecutive
time steps of one input, so a tile of ``R`` consecutive output steps needs ``R + J - 1`` input steps, not
``R * J``: the kernels load that window once into registers and run the ``R * J`` multiply-adds from it.

Layout. A channel is a row of ``T * B`` values (time-major, ``m = t * B + b``), copied into a buffer row of
``PAD + T * B`` values with ``PAD = (T + J - 1 + R_max) * B`` zeros before (``x``: reads go back in time) or
after (``grad_y``: reads go forward) the values, so that a read up to ``T + J - 1`` steps out of range, or a
chunk of steps running past ``T``, lands in zeros without a mask or compare (run starts are clamped to ``T``).
``y`` and ``grad_x`` are written straight into their ``[T, B, C]`` layout. Nothing is sized by ``max(offsets)``:
the extra memory is the padded copies (about twice each tensor) and ``O * I * J`` tables. A tile is ``R`` time
steps x ``L`` batch lanes (a warp's loads of a row are one contiguous run) x ``BN`` columns, held as a tuple of
``R`` ``[BN, L]`` accumulators; the batch size is a compile-time constant (one build per batch size), so that the
window's loads are one base address plus constant offsets.

One kernel, two passes (accumulation in float32, float64 for float64 inputs):

- forward, one program per (``R`` steps, ``L`` lanes, ``BN`` outputs[, share]): for each of the ``Q = I * G``
  runs load the ``BN`` starts and ``J x BN`` coefficients (the next run's start in flight), the window
  ``x_i[t0 - s - J + 1 + w]``, ``w < R + J - 1``, per column, and ``acc[r] += sum_j c_j * window[r + J - 1 - j]``.
- backward, the same with in/out swapped and time reversed: per run ``(o, g)`` and input column ``i`` the window
  ``gy_o[t0 + s + w]`` gives the input gradient, ``acc[r] += c_j * window[r + j]`` (``gx[t, i] = sum_{o, g, j}
  c[o, i, g, j] * gy_o[t + s + j]``), and the coefficient gradient from the same window, ``gc[o, i, g, j] =
  sum_t x_i[t] * gy_o[t + s + j]``: this program's ``R`` steps of ``x_i``, loaded once, times the window,
  summed over steps and lanes and added atomically (other programs cover the other steps and lanes). The
  coefficient gradient thus costs multiply-adds but no second read of the windows.
- When the tiles alone would not fill the GPU, the runs are split into shares whose float32 partial outputs
  are added after the kernel (deterministic; the coefficient gradient's atomic sums are not bitwise
  reproducible on a GPU).

Cost (``python bench/kernel_sass.py``: the loops' sm_90 SASS, fp32, batch 32): per multiply-add 1.39-1.53
instructions forward and 1.48-1.62 backward (both gradients) at ``J = 6``, ``R = 32``; 3.0-3.5 and 2.4-2.7 at
``J = 1``; no spills, no shared memory in the loops. Loads per multiply-add ``(R + J - 1) / (R * J)`` plus the
tables' ``(J + 1) / (R * J)``. What bounds the kernels is the L2 traffic of the windows (every synapse reads its
own shifted window; windows of one program overlap only when their delays are close): see the model of
``bench/gpu_estimate.py``. Block sizes are autotuned on the GPU (keys: the sizes, ``J`` and the pass); Triton's
interpreter (``TRITON_INTERPRET=1``, CPU tensors) runs one small configuration (3 steps, 4 lanes, 4 columns) so
that tests cross every tile edge.

The kernel calls are also ``torch.library`` custom ops with fake implementations, so ``torch.compile`` treats
them as opaque; eager calls on plain tensors skip the dispatcher.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .backend import plain_tensors as _plain
from .backend import target_programs
from .backend import triton_interpreted

__all__ = ["delay_forward", "delay_backward", "SparseDelayTriton", "lanes_for"]

_INTERPRETED = triton_interpreted()  # read once: the kernels below are defined in this mode


def _configs(gpu: list[tuple[dict, int]], interpreted: dict) -> list[triton.Config]:
    if _INTERPRETED:
        return [triton.Config(interpreted, num_warps=1)]
    return [triton.Config(meta, num_warps=warps) for meta, warps in gpu]


# (R steps, BN columns) per program and warps; L (batch lanes) follows the batch size (lanes_for). From the SASS
# of sm_90 builds (bench/kernel_sass.py): no spills, no shared memory in the loops. R = 32, 8 columns: the fewest
# instructions (forward 1.39, backward 1.48 per FMA at J = 6) but 255 registers in the backward; a column per
# thread (BN = 4 on 4 warps, 16 on 16): 1.5 / 1.6 at 72-168 registers; R = 16: less waste when T is not a
# multiple of 32. Four configurations: each is compiled per batch size, J and pass when first autotuned.
_CONFIGS = _configs(
    [({"R": 32, "BN": 8}, 4), ({"R": 32, "BN": 4}, 4), ({"R": 32, "BN": 16}, 16), ({"R": 16, "BN": 8}, 4)],
    {"R": 3, "BN": 4},
)
_MAX_R = max(c.kwargs["R"] for c in _CONFIGS)
_MAX_LANES = 4 if _INTERPRETED else 32  # small lanes under the interpreter: tests cross batch tiles
_MAX_SHARES = 8  # most shares of the reduction over input groups (float32 partial sums of the output)


def lanes_for(batch: int) -> int:
    """Batch lanes of a tile: the smallest power of two >= ``batch``, at most 32 (a warp's width)."""
    return min(_MAX_LANES, triton.next_power_of_2(max(batch, 1)))


# ----------------------------------------------------------------------------------------------- kernels
@triton.autotune(configs=_CONFIGS, key=["T", "B", "N", "Q", "J", "SIGN", "OUT", "GC"], reset_to_zero=["gc_ptr"])
@triton.jit
def _tap_kernel(src_ptr, c_ptr, s_ptr, dst_ptr, x_ptr, gc_ptr, T, N, Q, G, ROW, PAD, S, B: tl.constexpr,
                J: tl.constexpr, SIGN: tl.constexpr, OUT: tl.constexpr, GC: tl.constexpr, ACC: tl.constexpr,
                L: tl.constexpr, R: tl.constexpr, BN: tl.constexpr):
    """``dst[k, t, b, n] = sum_{q, j} c[q, n, j] * src[q // G][(t + SIGN * (s[q, n] + j)) * B + b]`` over the
    ``k``-th of ``S`` shares of the ``Q`` runs (``S = 1``: the whole sum, dst ``[T, B, N]``), if ``OUT``; and,
    if ``GC`` (``SIGN = +1`` only), ``gc[q, n, j] += sum_{t, b} x[t, b, n] * src[q // G][(t + s[q, n] + j) * B + b]``
    over this program's steps and lanes (atomically: programs of other steps and lanes add to the same entries).

    src: padded rows of ``ROW`` values (``SIGN = -1``: ``PAD`` zeros then the row; ``+1``: the row then zeros),
    c ``[Q + 1, N, J]``, s ``[Q + 1, N]`` int32 clamped to ``T`` (row ``Q`` is look-ahead padding); x ``[T, B, N]``
    contiguous, gc ``[Q, N, J]`` float32/64.
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
    xs = ()
    if GC:  # this program's steps of x, loaded once for every run (zeros past T and B)
        for r in tl.static_range(R):
            t = t0 + r
            x_at = x_ptr + (tl.cast(t, tl.int64) * B + lanes) * N + n_c[:, None]
            xs = xs + (tl.load(x_at, mask=(lanes < B) & (t < T), other=0.0).to(ACC),)
    s_next = tl.load(s_ptr + q_lo * N + n_c)
    for q in range(q_lo, q_hi):
        shift = s_next
        s_next = tl.load(s_ptr + (q + 1) * N + n_c)  # the next run's, in flight during this one
        row = src_ptr + tl.cast(q // G, tl.int64) * ROW
        if SIGN < 0:
            start = PAD + (t0 - shift - (J - 1)) * B  # >= 0: shift <= T, PAD >= (T + J - 1) * B
        else:
            start = (t0 + shift) * B
        ptrs = row + start[:, None] + lanes
        win = ()
        for w in tl.static_range(R + J - 1):
            win = win + (tl.load(ptrs + w * B).to(ACC),)
        if OUT:
            cs = ()
            for j in tl.static_range(J):
                cs = cs + (tl.load(c_ptr + (q * N + n_c) * J + j).to(ACC)[:, None],)
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
        if GC:
            gc_at = gc_ptr + (tl.cast(q, tl.int64) * N + n) * J
            for j in tl.static_range(J):
                p = xs[0] * win[j]
                for r in tl.static_range(1, R):
                    p = p + xs[r] * win[r + j]
                tl.atomic_add(gc_at + j, tl.sum(p, axis=1), mask=n < N)
    if OUT:
        ok = (lanes < B) & (n[:, None] < N)
        out = dst_ptr + share.to(tl.int64) * T * B * N + lanes.to(tl.int64) * N + n[:, None]
        for r in tl.static_range(R):
            t = t0 + r
            tl.store(out + tl.cast(t, tl.int64) * B * N, acc[r].to(dst_ptr.dtype.element_ty), mask=ok & (t < T))


# ----------------------------------------------------------------------------------------------- launchers
def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _sum_dtype(dtype: torch.dtype) -> torch.dtype:
    """The torch dtype of partial sums (``_acc_dtype``'s): float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _pad(steps: int, batch: int, band: int) -> int:
    """Zeros around a padded row: reads up to ``T + J - 1`` steps out of range, plus a chunk of steps past ``T``.

    Raises:
        ValueError: a padded row would not fit the kernels' 32-bit indexing.
    """
    if (2 * steps + band + 3 * _MAX_R) * batch + _MAX_LANES >= 2**31:
        raise ValueError(
            f"sparse_delay (triton): T * B = {steps * batch} row positions; the Triton kernels index a padded row "
            "(about 2 * T * B values) with 32-bit integers. Split the batch or the sequence into several calls."
        )
    return (steps + band - 1 + _MAX_R) * batch


def _on(t: torch.Tensor):
    """Launch on ``t``'s GPU (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _padded_rows(t: torch.Tensor, pad: int, left: bool) -> tuple[torch.Tensor, int]:
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


def _taps(src: torch.Tensor, row: int, pad: int, c: torch.Tensor, s: torch.Tensor, like: torch.Tensor, n: int,
          q: int, groups: int, band: int, sign: int, shares: int | None, out: bool = True,
          x: torch.Tensor | None = None, gc: torch.Tensor | None = None) -> torch.Tensor | None:
    """Run ``_tap_kernel``: ``[T, B, n]`` in ``like``'s dtype if ``out`` (else None), and the coefficient
    gradient added into ``gc [q, n, J]`` from ``x [T, B, n]`` if given. The ``q`` runs are split into shares
    (float32 partial outputs, added after the kernel: deterministic) when the tiles alone would not fill the GPU."""
    steps, batch, _ = like.shape
    lanes = lanes_for(batch)
    tiles = triton.cdiv(steps, 16) * triton.cdiv(batch, lanes) * triton.cdiv(n, 16)  # at the middle tile size
    if shares is None:
        shares = min(_MAX_SHARES, triton.cdiv(target_programs(like.device), tiles), max(1, q // 64))
    shares = max(1, min(shares, q))
    if not out:
        dst = like.new_empty(1)
    elif shares == 1:
        dst = like.new_empty((steps, batch, n))
    else:
        dst = torch.empty((shares, steps, batch, n), device=like.device, dtype=_sum_dtype(like.dtype))
    grad = gc is not None

    def grid(meta):
        return triton.cdiv(steps, meta["R"]), triton.cdiv(batch, lanes), triton.cdiv(n, meta["BN"]) * shares

    _tap_kernel[grid](src, c, s, dst, x if grad else dst, gc if grad else dst, steps, n, q, groups, row, pad, shares,
                      batch, band, sign, out, grad, ACC=_acc_dtype(like.dtype), L=lanes)
    if not out:
        return None
    return dst if shares == 1 else dst.sum(0).to(like.dtype)


def delay_forward(x: torch.Tensor, coeff: torch.Tensor, offsets: torch.Tensor, band: int = 1,
                  shares: int | None = None) -> torch.Tensor:
    """``y [T, B, O]`` in ``x``'s dtype (arguments as in ``sparse_delay``, already checked: runs of ``band``
    consecutive offsets); ``shares`` forces the split of the runs (default: enough programs to fill the GPU)."""
    steps, batch, n_in = x.shape
    n_out, _, taps = coeff.shape
    groups = taps // band
    pad = _pad(steps, batch, band)
    if steps * batch == 0 or n_out == 0 or taps == 0:
        return x.new_zeros((steps, batch, n_out))
    xp, row = _padded_rows(x.detach(), pad, left=True)
    shape = (n_out, n_in, groups, band)
    c, s = _tables(coeff.detach().reshape(shape), offsets.reshape(shape), steps)
    with _on(x):
        return _taps(xp, row, pad, c, s, x, n_out, n_in * groups, groups, band, -1, shares)


def delay_backward(
    grad_y: torch.Tensor, x: torch.Tensor, coeff: torch.Tensor, offsets: torch.Tensor, band: int = 1,
    need_x: bool = True, need_coeff: bool = True, shares: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(grad_x [T, B, I] in x's dtype, grad_coeff [O, I, J] in coeff's dtype)``, None where not needed.

    One kernel computes both: the input gradient's windows of ``grad_y`` also give the coefficient gradient
    (``gc[o, i, g, j] = sum_t x_i[t] * gy_o[t + s + j]``), so ``x`` is read once per program and the windows
    once. ``shares`` as in :func:`delay_forward`.
    """
    steps, batch, n_in = x.shape
    n_out, _, taps = coeff.shape
    groups = taps // band
    pad = _pad(steps, batch, band)
    if steps * batch == 0 or n_out == 0 or taps == 0 or not (need_x or need_coeff):
        return (x.new_zeros(x.shape) if need_x else None), (coeff.new_zeros(coeff.shape) if need_coeff else None)
    gyp, row = _padded_rows(grad_y, pad, left=False)
    shape = (n_out, n_in, groups, band)
    c, s = _tables(coeff.detach().reshape(shape).transpose(0, 1), offsets.reshape(shape).transpose(0, 1), steps)
    buf = None
    if need_coeff:  # [O * G, I, J]: the runs (o, g) of the input gradient by its columns i
        buf = torch.zeros((n_out * groups, n_in, band), device=x.device, dtype=_sum_dtype(x.dtype))
    with _on(x):
        gx = _taps(gyp, row, pad, c, s, x, n_in, n_out * groups, groups, band, 1, shares, out=need_x,
                   x=x.detach().contiguous() if need_coeff else None, gc=buf)
    gc = None
    if need_coeff:
        gc = buf.view(n_out, groups, n_in, band).transpose(1, 2).contiguous().view(n_out, n_in, taps)
        gc = gc if gc.dtype == coeff.dtype else gc.to(coeff.dtype)
    return gx, gc


# ----------------------------------------------------------------------------------------------- custom ops
@torch.library.custom_op("dclszoo::delay_forward_triton", mutates_args=())
def _forward_op(x: torch.Tensor, coeff: torch.Tensor, offsets: torch.Tensor, band: int) -> torch.Tensor:
    return delay_forward(x, coeff, offsets, band)


@_forward_op.register_fake
def _forward_fake(x, coeff, offsets, band):
    return x.new_empty((x.shape[0], x.shape[1], coeff.shape[0]))


@torch.library.custom_op("dclszoo::delay_backward_triton", mutates_args=())
def _backward_op(grad_y: torch.Tensor, x: torch.Tensor, coeff: torch.Tensor, offsets: torch.Tensor, band: int,
                 need_x: bool, need_coeff: bool) -> tuple[torch.Tensor, torch.Tensor]:
    gx, gc = delay_backward(grad_y, x, coeff, offsets, band, need_x, need_coeff)
    return (x.new_empty(0) if gx is None else gx), (coeff.new_empty(0) if gc is None else gc)


@_backward_op.register_fake
def _backward_fake(grad_y, x, coeff, offsets, band, need_x, need_coeff):
    return x.new_empty(x.shape if need_x else (0,)), coeff.new_empty(coeff.shape if need_coeff else (0,))


class SparseDelayTriton(torch.autograd.Function):
    """``sparse_delay`` on the Triton kernels; differentiable w.r.t. ``x`` and ``coeff``; ``band``: the taps come
    in runs of ``band`` consecutive offsets (checked by the caller)."""

    @staticmethod
    def forward(ctx, x, coeff, offsets, band=1):
        ctx.save_for_backward(x, coeff, offsets)  # x's rows are rebuilt in backward: no copy kept alive
        ctx.band = band
        if _plain(x, coeff, offsets):
            return delay_forward(x, coeff, offsets, band)
        return _forward_op(x, coeff, offsets, band)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        x, coeff, offsets = ctx.saved_tensors
        need_x, need_c = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
        if not (need_x or need_c):
            return None, None, None, None
        if _plain(grad_y, x, coeff, offsets):
            gx, gc = delay_backward(grad_y, x, coeff, offsets, ctx.band, need_x, need_c)
        else:
            gx, gc = _backward_op(grad_y, x, coeff, offsets, ctx.band, need_x, need_c)
        return (gx if need_x else None), (gc if need_c else None), None, None
