"""Where one row's DCLS layer time goes, in this process: our C construction calls vs the convolution parts.

Run: ``for i in $(seq 8); do python bench/dcls_layer_breakdown.py; done`` (about 10 s each on 2 cores; ``--rows``
picks the row, default row 4, index 3). Times the layer's forward and backward (``y = layer(x)``, then
``y.backward(gy)``) against the dense conv's, alternating, and inside them the two calls of the C construction
kernels (``dclszoo.kernels._construct_c.forward`` / ``backward``, wrapped by a timer). What is left, ours minus the
dense conv minus the kernel, is the Python around the kernels plus any difference between the two layers'
convolutions. One line per process: the point is to compare processes (see docs/benchmarks.md).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _cases import build, layer_io, row_parser, selected_rows  # noqa: E402


def main() -> None:
    parser = row_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from dclszoo.kernels import _construct_c

    times: dict[str, list[float]] = {}

    def timed(fn, key):
        def run(*a):
            t0 = time.perf_counter()
            fn(*a)
            times.setdefault(key, []).append(time.perf_counter() - t0)

        return run

    _construct_c.forward = timed(_construct_c.forward, "C forward")
    _construct_c.backward = timed(_construct_c.backward, "C backward")
    for case in selected_rows(args.rows or "3"):
        dense, ours, _ = build(case)
        x, gy = layer_io(case, dense)

        def step(module, tag):
            module.zero_grad(set_to_none=True)
            x.grad = None
            t0 = time.perf_counter()
            y = module(x)
            t1 = time.perf_counter()
            y.backward(gy)
            t2 = time.perf_counter()
            times.setdefault(f"{tag} forward", []).append(t1 - t0)
            times.setdefault(f"{tag} backward", []).append(t2 - t1)

        for _ in range(3):
            step(dense, "dense")
            step(ours, "ours")
        times.clear()
        for s in range(args.steps):
            for module, tag in ((ours, "ours"), (dense, "dense")) if s % 2 else ((dense, "dense"), (ours, "ours")):
                step(module, tag)
        if "C forward" not in times:
            raise SystemExit(f"{case.name}: the layer did not run the C kernels (backend forced or not built?).")
        m = {key: 1e3 * statistics.median(ts) for key, ts in times.items()}
        rest_f = m["ours forward"] - m["dense forward"] - m["C forward"]
        rest_b = m["ours backward"] - m["dense backward"] - m["C backward"]
        ratio = (m["ours forward"] + m["ours backward"]) / (m["dense forward"] + m["dense backward"])
        print(f"{case.name}: C forward {m['C forward']:.2f} ms, C backward {m['C backward']:.2f} ms, "
              f"dense fwd / bwd {m['dense forward']:.2f} / {m['dense backward']:.2f} ms, "
              f"ours - dense - C: forward {rest_f:+.2f} ms, backward {rest_b:+.2f} ms, layer / dense {ratio:.3f}")


if __name__ == "__main__":
    main()
