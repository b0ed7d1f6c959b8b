"""DCLS layer forward+backward: dclszoo vs ``dcls`` 0.1.1 vs the dense conv of the span (CPU, 2 threads).

Run: ``python bench/dcls_layer.py`` (needs ``dcls==0.1.1``; about 4 minutes on 2 cores).
Each implementation computes ``y = layer(x)`` and ``y.backward(gy)`` with ``x.requires_grad`` (a layer inside
a network) and ``gy`` allocated once; gradients are reset to ``None`` between calls. Timings are medians over
rounds interleaving ours and the dense conv in a random order each round; ``dcls`` is timed in rounds of its own
(its gigabytes of fresh buffers per call would slow whatever ran after it). Target (issue 2): ours / dense-span
<= 1.05 in every row. Two ratios are printed: of the two medians, and the median of the per-round ratios (ours
and the dense conv run in the same round, so the host's drift over the run cancels; its quartiles beside it).
``bench/dcls_layer_spread.py`` repeats the ours/dense rounds in several fresh processes.

Backend: on CPU in float32 the construction runs in the fused kernels chosen by ``dclszoo.kernels.construct``
(the C kernels where they are built, for these Gaussian rows; the warm-up call loads them or compiles numba's);
the column "dclszoo (numba)" is the same module with ``DCLSZOO_BACKEND=numba``, timed in the same
rounds. ``DCLSZOO_BACKEND=torch`` measures the pure-torch twin instead.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _cases import (  # noqa: E402
    backend_of, build, layer_io, layer_step, paired_ratio, paired_then_reference, print_fault_table, row_parser,
    selected_rows, with_backend,
)

ROUNDS_PER_REPEAT = 6  # interleaved rounds of ours, numba and the dense conv per ``Case.repeats``


def main() -> None:
    args = row_parser(__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(args.threads)
    rows = selected_rows(args.rows)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, forward+backward, median seconds "
        f"({args.clock} clock), load average before: {os.getloadavg()[0]:.1f}"
    )
    print()
    print("| case | construction | rounds | dense conv of span | dclszoo | dclszoo (numba) | dcls 0.1.1 | "
          "dclszoo / dense | dclszoo / dense, per round [quartiles] | dclszoo (numba) / dense | dcls / dense | "
          "dcls / dclszoo |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    fault_rows = []
    for case in rows:
        dense, ours, theirs = build(case)
        x, gy = layer_io(case, dense)
        fns = {name: layer_step(m, x, gy) for name, m in (("dense", dense), ("ours", ours), ("dcls", theirs))}
        fns["numba"] = with_backend("numba", fns["ours"])
        faults: dict[str, float] = {}
        rounds = ROUNDS_PER_REPEAT * case.repeats
        reps = {"dense": rounds, "ours": rounds, "numba": rounds, "dcls": case.repeats}
        samples: dict[str, list[float]] = {}
        t = paired_then_reference(fns, reps, "dcls", args.clock, faults, samples)
        fault_rows.append((case.name, faults))
        mid, q1, q3 = paired_ratio(samples, "ours", "dense")
        print(
            f"| {case.name} | {backend_of(ours)} | {rounds} | {t['dense']:.4f} | {t['ours']:.4f} | {t['numba']:.4f} | "
            f"{t['dcls']:.4f} | {t['ours'] / t['dense']:.3f}x | {mid:.3f}x [{q1:.3f}, {q3:.3f}] | "
            f"{t['numba'] / t['dense']:.3f}x | {t['dcls'] / t['dense']:.2f}x | {t['dcls'] / t['ours']:.2f}x |",
            flush=True,
        )
    print_fault_table(fault_rows, {"dense conv of span": "dense", "dclszoo": "ours", "dclszoo (numba)": "numba",
                                   "dcls 0.1.1": "dcls"})


if __name__ == "__main__":
    main()
