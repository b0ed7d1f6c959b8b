"""The benchmark rows (CONTEXT.md section 7 plus a dense 256->256 gauss kernel) and a fair timer.

Every row is built three ways with the same shapes: the dense ``nn.ConvNd`` whose kernel is the whole span,
our ``DclsConvNd`` (gauss) and ``dcls`` 0.1.1's ``Dcls1d/2d`` (``version='gauss'``).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import time
from dataclasses import dataclass
from typing import Callable
from unittest import mock

import torch
import torch.nn as nn

import dclszoo


@dataclass(frozen=True)
class Case:
    name: str
    in_channels: int
    out_channels: int
    groups: int
    kernel_count: int
    span: int
    input_shape: tuple[int, ...]  # [B, C, *spatial]
    repeats: int  # timing repeats of the slow implementations (more for fast ones)

    @property
    def ndim(self) -> int:
        return len(self.input_shape) - 2

    @property
    def kernel_numel(self) -> int:
        return self.out_channels * (self.in_channels // self.groups) * self.span**self.ndim


CASES = [
    Case("depthwise C96 56x56 B8, 26 taps, span 17", 96, 96, 96, 26, 17, (8, 96, 56, 56), 3),
    Case("depthwise C512 14x14 B8, 34 taps, span 23", 512, 512, 512, 34, 23, (8, 512, 14, 14), 5),
    Case("delays 700->256 Conv1d T=100 B32, 1 tap, span 25", 700, 256, 1, 1, 25, (32, 700, 100), 5),
    Case("dense 256->256 14x14 B8, 9 taps, span 7", 256, 256, 1, 9, 7, (8, 256, 14, 14), 5),
]


def build(case: Case, seed: int = 0):
    """``(dense, ours, theirs)`` modules for a row, all with 'same' padding and float32 parameters."""
    from DCLS.construct.modules import Dcls1d, Dcls2d

    torch.manual_seed(seed)
    n = case.ndim
    args = (case.in_channels, case.out_channels)
    pad = case.span // 2
    dense = (nn.Conv1d, nn.Conv2d)[n - 1](*args, case.span, padding=pad, groups=case.groups)
    ours = (dclszoo.DclsConv1d, dclszoo.DclsConv2d)[n - 1](
        *args, case.kernel_count, case.span, padding=pad, groups=case.groups, interpolation="gauss"
    )
    logging.disable(logging.WARNING)  # dcls logs a warning flood about its CUDA-only implicit GEMM
    try:
        extra = {"use_implicit_gemm": False} if n == 2 else {}
        theirs = (Dcls1d, Dcls2d)[n - 1](
            *args, case.kernel_count, padding=pad, dilated_kernel_size=case.span, groups=case.groups,
            version="gauss", **extra,
        )
    finally:
        logging.disable(logging.NOTSET)
    return dense, ours, theirs


def layer_io(case: Case, dense: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, gy)`` of the layer benchmarks: an input that requires grad (a layer inside a network) and an
    upstream gradient allocated once."""
    x = torch.randn(case.input_shape, requires_grad=True)
    return x, torch.randn_like(dense(x).detach())


def layer_step(module: nn.Module, x: torch.Tensor, gy: torch.Tensor) -> Callable[[], None]:
    """One timed call of the layer benchmarks: gradients reset to None, ``module(x).backward(gy)``."""
    def run():
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x).backward(gy)

    return run


def backend_of(module: nn.Module) -> str:
    """The construction backend the module's kernel takes here (``c`` with its variant, ``numba`` or ``torch``)."""
    from dclszoo.kernels import _construct_c, construct

    sigma = module.sigma.detach() if module.sigma is not None else None
    backend = construct.select_backend(module.weight.detach(), module.positions.detach(), sigma, module.span)
    return f"c ({_construct_c.runnable_variants()[0][len('_construct_'):]})" if backend == "c" else backend


