"""Triton kernels of the sparse delay op (private; imported lazily by :mod:`dclszoo.kernels.delay`).

``y[t, b, o] = sum_{i, j} coeff[o, i, j] * x[t - offsets[o, i, j], b, i]`` and its gradients w.r.t. ``x`` and
``coeff``. Triton is imported here only, when the first Triton delay is computed.

Layout. Every channel is one row of ``W = T * B`` values (time-major): row position ``m = t * B + b``, a delay
of ``d`` steps is a shift of ``d * B`` along the row. The launchers copy ``x`` (and ``grad_y``) into rows
padded with ``W`` zeros on the side the shift comes from (offsets are clamped to ``T``, so a shift is at most
``W``): causality costs no mask and no compare, a tap that falls before ``t = 0`` reads a zero. ``y`` and
``grad_x`` are written straight into their ``[T, B, C]`` layout. Nothing is sized by ``max(offsets)``: the
extra memory is the padded copy (twice the tensor) and ``O * I * J`` tables.

Programs (``K = I * J`` taps per output; accumulation in float32, float64 for float64 inputs). A tile is
``[R, columns, L]``: ``L = 32`` lanes run along the row (a warp's gather is one contiguous 128-byte run), each
thread holds ``R`` rows of a few columns, the warps split the columns.

- forward, one program per (``R * L`` row positions, ``BN`` outputs): loop over the ``K`` taps: the ``BN``
  coefficients and shifts of the next tap are loaded while this tap's ``[R, BN, L]`` tile
  ``x_i[m - shift]`` is gathered (one base pointer per column, the ``R`` rows at constant offsets from it),
  ``acc += tile * c``. The ``BN`` columns read one row of ``x`` inside a window of ``R * L + T * B`` values.
- input gradient, one program per (``R * L`` row positions, ``BN`` inputs): the same kernel with in/out swapped,
  ``gx[m, i] += c[o, i, j] * gy_o[m + shift]`` over the ``O * J`` taps ``(o, j)``.
- coefficient gradient, one program per (output ``o``, ``BC`` taps, split of the row): loop over the row in
  chunks of ``R * L``: load ``gy_o[m]`` once for the ``BC`` taps, gather ``x_i[m - shift]``, accumulate the
  products elementwise, reduce once at the end. The loop starts at the block's smallest shift. When
  ``O * K / BC`` programs would not fill the GPU the row is split and partial sums are added atomically.

Counts per direction (``W * O * K`` fused multiply-adds, each with one gathered element; every term is
computed, a causally dead one reads a zero). For 700 -> 256, T = 100, B = 32 (``W = 3200``): 5.7e8 at
``J = 1``, 3.4e9 at ``J = 6``. Besides the gathers: 2 table loads (coefficient, shift) per column per tap,
i.e. ``2 / R`` of the gathers (forward, input gradient), and one ``gy`` load per ``BC / warps`` gathers
(coefficient gradient). In the sm_90 builds a gathered element costs 3.1-3.7 instructions (LDG, FFMA and the
shared address/look-ahead work), under the 4 per clock per lane an SM issues, so the kernels are bound by the
load path: at 32 gathered elements per clock per SM (L1 hits), 132 SMs, 1.98 GHz, 69 us per direction at
``J = 1`` plus 6-25% of table loads, ~0.41-0.46 ms at ``J = 6``; the FMAs alone (128 per clock per SM) take a
quarter of that, the HBM traffic (padded copies, ``y``, ``grad_x``: ~80 MB for a forward and backward) ~17 us.
Where delays spread over more than a tile's window (``T * B`` >> ``R * L * BN``) or in the coefficient
gradient at ``J = 1`` (each column gathers a different row of ``x``) the gathers miss L1 and the L2 bandwidth
bounds instead (4 bytes per gathered element).

Block sizes are autotuned on the GPU over a few configurations (keys: the sizes and ``J``); Triton's
interpreter (``TRITON_INTERPRET=1``, CPU tensors) runs one small configuration so that tests cross block edges.

The kernel calls are also ``torch.library`` custom ops with fake implementations, so ``torch.compile`` treats
them as opaque; eager calls on plain tensors skip the dispatcher.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

from .backend import plain_tensors as _plain
from .backend import triton_interpreted

__all__ = ["delay_forward", "delay_backward", "SparseDelayTriton"]

_INTERPRETED = triton_interpreted()  # read once: the kernels below are defined in this mode


def _configs(gpu: list[tuple[dict, int]], interpreted: dict) -> list[triton.Config]:
    if _INTERPRETED:
        return [triton.Config(interpreted, num_warps=1)]
    return [triton.Config(meta, num_warps=warps) for meta, warps in gpu]


# Configurations: ``R`` rows of ``L`` lanes (``BM = R * L`` row positions; lanes run along the row so that a warp's
# gather is one contiguous run) by ``BN`` / ``BC`` columns split over the warps. Chosen from the SASS of
# sm_90 builds: no shared-memory round trips in the loops, <= 128 registers, ~3-4 instructions per gathered
# element (one LDG, one FFMA, address and look-ahead overhead shared by the ``R`` rows of a column).
_GATHER_CONFIGS = _configs(  # the forward and the input gradient (one kernel)
    [({"R": 8, "L": 32, "BN": 16}, 4), ({"R": 8, "L": 32, "BN": 32}, 8), ({"R": 16, "L": 32, "BN": 16}, 8),
     ({"R": 16, "L": 32, "BN": 32}, 16), ({"R": 8, "L": 32, "BN": 64}, 16)],
    {"R": 2, "L": 8, "BN": 8},
)
_BWD_C_CONFIGS = _configs(
    [({"R": 2, "L": 32, "BC": 64}, 4), ({"R": 2, "L": 32, "BC": 128}, 8), ({"R": 1, "L": 32, "BC": 64}, 4),
     ({"R": 2, "L": 32, "BC": 16}, 1)],
    {"R": 2, "L": 8, "BC": 8},
)
_TAIL = max(c.kwargs["R"] * c.kwargs["L"] for c in _GATHER_CONFIGS + _BWD_C_CONFIGS)
"""Zeros after the last padded row: a block of ``R * L`` rows may run that far past a row's end."""


