"""DCLS kernel construction alone, forward+backward: time and peak extra memory (CPU, 2 threads).

Run: ``python bench/kernel_construction.py`` (needs ``dcls==0.1.1``; about 3 minutes on 2 cores).
Compared: ``dclszoo.functional.dcls_kernel`` (the op, given the module's parameters with the module's
straight-through position clamp and ``|sigma|`` floor fused in: ``position_bounds``, ``sigma_floor``),
``DclsConvNd.kernel()`` (the module's own call, whatever it does around the op), and ``dcls`` 0.1.1's construction ``layer.DCK(weight,
P, SIG)``. The dense conv of the span has nothing to build: its forward+backward time is given as the yardstick.

Backend: on CPU in float32 the construction runs in the fused kernels chosen by ``dclszoo.kernels.construct``
(the C kernels where they are built, for these Gaussian rows; the warm-up call loads them or compiles numba's); the
column "op (numba)" is the same op with ``DCLSZOO_BACKEND=numba``, timed in the same rounds.
``DCLSZOO_BACKEND=torch`` measures the pure-torch twin instead.

Protocol: parameter gradients are ``None`` before each call; ``k = build(); k.backward(g)`` with ``g`` allocated
beforehand. Timings: medians over rounds interleaving the op, ``kernel()`` and the dense conv in a random order
each round, then rounds of ``dcls`` alone (its gigabytes of fresh buffers per call would slow whatever ran after
it). Peak extra memory = peak bytes of tensor storages allocated during that call (``bench/_memory.py``,
self-checked at start-up): it includes the output kernel itself (1x) and the parameter gradients, and is given
as a multiple of the dense kernel's own float32 size. ``bench/_memory.py`` measures it with the buffer pool of the
CPU kernels off (``DCLSZOO_REUSE_BUFFERS=0``): with it on, the call would get storages allocated before the
measured region, which the tracker does not count. What the pool keeps between calls is given in a column of its
own. Targets (issue 2): op peak extra <= 2x, op >= 20x faster than dcls.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _cases import (  # noqa: E402
    backend_of, build, paired_then_reference, print_fault_table, row_parser, selected_rows, with_backend,
)
from _memory import peak_extra_bytes, self_check  # noqa: E402

from dclszoo.functional import dcls_kernel, empty_cache  # noqa: E402
from dclszoo.kernels import _buffers  # noqa: E402
from dclszoo.modules.dcls_conv import SIGMA_FLOOR  # noqa: E402


def _builders(case, dense, ours, theirs):
    g = torch.randn((case.out_channels, case.in_channels // case.groups) + (case.span,) * case.ndim)
    x = torch.randn(case.input_shape, requires_grad=True)
    gy = torch.randn_like(dense(x).detach())

    def zero():
        for m in (dense, ours, theirs):
            m.zero_grad(set_to_none=True)
        x.grad = None

    def op():
        zero()
        k = dcls_kernel(
            ours.weight, ours.positions, ours.sigma, ours.span, "gauss",
            position_bounds=ours.position_bounds, sigma_floor=SIGMA_FLOOR,
        )
        k.backward(g)
        return k

    def module():
        zero()
        k = ours.kernel()
        k.backward(g)
        return k

    def reference():
        zero()
        k = theirs.DCK(theirs.weight, theirs.P, theirs.SIG)
        k.backward(g)
        return k

    def dense_conv():
        zero()
        dense(x).backward(gy)

    return {"op": op, "numba": with_backend("numba", op), "module": module, "dcls": reference, "dense": dense_conv}


def _pool_keeps(fn) -> int:
    """Bytes the buffer pool references after one call of ``fn`` from an empty pool."""
    empty_cache()
    fn()
    kept = _buffers.cached_bytes()
    empty_cache()
    return kept


def main() -> None:
    args = row_parser(__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(args.threads)
    self_check()
    rows = selected_rows(args.rows)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, forward+backward, median seconds "
        f"({args.clock} clock), load average before: {os.getloadavg()[0]:.1f}"
    )
    print()
    print(
        "| case | construction | dense kernel | dclszoo op | op (numba) | module.kernel() | dcls 0.1.1 | dcls / op | "
        "op / dense conv | dcls / dense conv | dense conv fwd+bwd | peak extra: op | op (numba) | module.kernel() | "
        "dcls | pool keeps |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    breakdown, fault_rows = [], []
    for case in rows:
        dense, ours, theirs = build(case)
        fns = _builders(case, dense, ours, theirs)
        slow = case.repeats
        faults: dict[str, float] = {}
        reps = {"op": 3 * slow, "numba": 3 * slow, "module": 3 * slow, "dcls": slow, "dense": slow}
        t = paired_then_reference(fns, reps, "dcls", args.clock, faults)
        fault_rows.append((case.name, faults))
        kernel_bytes = 4 * case.kernel_numel
        mem = {name: peak_extra_bytes(fns[name]) / kernel_bytes for name in ("op", "numba", "module", "dcls")}
        kept = _pool_keeps(fns["op"]) / kernel_bytes
        grads = sum(p.numel() for p in (ours.weight, ours.positions, ours.sigma)) * 4 / kernel_bytes
        breakdown.append((case.name, mem["op"], grads))
        print(
            f"| {case.name} | {backend_of(ours)} | {kernel_bytes / 2**20:.2f} MiB | {t['op']:.4f} | {t['numba']:.4f} | "
            f"{t['module']:.4f} | {t['dcls']:.4f} | {t['dcls'] / t['op']:.0f}x | {t['op'] / t['dense']:.3f} | "
            f"{t['dcls'] / t['dense']:.3f} | {t['dense']:.4f} | {mem['op']:.2f}x | {mem['numba']:.2f}x | "
            f"{mem['module']:.2f}x | {mem['dcls']:.1f}x | {kept:.2f}x |",
            flush=True,
        )
    print()
    print("Peak extra memory of the op, split (multiples of the dense kernel):")
    print()
    print("| case | peak extra | output kernel | parameter gradients | temporaries |")
    print("|---|---|---|---|---|")
    for name, total, grads in breakdown:
        print(f"| {name} | {total:.2f}x | 1.00x | {grads:.2f}x | {total - 1 - grads:.2f}x |")
    print_fault_table(
        fault_rows, {"dclszoo op": "op", "op (numba)": "numba", "module.kernel()": "module", "dcls 0.1.1": "dcls",
                     "dense conv fwd+bwd": "dense"}
    )


if __name__ == "__main__":
    main()
