"""Triton kernels of the large-kernel depthwise convolution (private; used by :mod:`dclszoo.kernels.dwconv`).

``y[n, c, yo, xo] = sum_{ky, kx} K[c, ky, kx] * x[n, c, yo + ky - pt, xo + kx - pl]`` (stride 1, zero padding),
for a dense ``[C, 1, SY, SX]`` kernel such as the one a DCLS layer builds; 1-D convolutions are the case ``SY = 1``.

Why not a loop over the ``SY * SX`` taps: a direct depthwise kernel reads one input value per tap and output (289
reads per output for 17 x 17), and on a GPU such a kernel is bound by its load instructions; its time grows with
the kernel's area (../shared/CONTEXT.md §8: 5.5x the 7x7's time at 17x17). Here every kernel row is a **banded
(Toeplitz) matrix product** run on the tensor cores: for kernel row ``ky`` and a block of ``BX`` output columns,

    y[(n, yo), xo] += sum_xi x[(n, yo + ky - pt), xi] * T_ky[xi, xo],    T_ky[xi, xo] = K[c, ky, xi - xo + pl]

with ``xi`` running over the ``BX + SX - 1`` input columns the block needs, in ``NCH`` chunks of ``BK``. Rows
``(n, yo)`` of the batch and the image are the matrix rows (``BM`` per program). Per kernel row, a program loads
its ``[BM, BK]`` input tiles (each input value once per chunk) and builds ``T`` from the kernel row (``BK * BX``
reads of a row that sits in L1), then one ``tl.dot`` per chunk. Per output that is ``(BM*BK + BK*BX) * NCH /
(BM * BX)`` reads per kernel row (BM=64, BX=64, BK=16, NCH=5, SX=17: 2.5, i.e. ~42 for the 17 x 17 kernel instead
of 289) and ``2 * BK * NCH`` tensor-core FLOPs, whatever the number of taps or their interpolation.

Backward: the input gradient is the same kernel on the output gradient with the kernel flipped (padding
``S - 1 - p``); the kernel gradient ``dK[c, ky, kx] = sum x[.., yo + ky - pt, xo + kx - pl] * dy[.., yo, xo]`` is
``D = x_tile^T @ dy_tile`` accumulated over the rows (a ``[BK, BX]`` tensor-core product per step; one chunk
spanning all ``BX + SX - 1`` input columns where that fits in 128, so each ``dy`` tile is read once per kernel
row), whose diagonals ``xi - xo = kx - pl`` are summed once at the end. Programs over (channel, kernel row, column chunk,
row split) write partial sums that torch adds (deterministic; no atomics).

Inputs are NCHW-contiguous (the launcher copies other layouts); arithmetic accumulates in float32, the
products run in the input's dtype (bf16/fp16 on the tensor cores, fp32 as TF32 when torch allows TF32 for
cuDNN convolutions, ``torch.backends.cudnn.allow_tf32``, else in full fp32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .backend import pow2 as _pow2
from .backend import target_programs
from .backend import triton_interpreted

__all__ = ["forward", "grad_kernel", "blocks"]

_INTERPRETED = triton_interpreted()  # read once: the kernels below are defined in this mode


@triton.jit
def _dw_fwd(
    x_ptr, k_ptr, b_ptr, y_ptr, C, H, W, HO, WO, M, pt, pl,
    SY: tl.constexpr, SX: tl.constexpr, HAS_BIAS: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
    BM: tl.constexpr, BX: tl.constexpr, BK: tl.constexpr, NCH: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_x = tl.program_id(1)
    c = tl.program_id(2)
    m = pid_m * BM + tl.arange(0, BM)
    m_ok = m < M
    n = (m // HO).to(tl.int64)
    yo = m % HO
    xo = pid_x * BX + tl.arange(0, BX)
    in_rows = (n * C + c) * H  # [BM] first input row of (n, c)
    acc = tl.zeros((BM, BX), dtype=tl.float32)
    for ky in range(SY):
        yi = yo + ky - pt
        r_ok = m_ok & (yi >= 0) & (yi < H)
        row = (in_rows + yi) * W
        for j in tl.static_range(NCH):
            kk = j * BK + tl.arange(0, BK)  # input columns of this chunk, relative to the block's first one
            xi = pid_x * BX - pl + kk
            a = tl.load(x_ptr + row[:, None] + xi[None, :],
                        mask=r_ok[:, None] & ((xi >= 0) & (xi < W))[None, :], other=0.0)
            kx = kk[:, None] - tl.arange(0, BX)[None, :]  # T[xi, xo] = K[c, ky, xi - xo + pl]
            t = tl.load(k_ptr + (c * SY + ky) * SX + kx, mask=(kx >= 0) & (kx < SX), other=0.0)
            if UPCAST:
                acc = tl.dot(a.to(tl.float32), t.to(tl.float32), acc, input_precision=PREC)
            else:
                acc = tl.dot(a, t.to(a.dtype), acc, input_precision=PREC)
    if HAS_BIAS:
        acc += tl.load(b_ptr + c).to(tl.float32)
    out = ((n * C + c) * HO + yo) * WO
    tl.store(y_ptr + out[:, None] + xo[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None] & (xo < WO)[None, :])


@triton.jit
def _dw_grad_kernel(
    x_ptr, gy_ptr, part_ptr, C, H, W, HO, WO, M, pt, pl, ROWS_PER_SPLIT, SPLITS,
    SY: tl.constexpr, SX: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
    BM: tl.constexpr, BX: tl.constexpr, BK: tl.constexpr, NCH: tl.constexpr,
):
    cky = tl.program_id(0)  # (channel, kernel row)
    q = tl.program_id(1)  # (column block, chunk)
    split = tl.program_id(2)  # rows [split * ROWS_PER_SPLIT, ...)
    c = cky // SY
    ky = cky % SY
    xb = q // NCH
    j = q % NCH
    xo = xb * BX + tl.arange(0, BX)
    kk = j * BK + tl.arange(0, BK)
    xi = xb * BX - pl + kk
    col_ok = (xi >= 0) & (xi < W)
    d = tl.zeros((BK, BX), dtype=tl.float32)
    first = split * ROWS_PER_SPLIT
    last = tl.minimum(first + ROWS_PER_SPLIT, M)
    for m0 in range(first, last, BM):
        m = m0 + tl.arange(0, BM)
        m_ok = m < last
        n = (m // HO).to(tl.int64)
        yo = m % HO
        yi = yo + ky - pt
        r_ok = m_ok & (yi >= 0) & (yi < H)
        a = tl.load(x_ptr + ((n * C + c) * H + yi)[:, None] * W + xi[None, :],
                    mask=r_ok[:, None] & col_ok[None, :], other=0.0)
        g = tl.load(gy_ptr + ((n * C + c) * HO + yo)[:, None] * WO + xo[None, :],
                    mask=m_ok[:, None] & (xo < WO)[None, :], other=0.0)
        if UPCAST:
            d = tl.dot(tl.trans(a.to(tl.float32)), g.to(tl.float32), d, input_precision=PREC)
        else:
            d = tl.dot(tl.trans(a), g.to(a.dtype), d, input_precision=PREC)
    kx = kk[:, None] - tl.arange(0, BX)[None, :]  # the kernel column each product belongs to
    part = part_ptr + ((cky * tl.num_programs(1) + q) * SPLITS + split) * SX
    for col in range(SX):
        tl.store(part + col, tl.sum(tl.sum(tl.where(kx == col, d, 0.0), axis=1), axis=0))


def blocks(width_out: int, span_x: int, rows: int) -> dict:
    """Tile sizes for ``width_out`` output columns, a kernel ``span_x`` wide and ``rows`` matrix rows: ``BX``
    output columns (16-64), ``BK`` input columns per chunk and ``NCH`` chunks covering the ``BX + SX - 1`` inputs
    with the least padding (ties: fewer, larger chunks), ``BM`` rows (tl.dot needs every dimension >= 16)."""
    bx = min(64, max(16, _pow2(width_out)))
    need = bx + span_x - 1
    bk = min((64, 32, 16), key=lambda k: (-(-need // k) * k, -k))
    nch = -(-need // bk)
    bm = min(64, max(16, _pow2(rows)))
    return dict(BM=bm, BX=bx, BK=bk, NCH=nch)


def _precision(dtype: torch.dtype) -> str:
    if dtype != torch.float32:
        return "tf32"  # Triton's default (only fp32 operands are affected): bf16 / fp16 products are exact in fp32
    return "tf32" if torch.backends.cudnn.allow_tf32 and not _INTERPRETED else "ieee"


def _upcast(dtype: torch.dtype) -> bool:
    """Products in float32 where Triton's interpreter gets bfloat16 ``tl.dot`` wrong (it does, in triton 3.8)."""
    return _INTERPRETED and dtype == torch.bfloat16


