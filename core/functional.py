"""Functional DCLS ops: the lean dense-kernel construction and the DCLS convolution.

The dense kernel of a DCLS convolution is, per (out, in) pair, a sum over taps of products of per-axis 1-D
profiles (both interpolations are separable across axes). :func:`dcls_kernel` builds it as batched matrix
products and has a hand-written backward that recomputes the profiles, so neither direction ever holds the
``prod(span) x ndim x O x I/g x kc`` tensor that the plain formula (:mod:`dclszoo.reference`) needs. Work is
done in chunks of (out, in) rows whose temporaries stay a small fraction of the dense kernel's own size, with
in-place arithmetic so that each chunk holds at most two profile-sized tensors (:mod:`dclszoo._construct`).

1-D and 2-D constructions run in fused kernels instead (:mod:`dclszoo.kernels.construct`): Triton on CUDA tensors,
C or numba for float32 on CPU (``DCLSZOO_BACKEND``, :mod:`dclszoo.kernels.backend`); the torch code below is their
twin and the fallback.

Gaussian profile values below ``exp(-25)`` (float32; ``exp(-200)`` in float64) of the peak are set to zero: far
below the float precision of the result, and it keeps denormal numbers (very slow on CPUs) out of the products.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from dclszoo.kernels import _buffers
from dclszoo.kernels import backend as _backend
from dclszoo.kernels import construct as _fused
from dclszoo.kernels import dwconv as _dwconv

from . import _construct as C
from .reference import dcls_kernel_reference

__all__ = ["dcls_kernel", "dcls_kernel_reference", "dcls_conv", "conv_with_kernel", "empty_cache", "INTERPOLATIONS"]

INTERPOLATIONS = ("gauss", "bilinear")

# Chunking: the temporaries of one chunk may use what is left of a budget of _MEMORY_ENVELOPE dense kernels
# once the output kernel (forward) and the parameter gradients (backward) are counted, but never less than
# _CHUNK_FRACTION of the dense kernel nor fewer than _MIN_CHUNK_ELEMENTS elements.
_MEMORY_ENVELOPE = 1.8
_CHUNK_FRACTION = 0.05
_MIN_CHUNK_ELEMENTS = 1 << 14
_GAUSS_TAIL = {torch.float32: 40.0, torch.float64: 200.0}


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class _Plan:
    """Static description of one construction: shapes, axis groups, grids and chunking."""

    def __init__(self, rows: int, k: int, span: tuple[int, ...], interpolation: str, like: torch.Tensor):
        self.rows, self.k, self.span, self.ndim = rows, k, span, len(span)
        self.gauss = interpolation == "gauss"
        # Axes of equal size are processed together as one stacked [axes, n, K, S] tensor.
        if len(set(span)) == 1:
            self.groups = [(0, self.ndim, span[0])]
        else:
            self.groups = [(d, d + 1, size) for d, size in enumerate(span)]
        self.grids = {size: torch.arange(size, device=like.device, dtype=like.dtype) - (size // 2) for size in span}
        self.ones = {size: torch.ones(size, device=like.device, dtype=like.dtype) for size in span}
        self.tail = _GAUSS_TAIL.get(like.dtype, 25.0)
        self.tail_value = math.exp(-self.tail)
        cube = k * span[1] * span[2] if self.ndim == 3 else 0
        # Elements of temporaries per row: profile-sized tensors plus a few [ndim, n, K] ones.
        small = k * self.ndim
        self.fwd_row = 6 * small if (self.ndim == 1 and k == 1) else k * sum(span) + 6 * small + cube
        self.bwd_row = 2 * k * sum(span) + 16 * small + 2 * cube
        self.profile_in_output = self.ndim == 1 and k == 1

    def chunks(self, per_row: int, reserved: int = 0):
        """Row ranges whose temporaries (``per_row`` elements a row) fit the budget left after ``reserved``."""
        dense = self.rows * math.prod(self.span)
        fraction = max(_CHUNK_FRACTION, _MEMORY_ENVELOPE - 1.0 - reserved / dense)
        budget = max(_MIN_CHUNK_ELEMENTS, int(fraction * dense))
        step = max(1, min(self.rows, budget // max(1, per_row)))
        for a in range(0, self.rows, step):
            yield a, min(self.rows, a + step)

    def lastsum(self, t: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Sum over the last axis of a contiguous tensor as one matrix-vector product (faster than ``sum``)."""
        size = t.shape[-1]
        flat = t.view(-1, size)
        if out is None:
            return torch.mv(flat, self.ones[size]).view(t.shape[:-1])
        torch.mv(flat, self.ones[size], out=out.view(-1))
        return out


