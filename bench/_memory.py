"""CPU peak-allocation tracker for the benchmarks (torch has no allocator statistics on CPU).

:class:`PeakMemory` is a ``TorchDispatchMode``: after every aten op (forward, autograd backward and custom
``autograd.Function`` backward alike) it records each output tensor's storage, keyed by the storage's data
pointer and held through a C++-level weak reference (``StorageWeakRef``), and drops storages whose last
reference is gone. Outputs sharing a storage with an input (views, in-place ops) are not new allocations. Storages only appear as op outputs and the live set only grows at those points, so the
maximum of the live total taken there is the peak. Storages allocated before the mode was entered are not
counted: the figure is the *extra* memory of the region. What it cannot see: scratch buffers a single aten
kernel allocates and frees internally (none of the ops used by the kernel constructions are of that kind
except BLAS workspaces, which live outside torch's allocator anyway), and storages allocated before the region
that a buffer pool hands out again: :func:`peak_extra_bytes` therefore turns dclszoo's pool off
(``DCLSZOO_REUSE_BUFFERS=0``) while it measures, so that every call allocates what it needs.

:func:`self_check` runs the tracker on allocation patterns whose peak is known by construction and raises if
it is wrong; the benchmark scripts call it before measuring anything.
"""

from __future__ import annotations

import os
from typing import Callable
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.multiprocessing.reductions import StorageWeakRef

from dclszoo.kernels._buffers import ENV_REUSE

__all__ = ["PeakMemory", "peak_extra_bytes", "self_check"]


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr() if t.device.type != "meta" else -1


class PeakMemory(TorchDispatchMode):
    """Track live tensor storages created inside the ``with`` block; ``peak`` / ``current`` are in bytes."""

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def _sweep(self) -> None:
        dead = [key for key, (ref, _) in self._live.items() if ref.expired()]
        for key in dead:
            self.current -= self._live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._sweep()
        # Views and in-place ops return storages of their inputs (possibly allocated before the region).
        inputs = {_key(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in self._live or key in inputs:
                continue
            self._live[key] = (StorageWeakRef(storage), nbytes)
            self.current += nbytes
        self.peak = max(self.peak, self.current)
        return out


def peak_extra_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes of storages allocated while ``fn()`` runs (what it returns is dropped afterwards), with
    dclszoo's buffer pool off."""
    with mock.patch.dict(os.environ, {ENV_REUSE: "0"}), PeakMemory() as mem:
        result = fn()
        del result
    return mem.peak


def self_check() -> None:
    """Verify the tracker on patterns with a known peak; raise ``AssertionError`` if it disagrees."""
    mb = 1 << 20

    def pattern():
        a = torch.empty(mb // 4)  # 1 MiB
        b = torch.empty(mb // 2)  # 2 MiB -> 3 MiB live
        del a
        c = torch.empty(mb)  # 4 MiB -> 6 MiB live (peak)
        v = c[: mb // 2].view(2, -1)  # a view: no new storage
        del b, c, v
        d = torch.empty(mb // 4 * 5)  # 5 MiB alone
        return d

    got = peak_extra_bytes(pattern)
    assert got == 6 * mb, f"PeakMemory self-check (plain allocations): {got} != {6 * mb}"

    # Autograd: y = x @ w kept, then y.backward(g) with g allocated outside. Extra storages: y (n*n),
    # then grad_x and grad_w (n*n each) while y is still alive: 3 * n*n floats at the peak.
    n = 256
    x = torch.randn(n, n, requires_grad=True)
    w = torch.randn(n, n, requires_grad=True)
    g = torch.randn(n, n)

    def fwd_bwd():
        y = x @ w
        y.backward(g)
        return y

    got = peak_extra_bytes(fwd_bwd)
    want = 3 * n * n * 4
    assert got == want, f"PeakMemory self-check (autograd matmul): {got} != {want}"

    # Custom autograd.Function backward: a temporary of 4 * numel inside backward must be seen.
    class Tmp(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t * 2

        @staticmethod
        def backward(ctx, grad):
            big = grad.repeat(4)  # 4x temporary
            return grad * 2 + big[: grad.numel()] * 0

    t = torch.randn(mb // 4, requires_grad=True)  # 1 MiB
    gt = torch.randn(mb // 4)
    x.grad = w.grad = None

    def custom():
        y = Tmp.apply(t)  # 1 MiB output
        y.backward(gt)  # + 4 MiB temporary, + grad*2 (1), big*0 (1), sum -> t.grad (1)
        return y

    got = peak_extra_bytes(custom)
    assert got == 8 * mb, f"PeakMemory self-check (custom backward): {got} != {8 * mb}"
