"""Reusable output buffers of the CPU construction kernels (private; used by :mod:`dclszoo.kernels.construct`).

A kernel built in a fresh multi-MiB CPU tensor costs more than its arithmetic: glibc maps such a buffer anew and
the OS faults and zeroes it page by page on the first write (12.8 MiB: 3,136 faults, ~3 ms on the benchmark
machine, as long as a third of the construction itself). The construction's large outputs (the dense kernel in
the forward, the parameter gradients in the backward) are therefore taken from this pool, a small caching
allocator in the spirit of torch's CUDA one.

A buffer is handed out again only when nothing else references its storage any more (the storage's use count
is back to the pool's own reference): a kernel still saved by an autograd graph, a gradient still held as a
parameter's ``.grad`` or a tensor kept by the user is never written over. The pool keeps a storage, not a tensor,
so autograd can still adopt a gradient as ``.grad`` without a copy. Retained memory: what the largest step
needed at once, until :func:`empty_cache`. Only the eager CPU path uses it (not under ``torch.compile``, which
plans its own buffers). ``DCLSZOO_REUSE_BUFFERS=0`` turns it off.
"""

from __future__ import annotations

import os
import threading

import torch

__all__ = ["MIN_BYTES", "ENV_REUSE", "reuse_enabled", "empty", "empty_cache", "cached_bytes"]

MIN_BYTES = 128 * 1024  # smaller buffers come from malloc's heap anyway (glibc's default mmap threshold)
ENV_REUSE = "DCLSZOO_REUSE_BUFFERS"

_use_count = getattr(torch._C, "_storage_Use_Count", None)  # private torch API: without it, no reuse
_lock = threading.Lock()
_pool: dict[int, list[torch.UntypedStorage]] = {}  # nbytes -> storages


def reuse_enabled() -> bool:
    """Whether large outputs are taken from the pool (``$DCLSZOO_REUSE_BUFFERS`` is not ``0``)."""
    return _use_count is not None and os.environ.get(ENV_REUSE, "1").strip() != "0"


def empty(numel: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised flat CPU tensor of ``numel`` elements, on a pooled storage no one else references."""
    nbytes = numel * dtype.itemsize
    if nbytes < MIN_BYTES or not reuse_enabled():
        return torch.empty(numel, dtype=dtype)
    with _lock:  # the check and the hand-out must not interleave with another thread's
        storages = _pool.setdefault(nbytes, [])
        for storage in storages:
            if _use_count(storage._cdata) == 1:  # only the pool's own reference is left
                break
        else:
            storage = torch.UntypedStorage(nbytes)
            storages.append(storage)
        return torch.empty(0, dtype=dtype).set_(storage, 0, (numel,))


def empty_cache() -> None:
    """Drop the pool's references: buffers no one else holds are freed now, the others when their users let go."""
    with _lock:
        _pool.clear()


def cached_bytes() -> int:
    """Bytes of storage the pool references (in use or free)."""
    with _lock:
        return sum(s.nbytes() for storages in _pool.values() for s in storages)