class _DclsKernel(torch.autograd.Function):
    """Autograd op building the dense kernel; backward recomputes per-axis profiles chunk by chunk."""

    @staticmethod
    def forward(ctx, weight, positions, sigma, span, interpolation, bounds, sigma_floor, backend):
        ctx.save_for_backward(weight, positions, sigma)
        ctx.span, ctx.interpolation, ctx.bounds, ctx.sigma_floor = span, interpolation, bounds, sigma_floor
        ctx.backend = _fused.select_backend(weight, positions, sigma if interpolation == "gauss" else None, span,
                                            backend)
        if ctx.backend != "torch":  # fused kernels (dclszoo.kernels.construct): float32 out
            s = sigma if interpolation == "gauss" else None
            out = _fused.construct_forward(weight, positions, s, span, interpolation, bounds, sigma_floor,
                                           ctx.backend)
            return out if out.dtype == weight.dtype else out.to(weight.dtype)
        ndim = positions.shape[0]
        o, i, k = weight.shape
        shape4 = (ndim, o, i, k)
        cdt = _compute_dtype(weight.dtype)
        w = weight.reshape(o * i, k).to(cdt)
        p = positions.reshape(ndim, o * i, k).to(cdt)
        plan = _Plan(o * i, k, span, interpolation, p)
        s = C.rows_view(sigma.to(cdt), shape4) if plan.gauss else None
        bounds_t = C.bounds_tensors(bounds, p)
        out = torch.empty((o * i,) + span, device=weight.device, dtype=cdt)
        for a, b in plan.chunks(plan.fwd_row):
            p_ab = C.clamp_positions(p[:, a:b], bounds_t)
            s_ab = None if s is None else C.floor_sigma(s[:, a:b], sigma_floor)
            if plan.profile_in_output:  # 1-D, one tap: the profile is built in the output itself
                prof = [C.profile_into(plan, p_ab, s_ab, out[a:b].unsqueeze(0).unsqueeze(2))]
                scale, _, _ = C.scale_and_sums(plan, w[a:b], prof)
                out[a:b].mul_(scale)
                continue
            prof = C.profiles(plan, p_ab, s_ab)
            scale, _, _ = C.scale_and_sums(plan, w[a:b], prof)
            C.contract_forward(scale, C.axes(prof), out[a:b])
            del prof  # or it would still be alive while the next chunk's profiles are built
        return out.view((o, i) + span).to(weight.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        weight, positions, sigma = ctx.saved_tensors
        span, interpolation, bounds, sigma_floor = ctx.span, ctx.interpolation, ctx.bounds, ctx.sigma_floor
        if ctx.backend != "torch":
            s = sigma if interpolation == "gauss" else None
            grads = _fused.construct_backward(
                grad, weight, positions, s, span, interpolation, bounds, sigma_floor, ctx.needs_input_grad[:3],
                ctx.backend,
            )
            grads = tuple(g if g is None or g.dtype == t.dtype else g.to(t.dtype)
                          for g, t in zip(grads, (weight, positions, sigma)))
            return grads + (None, None, None, None, None)
        ndim = positions.shape[0]
        o, i, k = weight.shape
        shape4, rows = (ndim, o, i, k), o * i
        cdt = _compute_dtype(weight.dtype)
        w = weight.reshape(rows, k).to(cdt)
        p = positions.reshape(ndim, rows, k).to(cdt)
        plan = _Plan(rows, k, span, interpolation, p)
        g = grad.reshape((rows,) + span).to(cdt)
        s = C.rows_view(sigma.to(cdt), shape4) if plan.gauss else None
        need_w, need_p, need_s = ctx.needs_input_grad[:3]
        gw = torch.empty((rows, k), device=w.device, dtype=cdt) if need_w else None
        gp = torch.empty((ndim, rows, k), device=w.device, dtype=cdt) if need_p else None
        gs = C.SigmaGrad(sigma, shape4, rows, cdt) if need_s and plan.gauss else None
        bounds_t = C.bounds_tensors(bounds, p)
        reserved = sum(t.numel() for t in (gw, gp) if t is not None) + (gs.buf.numel() if gs is not None else 0)
        for a, b in plan.chunks(plan.bwd_row, reserved):
            p_ab = C.clamp_positions(p[:, a:b], bounds_t)
            s_raw = None if s is None else s[:, a:b]
            s_ab = None if s is None else C.floor_sigma(s_raw, sigma_floor)
            prof = C.profiles(plan, p_ab, s_ab)
            scale, sums, denom = C.scale_and_sums(plan, w[a:b], prof)
            g_ab = g[a:b].contiguous()  # e.g. the expanded gradient of kernel.sum(): copy one chunk at a time
            if plan.gauss:
                chain = None if sigma_floor is None else torch.sign(s_raw) * (s_raw.abs() >= sigma_floor)
                C.gauss_backward(plan, g_ab, p_ab, s_ab, chain, scale, sums, denom, prof, gw, gp, gs, a, b)
            else:
                C.bilinear_backward(plan, g_ab, p_ab, scale, prof, gw, gp, a, b)
            del prof
        gw = gw.view(o, i, k).to(weight.dtype) if gw is not None else None
        gp = gp.view(shape4).to(positions.dtype) if gp is not None else None
        return gw, gp, (gs.result() if gs is not None else None), None, None, None, None, None


def _check_op_args(weight, positions, sigma, span, interpolation):
    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"interpolation={interpolation!r} is not supported: expected one of {INTERPOLATIONS}."
        )
    if weight.dim() != 3:
        raise ValueError(f"weight must be [O, I/groups, kernel_count], got shape {tuple(weight.shape)}.")
    if positions.dim() != 4 or tuple(positions.shape[1:]) != tuple(weight.shape):
        raise ValueError(
            f"positions must be [ndim, {', '.join(map(str, weight.shape))}] to match weight, "
            f"got shape {tuple(positions.shape)}."
        )
    if len(span) != positions.shape[0]:
        raise ValueError(f"span={tuple(span)} has {len(span)} axes but positions has {positions.shape[0]}.")
    if not 1 <= len(span) <= 3:
        raise ValueError(f"span={tuple(span)}: only 1, 2 or 3 spatial axes are supported.")
    if any(int(x) < 1 for x in span):
        raise ValueError(f"span={tuple(span)}: every axis must be >= 1.")


