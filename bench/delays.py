"""Learnable-delay synapses, forward+backward on CPU: dclszoo sparse delays vs ``dcls`` 0.1.1 vs ``nn.Linear``.

Run: ``python bench/delays.py`` (needs ``dcls==0.1.1`` and numba; about 3 minutes on 2 cores).

A 700 -> 256 delay layer (SNN-delays on SHD), batch 32, at several ``max_delay`` D. Every implementation
computes ``y`` from ``x [T, B, 700]`` (``x.requires_grad``, a layer inside a network) and back-propagates a
fixed ``gy``; parameter gradients are reset between calls. Timings are medians over interleaved rounds.

- ``linear``: ``nn.Linear(700, 256)`` on ``[T, B, 700]`` (the cost floor).
- ``int``: ours, integer delays uniform in ``[0, D-1]`` (``sparse_delay`` with ``J = 1``).
- ``narrow``: ours, Gaussian delays of sigma 0.5 as ``J`` taps around each position (tap weights built from
  weight and position inside the timed region); ``J`` is the smallest number of taps whose dropped
  normalised weights are below ``TAP_TOL`` for every fractional position (computed below, printed).
- ``dcls``: ``dcls`` 0.1.1 ``Dcls1d(700, 256, kernel_count=1, dilated_kernel_size=D, version='gauss')`` on the
  input permuted to ``[B, C, T]`` with the SNN-delays causal left padding ``D - 1`` (the reference; it costs
  the same while sigma is wide or narrow).
- ``dense``: our dense (wide-sigma) path, ``dclszoo.functional.dcls_kernel`` (1-D gauss, sigma D // 2) +
  ``F.conv1d`` on the same padded input.
Peak memory is the extra storage allocated by one forward+backward (``bench/_memory.py``), inputs excluded.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _memory import peak_extra_bytes, self_check  # noqa: E402

from dclszoo.functional import dcls_kernel  # noqa: E402
from dclszoo.kernels.delay import sparse_delay  # noqa: E402

N_IN, N_OUT, BATCH = 700, 256, 32
SIGMA_NARROW = 0.5
TAP_TOL = 1e-7
CASES = [(100, 25), (100, 50), (100, 100), (300, 25), (300, 250)]  # (T, max_delay)


def narrow_taps(sigma: float = SIGMA_NARROW, tol: float = TAP_TOL) -> tuple[int, int]:
    """``(J, first)``: taps ``floor(p) + first + m`` (m < J) hold every normalised weight >= ``tol``."""
    grid = torch.arange(-20, 21, dtype=torch.float64)
    lo, hi = 0, 0
    for frac in torch.linspace(0, 1, 1001, dtype=torch.float64)[:-1]:
        w = torch.exp(-0.5 * ((grid - frac) / sigma) ** 2)
        kept = grid[(w / w.sum()) >= tol]
        lo, hi = min(lo, int(kept.min())), max(hi, int(kept.max()))
    return hi - lo + 1, lo


def gauss_taps(weight, pos, span, n_taps, first, sigma=SIGMA_NARROW):
    """Tap coefficients/offsets ``[O, I, J]`` of a Gaussian delay at ``pos`` (normalised over the span)."""
    grid = torch.arange(span, dtype=pos.dtype)
    z = torch.exp(-0.5 * ((grid - pos.detach().unsqueeze(-1)) / sigma) ** 2).sum(-1, keepdim=True) + 1e-7
    taps = torch.floor(pos.detach()).long().unsqueeze(-1) + first + torch.arange(n_taps)
    inside = (taps >= 0) & (taps < span)
    phi = torch.exp(-0.5 * ((taps.to(pos.dtype) - pos.unsqueeze(-1)) / sigma) ** 2) / z
    return weight.unsqueeze(-1) * phi * inside, taps.clamp(0, span - 1)


def dense_gauss_delay(x, weight, pos, span, sigma):
    """Reference semantics of a Gaussian delay as a dense causal conv (float64 check only)."""
    grid = torch.arange(span, dtype=x.dtype)
    phi = torch.exp(-0.5 * ((grid - pos.unsqueeze(-1)) / sigma) ** 2)
    kernel = weight.unsqueeze(-1) * phi / (phi.sum(-1, keepdim=True) + 1e-7)  # [O, I, D], index = delay
    xb = F.pad(x.permute(1, 2, 0), (span - 1, 0))
    return F.conv1d(xb, kernel.flip(-1)).permute(2, 0, 1)


def check_narrow(n_taps: int, first: int, span: int = 25) -> float:
    """Max |sparse J-tap - dense Gaussian| / max |dense| on a small float64 problem."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 3, 30, generator=g, dtype=torch.float64)
    weight = torch.randn(20, 30, generator=g, dtype=torch.float64)
    pos = torch.rand(20, 30, generator=g, dtype=torch.float64) * (span - 1)
    want = dense_gauss_delay(x, weight, pos, span, SIGMA_NARROW)
    coeff, off = gauss_taps(weight, pos, span, n_taps, first)
    got = sparse_delay(x, coeff, off)
    return float((got - want).abs().max() / want.abs().max())