def with_backend(backend: str, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with ``$DCLSZOO_BACKEND=backend`` (restored afterwards)."""
    from dclszoo.kernels.construct import ENV_BACKEND

    def run():
        with mock.patch.dict(os.environ, {ENV_BACKEND: backend}):
            return fn()

    return run


def _minor_faults() -> int:
    """Minor page faults of this process so far (0 where ``resource`` is unavailable)."""
    try:
        import resource
    except ImportError:  # not on Unix
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def round_times(
    fns: dict[str, Callable[[], object]], repeats: dict[str, int], clock: str = "wall",
    faults: dict[str, float] | None = None,
) -> dict[str, list[float]]:
    """Seconds of every call of every function, in round order: one warm-up call each, then rounds interleaving
    all of them, each round in its own (seeded) random order, so that no function always runs right after the same
    one (what ran just before matters: a construction timed right after the dense convolution takes ~1.5x as long
    as after another construction, its caches having been swept).

    ``clock='wall'`` is ``time.perf_counter``; ``clock='cpu'`` is this process's CPU time
    (``time.process_time``), which with one thread is robust to other processes sharing the cores.
    ``faults``, if given, receives the median number of minor page faults per call of each function: fresh
    multi-MiB buffers that glibc maps anew fault once per 4 KiB page on first write (the kernel zeroes each
    page), a cost that depends on the heap's state after earlier calls rather than on the code measured.
    """
    timer = {"wall": time.perf_counter, "cpu": time.process_time}[clock]
    times: dict[str, list[float]] = {name: [] for name in fns}
    counts: dict[str, list[int]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    order, rng = list(fns), random.Random(0)
    for r in range(max(repeats.values())):
        rng.shuffle(order)
        for name in order:
            fn = fns[name]
            if r < repeats[name]:
                f0 = _minor_faults()
                t0 = timer()
                fn()
                times[name].append(timer() - t0)
                counts[name].append(_minor_faults() - f0)
    if faults is not None:
        faults.update({name: statistics.median(c) for name, c in counts.items()})
    return times


def median_times(
    fns: dict[str, Callable[[], object]], repeats: dict[str, int], clock: str = "wall",
    faults: dict[str, float] | None = None,
) -> dict[str, float]:
    """Median time per function over the rounds of :func:`round_times`."""
    return {name: statistics.median(ts) for name, ts in round_times(fns, repeats, clock, faults).items()}


def paired_ratio(times: dict[str, list[float]], a: str, b: str) -> tuple[float, float, float]:
    """``(median, first quartile, third quartile)`` over the rounds of the per-round ratio ``a / b`` of two
    functions timed in the same rounds of :func:`round_times`. The benchmark host's speed drifts by more than 5%
    within a process (row 4's dense conv fwd+bwd alone, groups of ten calls in one process: medians from 119 to
    131 ms); a ratio of two calls made side by side cancels that drift, a ratio of two medians does not."""
    ratios = [x / y for x, y in zip(times[a], times[b])]
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return statistics.median(ratios), q1, q3


def paired_then_reference(
    fns: dict[str, Callable[[], object]], repeats: dict[str, int], reference: str, clock: str = "wall",
    faults: dict[str, float] | None = None, samples: dict[str, list[float]] | None = None,
) -> dict[str, float]:
    """:func:`median_times` of every function but ``reference`` interleaved, then of ``reference`` in rounds of
    its own (same run). ``dcls`` 0.1.1 allocates and frees 0.2-4.4 GiB a call: whatever runs right after it
    finds caches, TLBs and heap swept, so interleaving it would charge its side effects to the others.
    ``samples``, if given, receives the interleaved functions' per-call times (for :func:`paired_ratio`)."""
    rest = {name: fn for name, fn in fns.items() if name != reference}
    own_faults: dict[str, float] = {}
    times = round_times(rest, {name: repeats[name] for name in rest}, clock, own_faults)
    if samples is not None:
        samples.update(times)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    medians.update(median_times({reference: fns[reference]}, {reference: repeats[reference]}, clock, own_faults))
    if faults is not None:
        faults.update(own_faults)
    return medians


def print_fault_table(rows: list[tuple[str, dict[str, float]]], columns: dict[str, str]) -> None:
    """The median minor page faults per call (``faults`` of :func:`median_times`) of each row, one column per
    ``{label: function name}``."""
    print()
    print("Minor page faults per call (median; 4 KiB pages first written in fresh allocations, see _cases.median_times):")
    print()
    print("| case | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, faults in rows:
        print(f"| {name} | " + " | ".join(f"{faults[key]:.0f}" for key in columns.values()) + " |")


def row_parser(description: str) -> argparse.ArgumentParser:
    """The command line shared by the row benchmarks: ``--threads``, ``--clock``, ``--rows``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="cpu: process CPU time")
    parser.add_argument("--rows", type=str, default="", help="comma-separated row indices (default: all)")
    return parser


def selected_rows(spec: str) -> list[Case]:
    """``CASES`` filtered by ``--rows`` (comma-separated indices; empty = all)."""
    return [CASES[int(i)] for i in spec.split(",")] if spec else list(CASES)
