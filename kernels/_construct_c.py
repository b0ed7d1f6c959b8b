"""The C kernels of the DCLS kernel construction (private; used by :mod:`dclszoo.kernels.construct`).

``_construct_c.h`` is compiled at install time into two optional extension modules, ``_construct_avx512``
(16 lanes) and ``_construct_avx2`` (8 lanes, from ``_construct_avx512.c`` and ``_construct_avx2.c``); the best one
this CPU can run is loaded with :mod:`ctypes` (the extension modules export plain C functions). The kernels take
a range of row blocks; the rows are split over the team of torch's own OpenMP runtime (its ``GOMP_parallel``,
called from C), whose workers are still spinning from torch's last parallel region and start at once. A pool of
threads of our own would compete with them for the cores. Where that runtime cannot be identified the rows go to
numba's threads (``prange``, whose OpenMP pool binds to the same runtime), and without numba they run on the
calling thread.

What they cover: Gaussian interpolation, 1-D and 2-D spans, float32 CPU tensors with weight, positions and sigma
of their full shapes (the numba kernels take everything else).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import os

import numpy as np
import torch

__all__ = ["available", "lanes", "runnable_variants", "variant", "forward", "backward"]

# extension module -> CPU features it needs (names as in /proc/cpuinfo)
_VARIANTS = (
    ("_construct_avx512", ("avx512f", "avx512dq", "avx512bw", "avx512vl", "fma")),
    ("_construct_avx2", ("avx2", "fma")),
)
_CHUNKS_PER_THREAD = 8  # chunks taken from a shared counter: a late thread leaves a small tail
_VP, _L, _I, _F = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_float
_FLOAT32 = torch.float32


def _cpu_features() -> frozenset[str]:
    """Instruction-set flags of this CPU (empty where they cannot be read: then no variant is used)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    try:  # not Linux: llvmlite (installed with numba) knows the host
        import llvmlite.binding as llvm

        return frozenset(name for name, on in llvm.get_host_cpu_features().items() if on)
    except Exception:  # noqa: BLE001 - any failure means: no features known
        return frozenset()


def runnable_variants() -> list[str]:
    """The built variants this CPU can run, best first (``_construct_avx512``, ``_construct_avx2``)."""
    features, found = _cpu_features(), []
    for name, needs in _VARIANTS:
        if not set(needs) <= features:
            continue
        spec = importlib.util.find_spec(f"{__package__}.{name}")
        if spec is not None and spec.origin and os.path.exists(spec.origin):
            found.append(name)  # else not built (no compiler at install time, or not an x86-64 platform)
    return found


def _load(name: str | None = None):
    """``(ctypes library, lanes, name)`` of variant ``name`` (default: the best runnable one), or None."""
    names = runnable_variants()
    if name is None:
        if not names:
            return None
        name = names[0]
    elif name not in names:
        return None
    lib = ctypes.CDLL(importlib.util.find_spec(f"{__package__}.{name}").origin)
    lib.dclszoo_construct_forward.argtypes = [_VP] * 3 + [_L] + [_I] * 4 + [_VP] * 2 + [_I, _F, _F, _VP, _L, _L]
    lib.dclszoo_construct_forward.restype = _I
    lib.dclszoo_construct_backward.argtypes = ([_VP] * 4 + [_L] + [_I] * 4 + [_VP] * 2 + [_I, _F, _F] + [_VP] * 3
                                               + [_L, _L])
    lib.dclszoo_construct_backward.restype = _I
    lib.dclszoo_construct_omp.argtypes = ([_VP, ctypes.c_uint, _I, _I] + [_VP] * 4 + [_L] + [_I] * 4 + [_VP] * 2
                                          + [_I, _F, _F] + [_VP] * 3 + [_L])
    lib.dclszoo_construct_omp.restype = _I
    lib.dclszoo_lanes.restype = _I
    return lib, int(lib.dclszoo_lanes()), name


_LOADED = _load()  # at import: a dlopen of a small library (no numba); torch.compile then only reads a global


def _library():
    return _LOADED


