"""Learnable-delay synapses, forward+backward on CPU: dclszoo sparse delays vs ``dcls`` 0.1.1 vs ``nn.Linear``.

Run: ``python bench/delays.py`` (needs ``dcls==0.1.1`` and numba; about 3 minutes on 2 cores).

A 700 -> 256 delay layer (SNN-delays on SHD), batch 32, at several ``max_delay`` D. Every implementation
computes ``y`` from ``x [T, B, 700]`` (``x.requires_grad``, a layer inside a network) and back-propagates a
fixed ``gy``; parameter gradients are reset between calls. Timings are medians over rounds interleaving the
others in a random order each round, then rounds of ``dcls`` alone (its large fresh buffers would slow the next
call).

- ``linear``: ``nn.Linear(700, 256)`` on ``[T, B, 700]`` (the cost floor).
- ``int``: ours, ``dclszoo.DelayedLinear`` in integer mode (sigma 0: one tap per synapse, the sparse
  :func:`dclszoo.kernels.delay.sparse_delay` kernel), integer delays uniform in ``[0, D-1]``.
- ``narrow``: ours, ``DelayedLinear`` with sigma 0.5 (the end of the SNN-delays schedule) on the sparse path:
  ``2 * ceil(6 sigma) = 6`` taps per synapse around each real-valued delay, weights and delays both trained.
- ``dcls``: ``dcls`` 0.1.1 ``Dcls1d(700, 256, kernel_count=1, dilated_kernel_size=D, version='gauss')`` on the
  input permuted to ``[B, C, T]`` with the SNN-delays causal left padding ``D - 1`` (the reference; it costs
  the same while sigma is wide or narrow).
- ``dense``: ours, ``DelayedLinear`` with sigma ``D // 2`` on the dense path (lean kernel construction +
  causal ``conv1d``), the start of training.
Peak memory is the extra storage allocated by one forward+backward (``bench/_memory.py``), inputs excluded.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _cases import paired_then_reference  # noqa: E402
from _memory import peak_extra_bytes, self_check  # noqa: E402

from dclszoo import DelayedLinear  # noqa: E402

N_IN, N_OUT, BATCH = 700, 256, 32
SIGMA_NARROW = 0.5  # the end of the SNN-delays sigma schedule
CASES = [(100, 25), (100, 50), (100, 100), (300, 25), (300, 250)]  # (T, max_delay)


def make_fns(steps: int, span: int):
    from DCLS.construct.modules import Dcls1d

    torch.manual_seed(0)
    x = torch.rand(steps, BATCH, N_IN).requires_grad_(True)
    gy = torch.randn(steps, BATCH, N_OUT)
    gyb = gy.permute(1, 2, 0).contiguous()
    linear = torch.nn.Linear(N_IN, N_OUT)
    ours = {
        "int": DelayedLinear(N_IN, N_OUT, span, sigma=0.0),  # integer mode (after round_delays / hard phase)
        "narrow": DelayedLinear(N_IN, N_OUT, span, sigma=SIGMA_NARROW, path="sparse"),
        "dense": DelayedLinear(N_IN, N_OUT, span, sigma=float(span // 2), path="dense"),  # start of training
    }
    logging.disable(logging.WARNING)
    try:
        ref = Dcls1d(N_IN, N_OUT, kernel_count=1, dilated_kernel_size=span, version="gauss")
    finally:
        logging.disable(logging.NOTSET)
    params = [x, *linear.parameters(), *ref.parameters()] + [p for m in ours.values() for p in m.parameters()]

    def zero():
        for p in params:
            p.grad = None

    def run_linear():
        zero()
        linear(x).backward(gy)

    def run_ours(module):
        def run():
            zero()
            module(x).backward(gy)

        return run

    def run_dcls():
        zero()
        ref(F.pad(x.permute(1, 2, 0), (span - 1, 0))).backward(gyb)

    fns = {"linear": run_linear, "dcls": run_dcls}
    fns.update({name: run_ours(m) for name, m in ours.items()})
    return fns, ours


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
    probe = DelayedLinear(N_IN, N_OUT, 25, sigma=SIGMA_NARROW, path="sparse")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; forward+backward, median seconds")
    print(f"ours = dclszoo.DelayedLinear (bias, T-first): int = integer mode (sigma 0, 1 tap), narrow = sigma "
          f"{SIGMA_NARROW} on the sparse path ({probe.taps_per_delay()} taps per synapse), dense = sigma D // 2 "
          f"on the dense path")
    print()
    head = ("| T | D | linear | ours int | ours narrow | dcls 0.1.1 | ours dense | int/lin | narrow/lin | dcls/lin "
            "| dcls/int | dcls/narrow | dense/dcls | peak MB lin / int / narrow / dcls / dense |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    results = {}
    for steps, span in CASES:
        fns, ours = make_fns(steps, span)
        assert not ours["int"].use_sparse() or ours["int"].taps_per_delay() == 1
        slow = 3 if steps * span > 5000 else 5
        reps = {"linear": args.repeats, "int": args.repeats, "narrow": args.repeats, "dcls": slow, "dense": slow}
        t = paired_then_reference(fns, reps, "dcls")
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
