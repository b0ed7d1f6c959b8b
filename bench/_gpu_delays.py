"""Learnable-delay synapses on one GPU, forward+backward: ``nn.Linear`` vs ``dcls`` vs dclszoo (helper).

:func:`delay_rows` measures a 700 -> 256 delay layer (SNN-delays on SHD), batch 32, at
``(max_delay, T)`` = (25, 100), (100, 100), (250, 100), (250, 300); it is called by ``bench/gpu.py`` and only touches the GPU
when called. Every column computes ``y`` from ``x [T, B, 700]`` (``x.requires_grad``: a layer inside a network)
and back-propagates a fixed ``gy``; gradients are reset to None before each call, so they count as extra memory.

Columns (``*_ms``: median over ``reps`` calls after a warm-up, CUDA events; ``*_mb``: peak of
``torch.cuda.max_memory_allocated`` over one call minus what was allocated before it):

- ``linear``: ``nn.Linear(700, 256)`` on ``[T, B, 700]`` (the cost floor).
- ``dcls``: ``dcls``' ``Dcls1d(700, 256, kernel_count=1, dilated_kernel_size=D, version='gauss')`` on the input
  permuted to ``[B, C, T]`` with the SNN-delays causal left padding ``D - 1``; None when ``dcls`` is not
  importable (``dcls_error`` says why when it is importable but fails).
- ``int``: ``dclszoo.DelayedLinear`` in integer mode (sigma 0: one tap per synapse, sparse kernel).
- ``narrow``: ``DelayedLinear`` with sigma 0.5 (the end of the SNN-delays schedule; ``path='auto'`` takes the
  sparse kernel with ``narrow_taps`` taps per synapse).
- ``floor``: sigma 0.25, the floor of dclszoo's own schedule (4 taps per synapse).
- ``wide``: ``DelayedLinear`` with sigma ``D / 2`` (the start of training; ``path='auto'`` takes the dense path).

Delays are random, uniform over ``[0, D - 1]`` (the modules' default initialisation).
"""

from __future__ import annotations

import logging
import statistics
from typing import Callable

import torch
import torch.nn.functional as F

N_IN, N_OUT, BATCH = 700, 256, 32
CASES = ((25, 100), (100, 100), (250, 100), (250, 300))  # (max_delay, T); (250, 100): flat in max_delay at equal T
SIGMA_NARROW = 0.5
SIGMA_FLOOR = 0.25  # dclszoo's SigmaSchedule default floor
COLUMNS = ("linear", "dcls", "int", "narrow", "floor", "wide")

__all__ = ["delay_rows", "CASES", "COLUMNS"]


def _time_ms(fn: Callable[[], None], reps: int, warmup: int) -> float:
    for _ in range(warmup):  # includes Triton's compilation and autotuning on the first call
        fn()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)


def _peak_mb(fn: Callable[[], None]) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _step(module: torch.nn.Module, x: torch.Tensor, gy: torch.Tensor,
          prepare: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> Callable[[], None]:
    params = [x, *module.parameters()]

    def run() -> None:
        for p in params:
            p.grad = None
        module(prepare(x)).backward(gy)

    return run


def _dcls(span: int, device, dtype):
    """``dcls``' Dcls1d as SNN-delays uses it, or None when ``dcls`` is not importable."""
    try:
        from DCLS.construct.modules import Dcls1d
    except ImportError:
        return None
    logging.disable(logging.WARNING)
    try:
        return Dcls1d(N_IN, N_OUT, kernel_count=1, dilated_kernel_size=span, version="gauss").to(device, dtype)
    finally:
        logging.disable(logging.NOTSET)


def delay_rows(device: str = "cuda", dtype: torch.dtype = torch.float32, reps: int = 20,
               warmup: int = 3) -> list[dict]:
    """One dict per ``(max_delay, T)`` of :data:`CASES`: times (ms) and peak extra memory (MB) per column.

    Keys, the same in every row and in this order: ``max_delay``, ``T``, ``I``, ``O``, ``B``, ``dtype``,
    ``delay_backend`` (the sparse op's backend), ``narrow_taps``, ``wide_path``, ``<column>_ms`` and
    ``<column>_mb`` for each of :data:`COLUMNS` (``dcls_*`` None when ``dcls`` is missing or failed), and
    ``dcls_error`` (None, or why ``dcls`` failed).
    """
    from dclszoo import DelayedLinear
    from dclszoo.kernels import delay as delay_op

    rows = []
    for span, steps in CASES:
        torch.manual_seed(0)
        x = torch.rand(steps, BATCH, N_IN, device=device, dtype=dtype).requires_grad_(True)
        gy = torch.randn(steps, BATCH, N_OUT, device=device, dtype=dtype)
        gyb = gy.permute(1, 2, 0).contiguous()
        ours = {}
        for name, sigma in (("int", 0.0), ("narrow", SIGMA_NARROW), ("floor", SIGMA_FLOOR), ("wide", span / 2)):
            ours[name] = DelayedLinear(N_IN, N_OUT, span, sigma=sigma, device=device, dtype=dtype)
        fns = {"linear": _step(torch.nn.Linear(N_IN, N_OUT, device=device, dtype=dtype), x, gy)}
        fns.update({name: _step(m, x, gy) for name, m in ours.items()})
        row = {
            "max_delay": span, "T": steps, "I": N_IN, "O": N_OUT, "B": BATCH, "dtype": str(dtype).replace("torch.", ""),
            "delay_backend": delay_op._select_backend(x, None), "narrow_taps": ours["narrow"].taps_per_delay(),
            "wide_path": "sparse" if ours["wide"].use_sparse() else "dense",
        }
        dcls = _dcls(span, device, dtype)
        if dcls is not None:
            fns["dcls"] = _step(dcls, x, gyb, lambda t, s=span: F.pad(t.permute(1, 2, 0), (s - 1, 0)))
        error = None
        for name in COLUMNS:  # every row has the same keys, in this order
            ms = mb = None
            if name in fns:
                try:
                    ms, mb = _time_ms(fns[name], reps, warmup), _peak_mb(fns[name])
                except Exception as exc:  # noqa: BLE001 - only the reference may fail (e.g. a dtype it lacks)
                    if name != "dcls":
                        raise
                    error = f"{type(exc).__name__}: {exc}"
            row[f"{name}_ms"], row[f"{name}_mb"] = ms, mb
        row["dcls_error"] = error
        rows.append(row)
        del fns, ours, dcls, x, gy, gyb
        torch.cuda.empty_cache()
    return rows
