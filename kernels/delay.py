"""Sparse synaptic delays: ``y[t, b, o] = sum_{i, j} coeff[o, i, j] * x[t - offsets[o, i, j], b, i]``.

Each synapse ``(o, i)`` has ``J`` taps, each an integer delay (``offsets``) and a weight (``coeff``); a
Gaussian or bilinear delay of a few taps, or an integer delay (``J = 1``), is a sparse kernel whose cost is
that of a Linear layer times ``J``, whatever ``max_delay`` is. Three backends compute it:

- ``"triton"``: GPU kernels (:mod:`dclszoo.kernels._delay_triton`: each input step loaded once per run of
  consecutive taps, see ``band``), any floating dtype (accumulated in float32, float64 for float64); chosen
  automatically for CUDA tensors when triton is installed
  (``pip install dclszoo[triton]``). CPU tensors only on explicit request and with ``TRITON_INTERPRET=1``
  (Triton's interpreter: slow, for tests).
- ``"numba"``: tiled CPU kernels (:mod:`dclszoo.kernels._delay_numba`), float32 CPU tensors only; chosen
  automatically when numba is installed (``pip install dclszoo[snn]``).
- ``"torch"``: :func:`dclszoo.reference.sparse_delay_reference`, one dense matmul per distinct offset; any
  device and dtype (the fallback and the test oracle).

The choice is made by the project's one resolver (:mod:`dclszoo.kernels.backend`): the ``backend`` argument,
else ``DCLSZOO_BACKEND`` (e.g. ``DCLSZOO_BACKEND=delay=torch``), else automatic. Explicitly requesting a
backend that cannot run raises instead of falling back.
"""

from __future__ import annotations

import functools

import torch

from dclszoo.kernels import backend as _backend
from dclszoo.kernels._threads import follow_torch as _follow_torch
from dclszoo.reference import check_delay_args, sparse_delay_reference

__all__ = ["sparse_delay", "sparse_delay_reference", "numba_available", "BACKENDS", "ENV_BACKEND"]

BACKENDS = _backend.OPS["delay"]
ENV_BACKEND = _backend.ENV

# Tile sizes of the numba kernels (rows per block, elements of the T*B row per chunk), picked by measurement
# on a 2-core AMD EPYC (32 KiB L1d, 1 MiB L2 per core) with bench/delays.py.
_FWD_BLOCKS = (8, 8)  # (output rows, input rows) per tile
_BWD_BLOCKS = (8, 8)  # (input rows, output rows) per tile


@functools.lru_cache(maxsize=1)
def _numba_kernels():
    """Import (and thereby define) the numba kernels; None when numba is not installed."""
    try:
        from . import _delay_numba
    except ImportError:
        return None
    return _delay_numba


@functools.lru_cache(maxsize=1)
def _triton_kernels():
    """Import (and thereby define) the Triton kernels; called only once the backend is known to run."""
    from . import _delay_triton

    return _delay_triton


def numba_available() -> bool:
    """Whether the numba backend can be used (numba importable)."""
    return _numba_kernels() is not None


