"""Triton kernels of the sparse delay op (private; imported lazily by :mod:`dclszoo.kernels.delay`).

``y[t, b, o] = sum_{i, j} coeff[o, i, j] * x[t - offsets[o, i, j], b, i]`` and its gradients w.r.t. ``x`` and
``coeff``. Triton is imported here only, when the first Triton delay is computed.

Layout. Every channel is one contiguous row of ``W = T * B`` values (time-major): row position ``m = t * B + b``,
a delay of ``d`` steps is a shift of ``d * B`` along the row and causality is ``m - d * B >= 0``. The launchers
transpose ``x`` (forward, coefficient gradient) and ``grad_y`` (input gradient) into rows; ``y`` and
``grad_x`` are written straight into their ``[T, B, C]`` layout. Offsets are clamped to ``T`` inside the
kernels (``d >= T`` is entirely masked), so nothing anywhere is sized by ``max(offsets)``.

Programs (``K = I * J`` synapse taps per output, all accumulation in float32, float64 for float64 inputs):

- forward, one program per (``BM`` row positions, ``BO`` outputs): loop over the ``K`` taps ``k = (i, j)``:
  load the ``BO`` coefficients and offsets of tap ``k`` (``[K, O]`` copies, so these loads are contiguous),
  gather the ``[BM, BO]`` tile ``x_i[m - d * B]`` (each column a contiguous run of row ``i``; masked where
  ``< 0``), ``acc += tile * c``. The ``BO`` columns read one row inside a window of ``BM + T * B`` values, so
  the gather hits L1/L2; every row is fetched from L2/HBM once per (m block, o block).
- input gradient, one program per (``BM`` row positions, ``BI`` inputs): the same with in/out swapped:
  ``gx[m, i] += c[o, i, j] * gy_o[m + d * B]`` (masked where ``>= W``), loop over ``o`` and ``j``.
- coefficient gradient, one program per (output ``o``, ``BC`` taps, split of the row): loop over the row in
  chunks of ``BM``: load ``gy_o[m]`` once (``BM`` values shared by the ``BC`` taps), gather the ``[BC, BM]``
  tile ``x_i[m - d * B]``, accumulate the products elementwise and reduce over the chunk axis at the end. The
  loop starts at the block's smallest shift (everything before it is masked). When ``O * K / BC`` programs
  would not fill the GPU the row is split and the partial sums are added atomically into a float32 buffer.

Counts, per direction, for ``O`` outputs, ``K = I * J`` taps and ``W`` row positions (masked lanes cost as
much as live ones): ``W * O * K`` fused multiply-adds, each fed by one gathered element (the coefficient
gradient also reads ``gy`` once per ``BC`` taps); coefficient / offset loads are ``1 / BM`` of that. For
700 -> 256, T = 100, B = 32 (``W = 3200``): ``5.7e8`` FMAs and gathered loads per direction at ``J = 1``,
``3.4e9`` at ``J = 6``. At 32 L1-hit gathered elements per clock per SM (one warp-wide load), 132 SMs at
1.98 GHz, that is ~69 us per direction at ``J = 1`` and ~0.41 ms at ``J = 6``; the FMAs alone (128 per clock
per SM) would take a quarter of that, the HBM traffic (rows of ``x`` and ``gy``: 9 + 3.3 MB, transposes
included, ~30 MB) ~6 us. The kernels are gather-bound: work and memory grow with ``T * B * I * O * J`` and
not with the delays.

Block sizes are autotuned on the GPU over a few configurations (keys: the sizes); Triton's interpreter
(``TRITON_INTERPRET=1``, CPU tensors) runs one small configuration so that tests cross block edges.

The kernel calls are also ``torch.library`` custom ops with fake implementations, so ``torch.compile`` treats
them as opaque; eager calls on plain tensors skip the dispatcher.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

from .backend import triton_interpreted

__all__ = ["delay_forward", "delay_backward", "SparseDelayTriton"]

_INTERPRETED = triton_interpreted()  # read once: the kernels below are defined in this mode


def _configs(gpu: list[tuple[dict, int]], interpreted: dict) -> list[triton.Config]:
    if _INTERPRETED:
        return [triton.Config(interpreted, num_warps=1)]
    return [triton.Config(meta, num_warps=warps) for meta, warps in gpu]


_FWD_CONFIGS = _configs(
    [({"BM": 64, "BO": 64}, 4), ({"BM": 32, "BO": 64}, 4), ({"BM": 64, "BO": 32}, 4), ({"BM": 128, "BO": 32}, 4),
     ({"BM": 128, "BO": 64}, 8)],
    {"BM": 16, "BO": 8},
)
_BWD_X_CONFIGS = _configs(
    [({"BM": 64, "BI": 64}, 4), ({"BM": 32, "BI": 64}, 4), ({"BM": 64, "BI": 32}, 4), ({"BM": 128, "BI": 32}, 4),
     ({"BM": 128, "BI": 64}, 8)],
    {"BM": 16, "BI": 4},
)
_BWD_C_CONFIGS = _configs(
    [({"BC": 64, "BM": 64}, 4), ({"BC": 32, "BM": 128}, 4), ({"BC": 128, "BM": 32}, 4), ({"BC": 16, "BM": 128}, 4)],
    {"BC": 8, "BM": 8},
)


# ----------------------------------------------------------------------------------------------- kernels
@triton.autotune(configs=_FWD_CONFIGS, key=["W", "O", "I", "J"])
@triton.jit
def _forward_kernel(x_ptr, c_ptr, off_ptr, y_ptr, W, O, I, J, T, B,
                    ACC: tl.constexpr, BM: tl.constexpr, BO: tl.constexpr):
    """``y[m, o] = sum_{i, j} c[i, j, o] * x[i, m - min(off[i, j, o], T) * B]``; x rows ``[I, W]``,
    c / off ``[I, J, O]``, y ``[W, O]``."""
    m = tl.program_id(0) * BM + tl.arange(0, BM)
    o = tl.program_id(1) * BO + tl.arange(0, BO)
    m_ok = m < W
    o_ok = o < O
    acc = tl.zeros((BM, BO), dtype=ACC)
    row = x_ptr
    c_p = c_ptr + o
    off_p = off_ptr + o
    for _i in range(I):
        for _j in range(J):
            c = tl.load(c_p, mask=o_ok, other=0.0).to(ACC)
            shift = (tl.minimum(tl.load(off_p, mask=o_ok, other=T), T) * B).to(tl.int32)
            src = m[:, None] - shift[None, :]
            xv = tl.load(row + src, mask=(src >= 0) & m_ok[:, None], other=0.0).to(ACC)
            acc += xv * c[None, :]
            c_p += O
            off_p += O
        row += W
    out = y_ptr + m[:, None].to(tl.int64) * O + o[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & o_ok[None, :])


@triton.autotune(configs=_BWD_X_CONFIGS, key=["W", "I", "O", "J"])
@triton.jit
def _grad_x_kernel(gy_ptr, c_ptr, off_ptr, gx_ptr, W, I, O, J, T, B,
                   ACC: tl.constexpr, BM: tl.constexpr, BI: tl.constexpr):
    """``gx[m, i] = sum_{o, j} c[o, j, i] * gy[o, m + min(off[o, j, i], T) * B]``; gy rows ``[O, W]``,
    c / off ``[O, J, I]``, gx ``[W, I]``."""
    m = tl.program_id(0) * BM + tl.arange(0, BM)
    i = tl.program_id(1) * BI + tl.arange(0, BI)
    i_ok = i < I
    acc = tl.zeros((BM, BI), dtype=ACC)
    row = gy_ptr
    c_p = c_ptr + i
    off_p = off_ptr + i
    for _o in range(O):
        for _j in range(J):
            c = tl.load(c_p, mask=i_ok, other=0.0).to(ACC)
            shift = (tl.minimum(tl.load(off_p, mask=i_ok, other=T), T) * B).to(tl.int32)
            src = m[:, None] + shift[None, :]  # >= W for rows m >= W and for masked inputs (shift = W)
            g = tl.load(row + src, mask=src < W, other=0.0).to(ACC)
            acc += g * c[None, :]
            c_p += I
            off_p += I
        row += W
    out = gx_ptr + m[:, None].to(tl.int64) * I + i[None, :]
    tl.store(out, acc.to(gx_ptr.dtype.element_ty), mask=(m < W)[:, None] & i_ok[None, :])


@triton.autotune(configs=_BWD_C_CONFIGS, key=["W", "O", "K"], reset_to_zero=["gc_ptr"])
@triton.jit
def _grad_coeff_kernel(x_ptr, gy_ptr, off_ptr, gc_ptr, W, O, K, J, T, B,
                       ACC: tl.constexpr, BC: tl.constexpr, BM: tl.constexpr):
    """``gc[o, k] = sum_m gy[o, m] * x[k // J, m - min(off[o, k], T) * B]`` over this program's split of the
    row; x rows ``[I, W]``, gy rows ``[O, W]``, off / gc ``[O, K]``."""
    o = tl.program_id(0).to(tl.int64)
    col = tl.program_id(1) * BC + tl.arange(0, BC)
    split = tl.program_id(2)
    n_split = tl.num_programs(2)
    c_ok = col < K
    shift = (tl.minimum(tl.load(off_ptr + o * K + col, mask=c_ok, other=T), T) * B).to(tl.int32)
    rows = x_ptr + (col // J).to(tl.int64)[:, None] * W
    per = tl.cdiv(tl.cdiv(W, BM), n_split) * BM
    start = split * per
    stop = tl.minimum(start + per, W)
    first = tl.maximum(start, tl.min(shift, axis=0))  # before the smallest shift every product is masked
    gy_row = gy_ptr + o * W
    acc = tl.zeros((BC, BM), dtype=ACC)
    for m0 in range(first, stop, BM):
        m = m0 + tl.arange(0, BM)
        m_ok = m < stop
        g = tl.load(gy_row + m, mask=m_ok, other=0.0).to(ACC)
        src = m[None, :] - shift[:, None]
        xv = tl.load(rows + src, mask=(src >= 0) & m_ok[None, :], other=0.0).to(ACC)
        acc += xv * g[None, :]
    total = tl.sum(acc, axis=1)
    if n_split > 1:
        tl.atomic_add(gc_ptr + o * K + col, total, mask=c_ok)
    else:
        tl.store(gc_ptr + o * K + col, total, mask=c_ok)


# ----------------------------------------------------------------------------------------------- launchers
def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``[T, B, C] -> [C, T*B]`` contiguous rows, one per channel (a view when already laid out so)."""
    steps, batch, ch = t.shape
    return t.permute(2, 0, 1).reshape(ch, steps * batch).contiguous()


@functools.lru_cache(maxsize=8)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _target_programs(device: torch.device) -> int:
    """Programs that fill the device (the coefficient gradient splits its rows below this); 1 on CPU."""
    if device.type != "cuda":
        return 1
    return 4 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def _check_width(width: int) -> None:
    if 2 * width >= 2**31:
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
    xt = _rows(x.detach())
    c = coeff.detach().permute(1, 2, 0).contiguous()  # [I, J, O]: a tap's outputs side by side
    off = offsets.permute(1, 2, 0).contiguous()
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        grid = lambda meta: (triton.cdiv(width, meta["BM"]), triton.cdiv(n_out, meta["BO"]))  # noqa: E731
        _forward_kernel[grid](xt, c, off, y, width, n_out, n_in, taps, steps, batch, ACC=_acc_dtype(x.dtype))
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
    gyt = _rows(grad_y)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        if need_x:
            gx = x.new_empty(x.shape)  # every entry written by the kernel
            c = coeff.detach().permute(0, 2, 1).contiguous()  # [O, J, I]: a tap's inputs side by side
            off = offsets.permute(0, 2, 1).contiguous()
            grid = lambda meta: (triton.cdiv(width, meta["BM"]), triton.cdiv(n_in, meta["BI"]))  # noqa: E731
            _grad_x_kernel[grid](gyt, c, off, gx, width, n_in, n_out, taps, steps, batch, ACC=acc)
        if need_coeff:
            xt = _rows(x.detach())
            off = offsets.contiguous()
            buf = torch.zeros((n_out, n_in, taps), device=x.device,
                              dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
            target = _target_programs(x.device)

            def grid(meta):
                tiles = n_out * triton.cdiv(k, meta["BC"])
                chunks = triton.cdiv(width, meta["BM"])
                n_split = split if split is not None else triton.cdiv(target, tiles)
                return (n_out, triton.cdiv(k, meta["BC"]), max(1, min(n_split, chunks)))

            _grad_coeff_kernel[grid](xt, gyt, off, buf, width, n_out, k, taps, steps, batch, ACC=acc)
            gc = buf if buf.dtype == coeff.dtype else buf.to(coeff.dtype)
    return gx, gc


# ----------------------------------------------------------------------------------------------- custom ops
@torch.library.custom_op("dclszoo::delay_forward_triton", mutates_args=())
def _forward_op(x: torch.Tensor, coeff: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    return delay_forward(x, coeff, offsets)


@_forward_op.register_fake
def _forward_fake(x, coeff, offsets):
    return x.new_empty((x.shape[0], x.shape[1], coeff.shape[0]))


@torch.library.custom_op("dclszoo::delay_backward_triton", mutates_args=())
def _backward_op(grad_y: torch.Tensor, x: torch.Tensor, coeff: torch.Tensor, offsets: torch.Tensor,
                 need_x: bool, need_coeff: bool) -> tuple[torch.Tensor, torch.Tensor]:
    gx, gc = delay_backward(grad_y, x, coeff, offsets, need_x, need_coeff)
    return (x.new_empty(0) if gx is None else gx), (coeff.new_empty(0) if gc is None else gc)


@_backward_op.register_fake
def _backward_fake(grad_y, x, coeff, offsets, need_x, need_coeff):
    return x.new_empty(x.shape if need_x else (0,)), coeff.new_empty(coeff.shape if need_coeff else (0,))


def _plain(*tensors) -> bool:
    """Eager call on ordinary tensors: the custom-op dispatcher can be skipped (not when compiling or tracing)."""
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return False
    return all(type(t) is torch.Tensor for t in tensors)


class SparseDelayTriton(torch.autograd.Function):
    """``sparse_delay`` on the Triton kernels; differentiable w.r.t. ``x`` and ``coeff``."""

    @staticmethod
    def forward(ctx, x, coeff, offsets):
        ctx.save_for_backward(x, coeff, offsets)  # x's rows are rebuilt in backward: no copy kept alive
        if _plain(x, coeff, offsets):
            return delay_forward(x, coeff, offsets)
        return _forward_op(x, coeff, offsets)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        x, coeff, offsets = ctx.saved_tensors
        need_x, need_c = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
        if not (need_x or need_c):
            return None, None, None
        if _plain(grad_y, x, coeff, offsets):
            gx, gc = delay_backward(grad_y, x, coeff, offsets, need_x, need_c)
        else:
            gx, gc = _backward_op(grad_y, x, coeff, offsets, need_x, need_c)
        return (gx if need_x else None), (gc if need_c else None), None