def forward(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None, pad: tuple[int, int],
            out_hw: tuple[int, int]) -> torch.Tensor:
    """``y [N, C, HO, WO]`` for a contiguous ``x [N, C, H, W]`` and a contiguous ``kernel [C, SY, SX]`` (any
    float dtype), zero padding ``pad = (top, left)``; ``y`` in ``x``'s dtype."""
    n, c, h, w = x.shape
    _, sy, sx = kernel.shape
    ho, wo = out_hw
    y = torch.empty((n, c, ho, wo), device=x.device, dtype=x.dtype)
    rows = n * ho
    if y.numel() == 0:
        return y
    b = blocks(wo, sx, rows)
    grid = (triton.cdiv(rows, b["BM"]), triton.cdiv(wo, b["BX"]), c)
    _dw_fwd[grid](
        x, kernel, bias if bias is not None else kernel, y, c, h, w, ho, wo, rows, pad[0], pad[1],
        SY=sy, SX=sx, HAS_BIAS=bias is not None, PREC=_precision(x.dtype), UPCAST=_upcast(x.dtype), **b,
        num_warps=4,
    )
    return y


def grad_kernel(x: torch.Tensor, grad_y: torch.Tensor, span: tuple[int, int], pad: tuple[int, int]) -> torch.Tensor:
    """``dK [C, SY, SX]`` (float32) of :func:`forward` for contiguous ``x`` and ``grad_y``."""
    n, c, h, w = x.shape
    _, _, ho, wo = grad_y.shape
    sy, sx = span
    rows = n * ho
    b = blocks(wo, sx, rows)
    # One chunk covering the block's BX + SX - 1 input columns where it fits in 128: the output-gradient tile is
    # then loaded once per kernel row instead of once per chunk (stage 1 of ConvNeXt-T: 17 instead of 85 reads
    # of it from L2, ~1.7 GB instead of ~4.7 GB), for 1.6x the (cheap) tensor-core work of the exact chunks.
    wide = _pow2(b["BX"] + sx - 1)
    if wide <= 128:
        b.update(BK=wide, NCH=1)
    col_programs = triton.cdiv(wo, b["BX"]) * b["NCH"]
    programs = c * sy * col_programs
    # split the rows until there are a few programs per SM
    splits = max(1, min(triton.cdiv(rows, b["BM"]), triton.cdiv(target_programs(x.device), programs)))
    per_split = triton.cdiv(triton.cdiv(rows, splits), b["BM"]) * b["BM"]
    splits = triton.cdiv(rows, per_split)
    part = torch.empty((c * sy, col_programs, splits, sx), device=x.device, dtype=torch.float32)
    if rows == 0 or wo == 0:
        return part.new_zeros((c, sy, sx))
    grid = (c * sy, col_programs, splits)
    _dw_grad_kernel[grid](
        x, grad_y, part, c, h, w, ho, wo, rows, pad[0], pad[1], per_split, splits,
        SY=sy, SX=sx, PREC=_precision(x.dtype), UPCAST=_upcast(x.dtype), **b,
        num_warps=8 if b["BK"] * b["BX"] >= 8192 else 4,
    )
    return part.sum(dim=(1, 2)).view(c, sy, sx)
