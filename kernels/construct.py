"""Fused kernels of the DCLS kernel construction (forward and backward of ``dclszoo.functional.dcls_kernel``).

``K[o, i, x] = sum_k w[o,i,k] * prod_d phi_d(x_d - c_d - p[d,o,i,k]) / Z[o,i,k]``, for 1-D and 2-D spans,
Gaussian and bilinear interpolation, with the op's fused straight-through position clamp and ``|sigma|`` floor.
Each block of 16 (out, in) rows is built entirely in small per-thread arrays
(:mod:`dclszoo.kernels._construct_numba`): the only memory used beyond the inputs is the output kernel in the
forward and the parameter gradients in the backward.

Backends of the construction:

- ``"triton"``: GPU kernels (:mod:`dclszoo.kernels._construct_triton`), one launch per direction; 1-D/2-D spans,
  both interpolations, any floating dtype (computed in float32), any sigma shape; chosen automatically for CUDA
  tensors when triton is installed.
- ``"c"``: C kernels (:mod:`dclszoo.kernels._construct_c`, AVX-512 or AVX2 builds compiled at install time);
  Gaussian interpolation, 1-D/2-D spans, float32 CPU tensors with weight, positions and sigma of their full
  shapes; chosen automatically where the AVX-512 build runs (rows split over the threads of torch's OpenMP
  runtime), and where only the AVX2 one does, when numba is not installed.
- ``"numba"``: the numba kernels (:mod:`dclszoo.kernels._construct_numba`); 1-D/2-D spans, float32 CPU tensors,
  both interpolations, any sigma shape; chosen automatically for the rest when numba is installed
  (``pip install dclszoo[snn]`` or ``numba``).
- ``"torch"``: the chunked separable implementation in :mod:`dclszoo.functional` (any device, dtype and
  dimension: the GPU path, the fallback and the twin).

The choice is made by the project's one resolver (:mod:`dclszoo.kernels.backend`, ``DCLSZOO_BACKEND``): an
explicitly requested backend that cannot run raises instead of falling back.

Eager calls take the kernel (forward) and the parameter gradients (backward) from a pool of reusable storages
(:mod:`dclszoo.kernels._buffers`; ``DCLSZOO_REUSE_BUFFERS=0`` turns it off, ``dclszoo.empty_cache()`` frees it).
"""

from __future__ import annotations

import functools
import importlib.util
import math

import numpy as np
import torch

from . import _buffers
from . import backend as _backend
from . import _construct_c
from ._threads import follow_torch as _follow_torch

__all__ = [
    "BACKENDS", "ENV_BACKEND", "c_available", "numba_available", "select_backend", "construct_forward",
    "construct_backward",
]

BACKENDS = _backend.OPS["construct"]
ENV_BACKEND = _backend.ENV
_GAUSS_TAIL = 40.0  # float32: profile values below exp(-40) of the peak are zero (as in the torch path; the C
# kernels keep them where their recurrence runs, a change below 4e-18 of the peak: see _construct_c.h)
_CHUNKS_PER_THREAD = 4


@functools.lru_cache(maxsize=1)
def _kernels():
    """Import (and thereby define) the numba kernels; None when numba is not installed."""
    try:
        from . import _construct_numba
    except ImportError:
        return None
    return _construct_numba


@functools.lru_cache(maxsize=1)
def _triton():
    """The Triton kernels (imported, hence triton imported and the kernels defined, at their first use)."""
    from . import _construct_triton

    return _construct_triton


_NUMBA_INSTALLED = importlib.util.find_spec("numba") is not None  # found without importing it


def numba_available() -> bool:
    """Whether the numba backend can be used (numba installed; it is imported at the first kernel call)."""
    return _NUMBA_INSTALLED


def _numba_fits(weight, positions, sigma, span) -> str | None:
    """Why the numba kernels cannot build this kernel (None if they can)."""
    if len(span) > 2:
        return f"span={tuple(span)} has {len(span)} axes (the numba kernels do 1-D and 2-D)"
    for name, t in (("weight", weight), ("positions", positions), ("sigma", sigma)):
        if t is None:
            continue
        if t.device.type != "cpu" or t.dtype != torch.float32:
            return f"{name} is {t.dtype} on {t.device} (the numba kernels need float32 CPU tensors)"
    return None