def make_fns(steps: int, span: int, n_taps: int, first: int):
    from DCLS.construct.modules import Dcls1d

    torch.manual_seed(0)
    x = torch.rand(steps, BATCH, N_IN).requires_grad_(True)
    gy = torch.randn(steps, BATCH, N_OUT)
    gyb = gy.permute(1, 2, 0).contiguous()
    linear = torch.nn.Linear(N_IN, N_OUT)
    weight = (torch.randn(N_OUT, N_IN) / math.sqrt(N_IN)).requires_grad_(True)
    delays = torch.randint(0, span, (N_OUT, N_IN, 1))
    pos = (torch.rand(N_OUT, N_IN) * (span - 1)).requires_grad_(True)
    logging.disable(logging.WARNING)
    try:
        ref = Dcls1d(N_IN, N_OUT, kernel_count=1, dilated_kernel_size=span, version="gauss")
    finally:
        logging.disable(logging.NOTSET)
    dpos = (torch.rand(1, N_OUT, N_IN, 1) - 0.5) * (span - 1)
    dpos.requires_grad_(True)
    dw = weight.detach().unsqueeze(-1).requires_grad_(True)
    params = [x, weight, pos, dpos, dw, *linear.parameters(), *ref.parameters()]

    def zero():
        for p in params:
            p.grad = None

    def run_linear():
        zero()
        linear(x).backward(gy)

    def run_int():
        zero()
        sparse_delay(x, weight.unsqueeze(-1), delays).backward(gy)

    def run_narrow():
        zero()
        coeff, off = gauss_taps(weight, pos, span, n_taps, first)
        sparse_delay(x, coeff, off).backward(gy)

    def run_dcls():
        zero()
        ref(F.pad(x.permute(1, 2, 0), (span - 1, 0))).backward(gyb)

    def run_dense():
        zero()
        kernel = dcls_kernel(dw, dpos, float(span // 2), (span,), "gauss")
        F.conv1d(F.pad(x.permute(1, 2, 0), (span - 1, 0)), kernel).backward(gyb)

    return {"linear": run_linear, "int": run_int, "narrow": run_narrow, "dcls": run_dcls, "dense": run_dense}


def median_times(fns, repeats):
    """Median wall time per function: one warm-up call each, then rounds interleaving all of them."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for r in range(max(repeats.values())):
        for name, fn in fns.items():
            if r < repeats[name]:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15, help="rounds for the fast rows (slow ones: 3)")
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    if not args.no_memory:
        self_check()
    n_taps, first = narrow_taps()
    err = check_narrow(n_taps, first)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; forward+backward, median seconds")
    print(f"narrow Gaussian sigma {SIGMA_NARROW}: J = {n_taps} taps (floor(p){first:+d} .. floor(p){first + n_taps - 1:+d})"
          f" keep every normalised weight >= {TAP_TOL:g}; max rel. deviation from the dense Gaussian: {err:.1e}")
    print()
    head = ("| T | D | linear | ours int | ours narrow | dcls 0.1.1 | ours dense | int/lin | narrow/lin | dcls/lin "
            "| dcls/int | dcls/narrow | dense/dcls | peak MB lin / int / narrow / dcls / dense |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    results = {}
    for steps, span in CASES:
        fns = make_fns(steps, span, n_taps, first)
        slow = 3 if steps * span > 5000 else 5
        reps = {"linear": args.repeats, "int": args.repeats, "narrow": args.repeats, "dcls": slow, "dense": slow}
        t = median_times(fns, reps)
        mem = {k: float("nan") for k in fns} if args.no_memory else {k: peak_extra_bytes(f) / 2**20 for k, f in fns.items()}
        results[(steps, span)] = (t, mem)
        lin = t["linear"]
        print(
            f"| {steps} | {span} | {lin:.4f} | {t['int']:.4f} | {t['narrow']:.4f} | {t['dcls']:.3f} | {t['dense']:.3f} "
            f"| {t['int'] / lin:.1f}x | {t['narrow'] / lin:.1f}x | {t['dcls'] / lin:.1f}x | {t['dcls'] / t['int']:.1f}x "
            f"| {t['dcls'] / t['narrow']:.1f}x | {t['dense'] / t['dcls']:.2f}x "
            f"| {mem['linear']:.0f} / {mem['int']:.0f} / {mem['narrow']:.0f} / {mem['dcls']:.0f} / {mem['dense']:.0f} |",
            flush=True,
        )
    print()
    (t25, m25), (t250, m250) = results[(300, 25)], results[(300, 250)]
    for k in ("int", "narrow"):
        print(f"flatness {k} (T=300, D=250 vs D=25): time {t250[k] / t25[k]:.2f}x, peak memory {m250[k] / m25[k]:.2f}x")


if __name__ == "__main__":
    main()