def _select_backend(x: torch.Tensor, backend: str | None) -> str:
    """The delay backend for ``x``: ``backend``, else ``$DCLSZOO_BACKEND``, else automatic
    (rules in :mod:`dclszoo.kernels.backend`)."""
    def triton(auto):
        return _backend.triton_runs_on(x, auto=auto)

    def numba(auto):
        if not numba_available():
            return "not installed: numba is not installed; pip install 'dclszoo[snn]' (or numba)"
        if x.device.type != "cpu" or x.dtype != torch.float32:
            return f"x is {x.dtype} on {x.device} (the numba kernels need float32 CPU tensors)"
        return None

    return _backend.resolve("delay", (("triton", triton), ("numba", numba)), backend)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``[T, B, C] -> [C, T*B]`` contiguous float32 rows (one per channel)."""
    steps, batch, ch = x.shape
    return x.permute(2, 0, 1).reshape(ch, steps * batch).contiguous()


class _SparseDelayNumba(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coeff, offsets):
        kern = _numba_kernels()
        _follow_torch()
        steps, batch, _ = x.shape
        n_out = coeff.shape[0]
        xt = _rows(x.detach())
        c = coeff.detach().contiguous()
        off = offsets.to(torch.int64).contiguous()
        yt = torch.zeros(n_out, steps * batch, dtype=torch.float32)
        if steps * batch and c.numel():
            kern.delay_forward(xt.numpy(), c.numpy(), off.numpy(), batch, *_FWD_BLOCKS, yt.numpy())
        ctx.save_for_backward(xt, c, off)
        ctx.shape = (steps, batch)
        return yt.view(n_out, steps, batch).permute(1, 2, 0).contiguous()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        kern = _numba_kernels()
        _follow_torch()
        xt, c, off = ctx.saved_tensors
        steps, batch = ctx.shape
        need_x, need_c = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
        if not (need_x or need_c):
            return None, None, None
        gyt = _rows(grad_y.to(torch.float32))
        gxt = torch.zeros_like(xt)
        gc = torch.zeros_like(c)
        if steps * batch and c.numel():
            kern.delay_backward(
                xt.numpy(), c.numpy(), off.numpy(), gyt.numpy(), batch, *_BWD_BLOCKS,
                need_x, need_c, gxt.numpy(), gc.numpy(),
            )
        grad_x = gxt.view(-1, steps, batch).permute(1, 2, 0).contiguous() if need_x else None
        return grad_x, (gc if need_c else None), None


def sparse_delay(
    x: torch.Tensor, coeff: torch.Tensor, offsets: torch.Tensor, *, backend: str | None = None,
    check_values: bool = True, band: int = 1,
) -> torch.Tensor:
    """Delayed sparse synapses: ``y[t, b, o] = sum_{i, j} coeff[o, i, j] * x[t - offsets[o, i, j], b, i]``.

    Terms with ``t - offsets < 0`` are zero (causal), so offsets ``>= T`` contribute nothing. Time and memory
    do not depend on the size of the offsets; time is that of ``J`` Linear layers.

    Args:
        x: Input, time-major ``[T, B, I]``.
        coeff: Tap weights ``[O, I, J]``, same dtype as ``x``.
        offsets: Integer delays in time steps ``[O, I, J]``, ``>= 0`` (not differentiable).
        check_values: Check that no offset is negative (and the runs of ``band`` below). On a GPU that reads the
            offsets back (one synchronisation per call); the delay modules pass False, their offsets being valid
            by construction.
        band: The taps of a synapse come in runs of ``band`` consecutive offsets, ``offsets[..., g * band + j] ==
            offsets[..., g * band] + j`` (a Gaussian delay's window). The Triton backend then loads each input
            step once for the whole run instead of once per tap; the result is the same as with ``band=1``.
        backend: ``"triton"``, ``"numba"``, ``"torch"`` or None/``"auto"`` (default: ``$DCLSZOO_BACKEND``,
            else triton for CUDA tensors, numba for float32 CPU tensors when installed, else torch).

    Returns:
        ``y [T, B, O]``, differentiable w.r.t. ``x`` and ``coeff``.

    Raises:
        ValueError, TypeError: On mismatched shapes, dtypes or devices, negative or non-integer offsets, a
            ``band`` that does not divide ``J`` or (checked values) runs that are not consecutive.
        ValueError: If the requested backend cannot take these tensors (e.g. ``"triton"`` on CPU tensors
            without ``TRITON_INTERPRET=1``); the message says why.
        ImportError: If ``backend="numba"`` or ``"triton"`` is requested and not installed.
    """
    check_delay_args(x, coeff, offsets, values=check_values, band=band)
    chosen = _select_backend(x, backend)
    if chosen == "torch":
        return sparse_delay_reference(x, coeff, offsets, check_values=False)  # checked above
    if chosen == "triton":
        return _triton_kernels().SparseDelayTriton.apply(x, coeff, offsets, band)
    return _SparseDelayNumba.apply(x, coeff, offsets)