def _c_fits(weight, positions, sigma, span) -> str | None:
    """Why the C kernels cannot build this kernel (None if they can)."""
    return _numba_fits(weight, positions, sigma, span) or _c_layout_fits(weight, positions, sigma)


def _c_layout_fits(weight, positions, sigma) -> str | None:
    """What the C kernels need beyond the numba kernels' conditions (None if met)."""
    if sigma is None:
        return "the interpolation is bilinear (the C kernels do Gaussians)"
    if sigma.shape != positions.shape:
        return (f"sigma has shape {tuple(sigma.shape)} (the C kernels need sigma of the positions' full shape "
                f"{tuple(positions.shape)})")
    for name, t in (("weight", weight), ("positions", positions), ("sigma", sigma)):
        if not t.is_contiguous():
            return f"{name} has strides {t.stride()} (the C kernels need contiguous tensors)"
    return None


def c_available() -> bool:
    """Whether the C kernels are built and run on this CPU (they load no numba; see :mod:`._construct_c`)."""
    return _construct_c.available()


def _triton_fits(weight, positions, sigma, span, auto: bool) -> str | None:
    """Why the Triton kernels cannot build this kernel (None if they can)."""
    if len(span) > 2:
        return f"span={tuple(span)} has {len(span)} axes (the Triton kernels do 1-D and 2-D)"
    return _backend.triton_runs_on(weight, positions, sigma, auto=auto)


def select_backend(weight, positions, sigma, span, backend: str | None = None) -> str:
    """The construction backend for these tensors: ``backend``, else ``$DCLSZOO_BACKEND``, else automatic
    (rules in :mod:`dclszoo.kernels.backend`).

    Raises:
        ValueError: If the requested backend is unknown, or cannot run these tensors.
        ImportError: If the requested backend is not installed (built) here.
    """
    def triton(auto):
        return _triton_fits(weight, positions, sigma, span, auto)

    def c(auto):
        if not c_available():
            return ("not built for this CPU (the C kernels need an x86-64 CPU with AVX2 and are compiled at install "
                    "time when a C compiler is found: reinstall with one, e.g. pip install -e . in the source tree)")
        why = _c_fits(weight, positions, sigma, span)
        if why is None and auto and _construct_c.lanes() != 16 and numba(True) is None:
            # the AVX2 build is no faster than numba's AVX2 code (row 4 of bench/, fwd+bwd: 8.8-9.0 vs 8.9-9.8 ms,
            # Zen 3 code on a Zen 4 host): there the C kernels are only the choice without numba
            return "numba's kernels are as fast as the AVX2 build"
        return why

    def numba(auto):
        if not numba_available():
            return "not installed: pip install 'dclszoo[snn]' (or numba)"
        return _numba_fits(weight, positions, sigma, span)

    return _backend.resolve("construct", (("triton", triton), ("c", c), ("numba", numba)), backend)


def _rows(t: torch.Tensor, full: tuple[int, ...], rows: tuple[int, int, int]) -> tuple[np.ndarray, tuple[int, ...]]:
    """``t`` broadcast to ``full`` and seen as ``rows = [D, R, K]`` ((out, in) merged): its flat storage (a numpy
    view) and element strides. A copy is made only when the strides cannot be merged (e.g. a sigma shared over
    input channels but not output channels)."""
    if t.shape == full and t.is_contiguous():  # the common case: parameters of their full shape
        _, r, k = rows
        return t.detach().view(-1).numpy(), (r * k, k, 1)
    t = t.detach().expand(full)
    try:
        v = t.view(rows)
    except RuntimeError:
        v = t.reshape(rows)
    extent = 1 + sum((size - 1) * stride for size, stride in zip(v.shape, v.stride()))
    flat = torch.as_strided(v, (extent,), (1,), v.storage_offset())
    return flat.numpy(), tuple(v.stride())