@contextlib.contextmanager
def variant(name: str):
    """Use variant ``name`` (one of :func:`runnable_variants`) inside the block: how the tests check every variant
    this CPU runs, not only the best one."""
    global _LOADED
    loaded = _load(name)
    if loaded is None:
        raise ValueError(f"C kernel variant {name!r} is not built or not runnable here; runnable: "
                         f"{runnable_variants()}.")
    saved, _LOADED = _LOADED, loaded
    try:
        yield
    finally:
        _LOADED = saved


def available() -> bool:
    """Whether a C kernel variant is built and runs on this CPU."""
    return _LOADED is not None


def lanes() -> int:
    """Rows per block of the loaded variant (16 or 8)."""
    return _library()[1]


_OPENMP_NAMES = ("libgomp", "libomp", "libiomp")


@functools.lru_cache(maxsize=None)
def _torch_openmp() -> int | None:
    """Address of ``GOMP_parallel`` in the OpenMP runtime that runs torch's CPU ops, or None where it cannot be
    told apart (not Linux, torch not on OpenMP, several candidate runtimes loaded, none under torch's folder)."""
    if "OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        with open("/proc/self/maps") as f:
            paths = {parts[5].strip() for parts in (line.split(None, 5) for line in f) if len(parts) == 6}
    except OSError:
        return None
    runtimes = sorted(p for p in paths if os.path.basename(p).startswith(_OPENMP_NAMES))
    torch_dir = os.path.dirname(os.path.realpath(torch.__file__)) + os.sep
    own = [p for p in runtimes if os.path.realpath(p).startswith(torch_dir)]
    candidates = own or runtimes  # a wheel's bundled runtime, else the one torch was linked with (if alone)
    if len(candidates) != 1:
        return None
    try:
        return ctypes.cast(ctypes.CDLL(candidates[0]).GOMP_parallel, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None


def _parallel():
    """numba ``prange`` drivers of the loaded variant's two kernels, or None without numba."""
    return _drivers(_library()[2])


@functools.lru_cache(maxsize=None)
def _drivers(name: str):
    """The ``prange`` drivers of variant ``name`` (compiled at first use, a second or two: they hold the C functions'
    addresses, so they cannot be cached on disk). Pointers are passed as integers."""
    try:
        from numba import njit, prange
    except ImportError:
        return None
    lib = _load(name)[0]
    c_forward, c_backward = lib.dclszoo_construct_forward, lib.dclszoo_construct_backward

    @njit(parallel=True, nogil=True)
    def forward_blocks(w, p, s, rows, ndim, k, s0, s1, lo, hi, bounded, floor, tail, out, n_blocks, n_chunks,
                       status):  # pragma: no cover - jitted
        for c in prange(n_chunks):
            status[c] = c_forward(w, p, s, rows, ndim, k, s0, s1, lo, hi, bounded, floor, tail, out,
                                  n_blocks * c // n_chunks, n_blocks * (c + 1) // n_chunks)

    @njit(parallel=True, nogil=True)
    def backward_blocks(w, p, s, g, rows, ndim, k, s0, s1, lo, hi, bounded, floor, tail, gw, gp, gs, n_blocks,
                        n_chunks, status):  # pragma: no cover - jitted
        for c in prange(n_chunks):
            status[c] = c_backward(w, p, s, g, rows, ndim, k, s0, s1, lo, hi, bounded, floor, tail, gw, gp, gs,
                                   n_blocks * c // n_chunks, n_blocks * (c + 1) // n_chunks)

    return forward_blocks, backward_blocks


@functools.lru_cache(maxsize=None)
def _bounds(flat: tuple[float, ...] | None, ndim: int):
    """``(lo, hi)`` float32 C arrays of the clamp bounds (zeros when unbounded), kept alive by the cache (never
    evicted, so that an address handed to a kernel stays valid; a model has a few distinct bounds)."""
    lo, hi = (flat[:ndim], flat[ndim:]) if flat is not None else ((0.0,) * ndim, (0.0,) * ndim)
    return (_F * ndim)(*lo), (_F * ndim)(*hi)


def _settings(weight, span: tuple[int, ...], bounds, sigma_floor, tail: float) -> tuple:
    """The kernels' scalar arguments ``rows, D, K, S0, S1, lo, hi, bounded, floor, tail``."""
    o, i, k = weight.shape
    ndim = len(span)
    lo, hi = _bounds(None if bounds is None else tuple(bounds), ndim)
    return (o * i, ndim, k, span[0], span[1] if ndim == 2 else 1, ctypes.addressof(lo), ctypes.addressof(hi),
            int(bounds is not None), float(sigma_floor or 0.0), float(tail))


def _require(*checks) -> None:
    """Each ``(name, tensor, n)``: the tensor (None: skipped) must hold ``n`` contiguous float32 CPU values (the
    kernels index raw pointers). The passing case costs four attribute reads per tensor (this runs per step)."""
    for name, t, n in checks:
        if t is None or (t.dtype is _FLOAT32 and t.is_cpu and t.numel() >= n and t.is_contiguous()):
            continue
        raise ValueError(f"C construction kernel: {name} must be {n} contiguous float32 CPU values, got "
                         f"{t.numel()} of {t.dtype} on {t.device} (contiguous: {t.is_contiguous()}).")


def _ptr(t) -> int:
    return 0 if t is None else t.data_ptr()


def _run(kernel: int, w, p, s, g, settings: tuple, outs: tuple, threads: int) -> None:
    """Kernel 0 (forward, ``outs = (kernel,)``) or 1 (backward, ``outs = (gw, gp, gs)``, None: not computed) over
    all blocks: in chunks on the threads of torch's OpenMP runtime, else on numba's threads, else on the calling
    thread (one thread)."""
    lib = _library()[0]
    n_blocks = -(-settings[0] // lanes())
    n_chunks = max(1, min(n_blocks, _CHUNKS_PER_THREAD * threads))
    inputs = (_ptr(w), _ptr(p), _ptr(s)) + ((_ptr(g),) if kernel else ())
    out_ptrs = tuple(_ptr(t) for t in outs)
    parallel = _torch_openmp() if threads > 1 else None
    drivers = _parallel() if threads > 1 and parallel is None else None
    if parallel is not None:
        padded = out_ptrs + (0,) * (3 - len(out_ptrs))
        ok = lib.dclszoo_construct_omp(parallel, threads, n_chunks, kernel, *inputs[:3], _ptr(g), *settings, *padded,
                                       n_blocks)
    elif drivers is None:
        fn = (lib.dclszoo_construct_forward, lib.dclszoo_construct_backward)[kernel]
        ok = fn(*inputs, *settings, *out_ptrs, 0, n_blocks)
    else:
        status = np.zeros(n_chunks, dtype=np.int32)
        drivers[kernel](*inputs, *settings, *out_ptrs, n_blocks, n_chunks, status)
        ok = status.all()
    if not ok:
        raise MemoryError("dclszoo C construction kernel: could not allocate its per-thread scratch buffers.")


def forward(weight, positions, sigma, span: tuple[int, ...], bounds, sigma_floor, tail: float, out,
            threads: int) -> None:
    """Dense kernel rows into the flat float32 tensor ``out`` (Gaussian; weight ``[O, I/g, K]``, positions and sigma
    ``[D, O, I/g, K]``, all contiguous float32; ``bounds`` flat ``lo + hi`` or None)."""
    settings = _settings(weight, span, bounds, sigma_floor, tail)
    rk, m = settings[0] * settings[2], settings[0] * settings[3] * settings[4]
    _require(("weight", weight, rk), ("positions", positions, settings[1] * rk),
             ("sigma", sigma, settings[1] * rk), ("kernel", out, m))
    _run(0, weight, positions, sigma, None, settings, (out,), threads)


def backward(grad, weight, positions, sigma, span: tuple[int, ...], bounds, sigma_floor, tail: float, gw, gp, gs,
             threads: int) -> None:
    """Parameter gradients for the upstream kernel gradient ``grad`` (flat, contiguous) into the flat tensors
    ``gw``, ``gp``, ``gs`` (None: not computed)."""
    settings = _settings(weight, span, bounds, sigma_floor, tail)
    rk, m, d = settings[0] * settings[2], settings[0] * settings[3] * settings[4], settings[1]
    _require(("weight", weight, rk), ("positions", positions, d * rk), ("sigma", sigma, d * rk),
             ("upstream", grad, m), ("weight_grad", gw, rk), ("position_grad", gp, d * rk),
             ("sigma_grad", gs, d * rk))
    _run(1, weight, positions, sigma, grad, settings, (gw, gp, gs), threads)