# ----------------------------------------------------------------------------------------------- kernels
@triton.autotune(configs=_GATHER_CONFIGS, key=["W", "N", "Q", "J", "SIGN"])
@triton.jit
def _gather_kernel(src_ptr, c_ptr, s_ptr, dst_ptr, W, N, Q, B, J: tl.constexpr, SIGN: tl.constexpr,
                   ACC: tl.constexpr, R: tl.constexpr, L: tl.constexpr, BN: tl.constexpr):
    """``dst[m, n] = sum_q c[q, n] * src[q // J, m + SIGN * s[q, n] * B]``, c / s ``[Q + 1, N]`` (row ``Q`` unused;
    s = the offsets clamped to ``T``, int32), dst ``[W, N]``.

    Forward (``SIGN = -1``): src = x in left-padded rows (row ``i`` at ``src_ptr + i * 2W``: ``W`` zeros, then its
    ``W`` values), ``N = O`` outputs, ``Q = I * J`` taps. Input gradient (``SIGN = +1``): src = grad_y in
    right-padded rows (its ``W`` values, then ``W`` zeros), ``N = I``, ``Q = O * J``.
    """
    m = tl.program_id(0) * (R * L) + tl.arange(0, R)[:, None, None] * L + tl.arange(0, L)[None, None, :]
    n = tl.program_id(1) * BN + tl.arange(0, BN)
    m_ok = m < W  # rows m >= W (last block) read the next row or the tail; they are not stored
    n_ok = n < N
    acc = tl.zeros((R, BN, L), dtype=ACC)
    c_p = c_ptr + tl.minimum(n, N - 1)  # absent columns repeat the last one (not stored): loads need no mask
    s_p = s_ptr + tl.minimum(n, N - 1)
    c_next = tl.load(c_p)
    s_next = tl.load(s_p)
    for q in range(Q):
        c = c_next.to(ACC)
        shift = s_next * B
        c_p += N
        s_p += N
        c_next = tl.load(c_p)  # the next tap's (row Q is padding), in flight during this tap's gather
        s_next = tl.load(s_p)
        row = src_ptr + tl.cast(q // J, tl.int64) * (2 * W)
        if SIGN < 0:
            base = row + W - shift  # shift <= W: at worst the zeros before the row
        else:
            base = row + shift  # m < W, shift <= W: at worst the zeros after the row
        v = tl.load(base[None, :, None] + m)
        acc += v.to(ACC) * c[None, :, None]
    out = dst_ptr + m.to(tl.int64) * N + n[None, :, None]
    tl.store(out, acc.to(dst_ptr.dtype.element_ty), mask=m_ok & n_ok[None, :, None])


@triton.autotune(configs=_BWD_C_CONFIGS, key=["W", "O", "K", "J"], reset_to_zero=["gc_ptr"])
@triton.jit
def _grad_coeff_kernel(x_ptr, gy_ptr, s_ptr, gc_ptr, W, O, K, B, J: tl.constexpr,
                       ACC: tl.constexpr, R: tl.constexpr, L: tl.constexpr, BC: tl.constexpr):
    """``gc[o, k] = sum_m gy[o, m] * x[k // J, m - s[o, k] * B]`` over this program's split of the row; x and gy
    in padded rows as above (followed by ``_TAIL`` zeros), s / gc ``[O, K]``."""
    o = tl.program_id(0).to(tl.int64)
    col = tl.program_id(1) * BC + tl.arange(0, BC)
    split = tl.program_id(2)
    n_split = tl.num_programs(2)
    c_ok = col < K
    shift = tl.load(s_ptr + o * K + col, mask=c_ok, other=0) * B
    row = tl.where(c_ok, col // J, 0).to(tl.int64)
    base = (x_ptr + row * (2 * W) + W - shift)[None, :, None]
    lanes = tl.arange(0, R)[:, None, None] * L + tl.arange(0, L)[None, None, :]
    per = tl.cdiv(tl.cdiv(W, R * L), n_split) * (R * L)
    start = split * per
    stop = tl.minimum(start + per, W)
    first = tl.maximum(start, tl.min(tl.where(c_ok, shift, W), axis=0))  # before it every x read is a zero
    gy_row = gy_ptr + o * (2 * W)
    acc = tl.zeros((R, BC, L), dtype=ACC)
    for m0 in range(first, stop, R * L):
        m = m0 + lanes
        g = tl.load(gy_row + m, mask=m < stop, other=0.0).to(ACC)
        # m < W + R * L: past the end of a row x_ptr reads the next row or the tail, times g = 0
        xv = tl.load(base + m).to(ACC)
        acc += xv * g
    total = tl.sum(tl.sum(acc, axis=2), axis=0)
    if n_split > 1:
        tl.atomic_add(gc_ptr + o * K + col, total, mask=c_ok)
    else:
        tl.store(gc_ptr + o * K + col, total, mask=c_ok)


# ----------------------------------------------------------------------------------------------- launchers
def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _padded_rows(t: torch.Tensor, left: bool) -> torch.Tensor:
    """``[T, B, C]`` as a flat buffer of ``C`` rows of ``2W`` (``W = T * B``): ``W`` zeros then the channel's
    values (``left``) or the values then ``W`` zeros, followed by ``_TAIL`` zeros. The kernels gather without
    masks: a shift of at most ``W`` lands in the zeros."""
    steps, batch, ch = t.shape
    width = steps * batch
    buf = t.new_zeros(ch * 2 * width + _TAIL)
    rows = buf[: ch * 2 * width].view(ch, 2, steps, batch)[:, 1 if left else 0]
    rows.copy_(t.permute(2, 0, 1))
    return buf


def _tap_table(coeff: torch.Tensor, offsets: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Views ``[a, b, n]`` of the coefficients and offsets as contiguous ``[a * b + 1, n]`` tables, the offsets
    clamped to ``steps`` as int32; row ``a * b`` is padding for the kernels' look-ahead."""
    shape = coeff.shape
    rows = shape[0] * shape[1]
    c = coeff.new_empty((rows + 1, shape[2]))
    c[:rows].view(shape).copy_(coeff)
    s = torch.empty((rows + 1, shape[2]), dtype=torch.int32, device=coeff.device)
    s[:rows].view(shape).copy_(offsets.clamp(max=steps))
    return c, s


@functools.lru_cache(maxsize=8)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _target_programs(device: torch.device) -> int:
    """Programs that fill the device (the coefficient gradient splits its rows below this); 1 on CPU."""
    if device.type != "cuda":
        return 1
    return 4 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def _check_width(width: int) -> None:
    if 2 * width + _TAIL >= 2**31:
        raise ValueError(
            f"sparse_delay (triton): T * B = {width} row positions; the Triton kernels index a row with 32-bit "
            "integers (T * B < 2**30). Split the batch into several calls."
        )


def delay_forward(x: torch.Tensor, coeff: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``y [T, B, O]`` in ``x``'s dtype (arguments as in ``sparse_delay``, already checked)."""
    steps, batch, _ = x.shape
    n_out, n_in, taps = coeff.shape
    width, k = steps * batch, n_in * taps
    _check_width(width)
    if width == 0 or n_out == 0 or k == 0:
        return x.new_zeros((steps, batch, n_out))
    y = x.new_empty((steps, batch, n_out))
    xp = _padded_rows(x.detach(), left=True)
    c, s = _tap_table(coeff.detach().permute(1, 2, 0), offsets.permute(1, 2, 0), steps)  # a tap's outputs in a row
    with _on(x):
        grid = lambda meta: (triton.cdiv(width, meta["R"] * meta["L"]), triton.cdiv(n_out, meta["BN"]))  # noqa: E731
        _gather_kernel[grid](xp, c, s, y, width, n_out, k, batch, taps, -1, ACC=_acc_dtype(x.dtype))
    return y


def delay_backward(
    grad_y: torch.Tensor, x: torch.Tensor, coeff: torch.Tensor, offsets: torch.Tensor,
    need_x: bool = True, need_coeff: bool = True, split: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(grad_x [T, B, I] in x's dtype, grad_coeff [O, I, J] in coeff's dtype)``, None where not needed.

    ``split`` forces the number of row chunks of the coefficient gradient (default: enough programs to fill
    the GPU; a split > 1 adds partial sums atomically).
    """
    steps, batch, _ = x.shape
    n_out, n_in, taps = coeff.shape
    width, k = steps * batch, n_in * taps
    _check_width(width)
    if width == 0 or n_out == 0 or k == 0 or not (need_x or need_coeff):
        return (x.new_zeros(x.shape) if need_x else None), (coeff.new_zeros(coeff.shape) if need_coeff else None)
    gx, gc = None, None
    acc = _acc_dtype(x.dtype)
    gyp = _padded_rows(grad_y, left=False)
    with _on(x):
        if need_x:
            gx = x.new_empty(x.shape)  # every entry written by the kernel
            c, s = _tap_table(coeff.detach().permute(0, 2, 1), offsets.permute(0, 2, 1), steps)  # inputs in a row
            grid = lambda meta: (triton.cdiv(width, meta["R"] * meta["L"]), triton.cdiv(n_in, meta["BN"]))  # noqa: E731
            _gather_kernel[grid](gyp, c, s, gx, width, n_in, n_out * taps, batch, taps, 1, ACC=acc)
        if need_coeff:
            xp = _padded_rows(x.detach(), left=True)
            s = offsets.clamp(max=steps).to(torch.int32, memory_format=torch.contiguous_format)
            buf = torch.zeros((n_out, n_in, taps), device=x.device,
                              dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
            target = _target_programs(x.device)

            def grid(meta):
                tiles = n_out * triton.cdiv(k, meta["BC"])
                chunks = triton.cdiv(width, meta["R"] * meta["L"])
                n_split = split if split is not None else triton.cdiv(target, tiles)
                return (n_out, triton.cdiv(k, meta["BC"]), max(1, min(n_split, chunks)))

            _grad_coeff_kernel[grid](xp, gyp, s, buf, width, n_out, k, batch, taps, ACC=acc)
            gc = buf if buf.dtype == coeff.dtype else buf.to(coeff.dtype)
    return gx, gc


def _on(t: torch.Tensor):
    """Launch on ``t``'s GPU (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------- custom ops
def _forward(x: torch.Tensor, coeff: torch.Tensor, offsets: torch.Tensor, band: int) -> torch.Tensor:
    if band > 1:
        from ._delay_band_triton import band_forward

        return band_forward(x, coeff, offsets, band)
    return delay_forward(x, coeff, offsets)


def _backward(grad_y, x, coeff, offsets, band, need_x, need_coeff):
    if band > 1:
        from ._delay_band_triton import band_backward

        return band_backward(grad_y, x, coeff, offsets, band, need_x, need_coeff)
    return delay_backward(grad_y, x, coeff, offsets, need_x, need_coeff)


@torch.library.custom_op("dclszoo::delay_forward_triton", mutates_args=())
def _forward_op(x: torch.Tensor, coeff: torch.Tensor, offsets: torch.Tensor, band: int) -> torch.Tensor:
    return _forward(x, coeff, offsets, band)


@_forward_op.register_fake
def _forward_fake(x, coeff, offsets, band):
    return x.new_empty((x.shape[0], x.shape[1], coeff.shape[0]))


@torch.library.custom_op("dclszoo::delay_backward_triton", mutates_args=())
def _backward_op(grad_y: torch.Tensor, x: torch.Tensor, coeff: torch.Tensor, offsets: torch.Tensor, band: int,
                 need_x: bool, need_coeff: bool) -> tuple[torch.Tensor, torch.Tensor]:
    gx, gc = _backward(grad_y, x, coeff, offsets, band, need_x, need_coeff)
    return (x.new_empty(0) if gx is None else gx), (coeff.new_empty(0) if gc is None else gc)


@_backward_op.register_fake
def _backward_fake(grad_y, x, coeff, offsets, band, need_x, need_coeff):
    return x.new_empty(x.shape if need_x else (0,)), coeff.new_empty(coeff.shape if need_coeff else (0,))


class SparseDelayTriton(torch.autograd.Function):
    """``sparse_delay`` on the Triton kernels; differentiable w.r.t. ``x`` and ``coeff``. ``band > 1``: the
    taps come in runs of ``band`` consecutive offsets (checked by the caller) and take the banded kernels of
    :mod:`._delay_band_triton`."""

    @staticmethod
    def forward(ctx, x, coeff, offsets, band=1):
        ctx.save_for_backward(x, coeff, offsets)  # x's rows are rebuilt in backward: no copy kept alive
        ctx.band = band
        if _plain(x, coeff, offsets):
            return _forward(x, coeff, offsets, band)
        return _forward_op(x, coeff, offsets, band)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        x, coeff, offsets = ctx.saved_tensors
        need_x, need_c = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
        if not (need_x or need_c):
            return None, None, None, None
        if _plain(grad_y, x, coeff, offsets):
            gx, gc = _backward(grad_y, x, coeff, offsets, ctx.band, need_x, need_c)
        else:
            gx, gc = _backward_op(grad_y, x, coeff, offsets, ctx.band, need_x, need_c)
        return (gx if need_x else None), (gc if need_c else None), None, None