class _Args:
    """numpy views of the inputs and the scalar settings shared by the numba kernels' forward and backward."""

    def __init__(self, weight, positions, sigma, span, interpolation, bounds, sigma_floor):
        self.ndim, (o, i, k) = len(span), weight.shape
        self.shape4, self.rows, self.k = (self.ndim, o, i, k), o * i, k
        self.s0, self.s1 = span[0], (span[1] if self.ndim == 2 else 1)
        self.gauss = interpolation == "gauss"
        three = (self.ndim, self.rows, k)
        self.w, sw = _rows(weight, (o, i, k), (1, self.rows, k))
        self.p, sp = _rows(positions, self.shape4, three)
        # sigma broadcast with zero strides (no copy where strides allow); positions stand in for bilinear
        self.s, ss = _rows(sigma, self.shape4, three) if self.gauss else (self.p, sp)
        self.strides = np.array([sw, sp, ss], dtype=np.int64)
        lo, hi = bounds if bounds is not None else ((0.0,) * self.ndim, (0.0,) * self.ndim)
        self.lo, self.hi = np.asarray(lo, dtype=np.float32), np.asarray(hi, dtype=np.float32)
        self.bounded = bounds is not None
        self.floor = np.float32(sigma_floor if sigma_floor is not None else 0.0)
        self.tail = np.float32(_GAUSS_TAIL)
        self.thr = np.float32(math.exp(-_GAUSS_TAIL))  # the profile value of the tail cut (peak 1)
        blocks = -(-self.rows // _kernels().LANES)  # thread chunks of the numba kernels' 16-row blocks
        self.chunks = max(1, min(blocks, _CHUNKS_PER_THREAD * _follow_torch()))

    def taps(self):
        return (self.w, self.p, self.s, self.strides, self.rows, self.k)

    def common(self):
        return (self.ndim, self.gauss, self.lo, self.hi, self.bounded, self.floor, self.tail, self.thr, self.chunks)


def _bounds_list(bounds) -> list[float] | None:
    return None if bounds is None else [float(v) for b in bounds for v in b]


def _bounds_pair(flat: list[float] | None, ndim: int):
    return None if flat is None else (tuple(flat[:ndim]), tuple(flat[ndim:]))


def _args(weight, positions, sigma, span, gauss, bounds, sigma_floor) -> _Args:
    """:class:`_Args` from the custom ops' flat argument forms (``gauss`` flag, ``bounds`` list)."""
    return _Args(weight, positions, sigma, span, "gauss" if gauss else "bilinear", _bounds_pair(bounds, len(span)),
                 sigma_floor)


def _fresh(numel: int) -> torch.Tensor:
    return torch.empty(numel, dtype=torch.float32)


def _forward(weight, positions, sigma, span, gauss, bounds, sigma_floor, backend, alloc) -> torch.Tensor:
    """The forward kernel call; ``alloc(numel)`` gives the flat float32 output (fresh or pooled)."""
    span = tuple(span)
    if backend == "triton":
        return _triton().forward(weight, positions, sigma, span, gauss, _bounds_pair(bounds, len(span)), sigma_floor)
    rows, k = weight.shape[0] * weight.shape[1], weight.shape[2]
    out = alloc(rows * math.prod(span))
    if not (rows and k):
        out.zero_()
    elif backend == "c":  # straight from the tensors (no numpy views: the per-call Python cost matters here)
        _construct_c.forward(weight, positions, sigma, span, bounds, sigma_floor, _GAUSS_TAIL, out,
                             torch.get_num_threads())
    else:
        a = _args(weight, positions, sigma, span, gauss, bounds, sigma_floor)
        _kernels().construct_forward(*a.taps(), *a.common(), a.s0, a.s1, out.numpy())
    return out.view(tuple(weight.shape[:2]) + span)


def _forward_impl(
    weight: torch.Tensor, positions: torch.Tensor, sigma: torch.Tensor | None, span: list[int], gauss: bool,
    bounds: list[float] | None, sigma_floor: float | None, backend: str = "numba",
) -> torch.Tensor:
    return _forward(weight, positions, sigma, span, gauss, bounds, sigma_floor, backend, _fresh)


# The kernel calls are also custom ops, which torch.compile treats as opaque (it cannot trace numba or C); eager
# calls skip the dispatcher and take their large outputs from the buffer pool (dclszoo.kernels._buffers), the
# custom ops allocate fresh ones (compiled graphs plan their own buffers).
_forward_op = torch.library.custom_op("dclszoo::construct_forward", mutates_args=())(_forward_impl)


@_forward_op.register_fake
def _forward_fake(weight, positions, sigma, span, gauss, bounds, sigma_floor, backend="numba"):
    return weight.new_empty(tuple(weight.shape[:2]) + tuple(span), dtype=torch.float32)


def _backward(grad, weight, positions, sigma, span, gauss, bounds, sigma_floor, need_w, need_p, need_s, backend,
              alloc):
    """The backward kernel call; ``alloc(numel)`` gives the flat float32 parameter gradients (fresh or pooled).
    Every gradient is a tensor (empty where not needed), as the custom op returns them."""
    span = tuple(span)
    need_s = need_s and gauss
    f32 = dict(dtype=torch.float32)
    empty = torch.empty(0, device=weight.device, **f32)
    if backend == "triton":
        gw, gp, gs = _triton().backward(grad, weight, positions, sigma, span, gauss, _bounds_pair(bounds, len(span)),
                                        sigma_floor, need_w, need_p, need_s)
        return (empty if gw is None else gw, empty.clone() if gp is None else gp,
                empty.clone() if gs is None else gs)
    if backend == "c":
        gw, gp, gs = _backward_c(grad, weight, positions, sigma, span, bounds, sigma_floor, need_w, need_p, need_s,
                                 alloc)
        return (empty if gw is None else gw, empty.clone() if gp is None else gp,
                empty.clone() if gs is None else gs)
    a = _args(weight, positions, sigma, span, gauss, bounds, sigma_floor)
    o, i, k = weight.shape
    rows, ndim, shape4 = o * i, len(span), (len(span), o, i, k)
    dummy = torch.zeros(1, **f32)
    gw = alloc(rows * k) if need_w else dummy
    gp = alloc(ndim * rows * k) if need_p else dummy
    s4 = (1,) * (4 - sigma.dim()) + tuple(sigma.shape) if need_s else None
    # per-entry sigma gradients or, for a sigma shared over all (out, in) rows, per-chunk sums
    gs_full = need_s and not (s4[1] == 1 and s4[2] == 1)
    gs = alloc(ndim * rows * k) if gs_full else dummy
    gs_part = torch.zeros(a.chunks * ndim * k, **f32) if need_s and not gs_full else dummy
    g = grad.detach().contiguous().view(-1)  # a copy only for non-contiguous gradients (e.g. of kernel.sum())
    if rows and k and (need_w or need_p or need_s):
        _kernels().construct_backward(
            *a.taps(), g.numpy(), *a.common(), a.s0, a.s1, need_w, need_p, need_s, gs_full,
            gw.numpy(), gp.numpy(), gs.numpy(), gs_part.numpy(),
        )
    else:
        for t in (gw, gp, gs):
            t.zero_()
    grad_w = gw.view(weight.shape) if need_w else empty
    grad_p = gp.view(shape4) if need_p else empty.clone()
    grad_s = empty.clone()
    if need_s:
        full = gs.view(shape4) if gs_full else gs_part.view(a.chunks, ndim, k).sum(0).view(ndim, 1, 1, k)
        grad_s = full.sum_to_size(s4).reshape(sigma.shape)
    return grad_w, grad_p, grad_s


def _backward_c(grad, weight, positions, sigma, span, bounds, sigma_floor, need_w, need_p, need_s, alloc):
    """The C backward: gradients in ``alloc`` buffers, None where not needed, by the shortest path (eager, this
    Python runs once per training step, with caches swept by the convolution before it: in row 4 of
    bench/dcls_layer.py each line here costs about ten times what it does warm). The C kernels take sigma of the
    positions' full shape only (select_backend), so no reduction to a broadcast shape is needed."""
    o, i, k = weight.shape
    rk, ndim = o * i * k, len(span)
    gw = alloc(rk) if need_w else None
    gp = alloc(ndim * rk) if need_p else None
    gs = alloc(ndim * rk) if need_s else None
    if rk and (need_w or need_p or need_s):
        g = grad if grad.is_contiguous() else grad.contiguous()  # e.g. the expanded gradient of kernel.sum()
        _construct_c.backward(g, weight, positions, sigma, span, bounds, sigma_floor, _GAUSS_TAIL, gw, gp, gs,
                              torch.get_num_threads())
    else:  # no rows or no taps: zero gradients
        for t in (gw, gp, gs):
            if t is not None:
                t.zero_()
    return (None if gw is None else gw.view(weight.shape), None if gp is None else gp.view(positions.shape),
            None if gs is None else gs.view(sigma.shape))


def _backward_impl(
    grad: torch.Tensor, weight: torch.Tensor, positions: torch.Tensor, sigma: torch.Tensor | None, span: list[int],
    gauss: bool, bounds: list[float] | None, sigma_floor: float | None, need_w: bool, need_p: bool, need_s: bool,
    backend: str = "numba",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(grad, weight, positions, sigma, span, gauss, bounds, sigma_floor, need_w, need_p, need_s, backend,
                     _fresh)


_backward_op = torch.library.custom_op("dclszoo::construct_backward", mutates_args=())(_backward_impl)


@_backward_op.register_fake
def _backward_fake(grad, weight, positions, sigma, span, gauss, bounds, sigma_floor, need_w, need_p, need_s,
                   backend="numba"):
    def like(t, need):
        return t.new_empty(t.shape if need else (0,), dtype=torch.float32)

    return like(weight, need_w), like(positions, need_p), like(sigma if sigma is not None else weight, need_s and gauss)


def construct_forward(
    weight: torch.Tensor,
    positions: torch.Tensor,
    sigma: torch.Tensor | None,
    span: tuple[int, ...],
    interpolation: str,
    bounds: tuple[tuple[float, ...], tuple[float, ...]] | None,
    sigma_floor: float | None,
    backend: str = "numba",
) -> torch.Tensor:
    """Dense kernel ``[O, I/g, *span]`` (float32) by the ``backend`` (``'c'`` or ``'numba'``) kernels; arguments
    as in ``dcls_kernel``.

    Not differentiable by itself: ``dclszoo.functional.dcls_kernel`` pairs it with :func:`construct_backward`.
    """
    gauss = interpolation == "gauss"
    args = (weight.detach(), positions.detach(), sigma.detach() if gauss else None)
    if _backend.plain_tensors(*args):
        return _forward(*args, span, gauss, _bounds_list(bounds), sigma_floor, backend, _buffers.empty)
    return _forward_op(*args, list(span), gauss, _bounds_list(bounds), sigma_floor, backend)


def construct_backward(
    grad: torch.Tensor,
    weight: torch.Tensor,
    positions: torch.Tensor,
    sigma: torch.Tensor | None,
    span: tuple[int, ...],
    interpolation: str,
    bounds: tuple[tuple[float, ...], tuple[float, ...]] | None,
    sigma_floor: float | None,
    needs: tuple[bool, bool, bool],
    backend: str = "numba",
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients ``(weight, positions, sigma)`` (None where not needed) for the upstream ``grad [O, I/g, *span]``.

    The position gradient passes straight through ``bounds``; the sigma gradient goes through
    ``max(|sigma|, sigma_floor)`` and is summed to ``sigma``'s (broadcast) shape.
    """
    gauss = interpolation == "gauss"
    need_w, need_p, need_s = (bool(x) for x in needs)
    need_s = need_s and gauss
    args = (grad, weight.detach(), positions.detach(), sigma.detach() if gauss else None)
    rest = (gauss, _bounds_list(bounds), sigma_floor, need_w, need_p, need_s)
    if _backend.plain_tensors(*args):
        if backend == "c":
            return _backward_c(*args, span, *rest[1:], _buffers.empty)
        gw, gp, gs = _backward(*args, span, *rest, backend, _buffers.empty)
    else:
        gw, gp, gs = _backward_op(*args, list(span), *rest, backend)
    return (gw if need_w else None), (gp if need_p else None), (gs if need_s else None)