def dcls_kernel(
    weight: torch.Tensor,
    positions: torch.Tensor,
    sigma: torch.Tensor | float | None,
    span: Sequence[int],
    interpolation: str = "gauss",
    *,
    position_bounds: tuple[Sequence[float], Sequence[float]] | None = None,
    sigma_floor: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Build the dense DCLS kernel ``[O, I/g, *span]`` from taps, without a ``prod(span)``-per-tap tensor.

    ``K[o,i,x] = sum_k w[o,i,k] * phi(x - c - p[:,o,i,k]) / Z[o,i,k]`` with ``c = span // 2``. For ``'gauss'``,
    ``phi`` is a Gaussian of standard deviation ``sigma`` and ``Z`` its sum over the span plus ``1e-7``; for
    ``'bilinear'``, ``phi`` is the floor-form bilinear interpolation (``Z = 1``), which keeps a non-zero
    position gradient at integer positions.

    Args:
        weight: Tap weights ``[O, I/g, kc]``.
        positions: Kernel-centred positions ``[ndim, O, I/g, kc]`` (0 = centre of the span).
        sigma: Gaussian standard deviations broadcastable to ``positions``; ``None`` for bilinear.
        span: Dense kernel size per spatial axis.
        interpolation: ``'gauss'`` or ``'bilinear'``.
        position_bounds: Optional ``(lows, highs)`` per axis: positions are clamped into them in value while
            their gradient passes straight through (no dead zone at the border). Done chunk by chunk, so it
            costs no position-sized temporary (unlike clamping before the call).
        sigma_floor: Optional: use ``max(|sigma|, sigma_floor)`` as the std (gradient of ``abs`` and of the
            floor applied), again without a sigma-sized temporary.
        backend: ``'triton'``, ``'c'``, ``'numba'``, ``'torch'`` or ``'auto'``; None: ``$DCLSZOO_BACKEND``, else
            automatic (:mod:`dclszoo.kernels.backend`).

    Returns:
        Dense kernel ``[O, I/g, *span]`` in ``weight``'s dtype.
    """
    span = tuple(int(x) for x in span)
    _check_op_args(weight, positions, sigma, span, interpolation)
    if position_bounds is not None:
        if len(position_bounds) != 2 or any(len(b) != len(span) for b in position_bounds):
            raise ValueError(
                f"position_bounds={position_bounds!r}: expected (lows, highs), each with {len(span)} floats."
            )
        position_bounds = tuple(tuple(float(v) for v in b) for b in position_bounds)
    if sigma_floor is not None and not (math.isfinite(sigma_floor) and sigma_floor > 0):
        raise ValueError(f"sigma_floor={sigma_floor!r}: expected a positive finite float or None.")
    if interpolation == "gauss":
        if sigma is None:
            raise ValueError("sigma=None: the 'gauss' interpolation needs a standard deviation.")
        if not isinstance(sigma, torch.Tensor):
            sigma = torch.tensor(float(sigma), device=positions.device, dtype=positions.dtype)
    else:
        sigma = positions.new_zeros(())
    return _DclsKernel.apply(weight, positions, sigma, span, interpolation, position_bounds, sigma_floor, backend)


def dcls_conv(
    input: torch.Tensor,
    weight: torch.Tensor,
    positions: torch.Tensor,
    sigma: torch.Tensor | float | None,
    span: Sequence[int],
    bias: torch.Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    interpolation: str = "gauss",
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """DCLS convolution: :func:`dcls_kernel` followed by :func:`conv_with_kernel`.

    ``backend`` (or ``$DCLSZOO_BACKEND``) applies to both steps where they have it (:mod:`dclszoo.kernels.backend`).
    """
    kernel = dcls_kernel(weight, positions, sigma, span, interpolation, backend=backend)
    return conv_with_kernel(input, kernel, bias, stride, padding, dilation, groups, backend=backend)


def _axes(value, ndim: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value),) * ndim


def conv_with_kernel(
    input: torch.Tensor,
    kernel: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """The convolution step of a DCLS layer (zero padding): the ``dwconv`` op's Triton kernels for depthwise,
    stride-1, 1-D/2-D convolutions on CUDA (:mod:`dclszoo.kernels.dwconv`), else ``F.conv{1,2,3}d`` (cuDNN on GPUs)
    with the kernel cast to the input's dtype. Under ``torch.autocast`` the input is cast as autocast casts a
    convolution's input.
    """
    ndim = kernel.dim() - 2
    if ndim <= 2 and kernel.shape[1] == 1 and groups == kernel.shape[0] and input.dim() >= ndim + 1:
        batched = input.dim() == ndim + 2
        x = input if batched else input.unsqueeze(0)
        if torch.is_autocast_enabled(x.device.type) and x.is_floating_point():
            x = x.to(torch.get_autocast_dtype(x.device.type))
        stride_, dilation_ = _axes(stride, ndim), _axes(dilation, ndim)
        choice = _dwconv.select_backend(x, kernel.shape, groups, stride_, dilation_, "zeros",
                                        _backend.for_op("dwconv", backend))
        if choice == "triton":
            y = _dwconv.triton_depthwise_conv(x, kernel, bias, _dwconv.resolve_padding(padding, kernel.shape[2:]))
            return y if batched else y.squeeze(0)
    conv = (F.conv1d, F.conv2d, F.conv3d)[ndim - 1]
    return conv(input, kernel.to(input.dtype), None if bias is None else bias.to(input.dtype), stride, padding,
                dilation, groups)


def empty_cache() -> None:
    """Release the reusable CPU buffers of the fused construction kernels (as ``torch.cuda.empty_cache`` does for
    CUDA's caching allocator).

    On CPU the numba kernels take their large outputs (the dense kernel, the parameter gradients) from a pool
    that hands a storage out again only once nothing references it; it keeps, between steps, what one step
    needed at once. Buffers still in use are freed when their users let go. ``DCLSZOO_REUSE_BUFFERS=0`` disables
    the pool.
    """
    _buffers.empty_cache()
