"""Timing task: no delays, fixed random delays and learned delays over a grid of task variants.

Network: DelayedLinear(channels -> hidden, max_delay = pattern span) -> LIF (tau ~ 1, no memory to speak of) ->
Linear(hidden -> classes), logits = sum over time of the readout. Learned delays use the library's recipe as it
comes: ``delay_param_groups(net, lr)`` and ``SigmaSchedule(net, epochs, optimizer=opt)`` stepped per epoch
(sigma ``max_delay // 2`` -> 0.25 over the first half, delay lr = 0.5 x sigma, integer delays for the last 20%).
``SNN-delays recipe``: the same network and loop with
the reference's schedule (see ``VARIANTS``). Evaluation always uses integer delays. Prints one markdown table: per row, the test accuracy of every seed for
each variant.

    python bench/timing_task.py                       # the grid: 8 rows x 3 seeds x 3 variants
    python bench/timing_task.py --set unseen          # variants the recipe was not tuned on
    python bench/timing_task.py --rows default --seeds 1 --variants learned   # quick look
    python bench/timing_task.py --device cuda         # the same on a GPU
    python bench/timing_task.py --device cuda --path auto   # ... with the sparse delay kernels in the narrow phase

Deterministic on CPU: every run is seeded and runs in its own process with one thread, so ``--jobs`` changes the
wall time, not the numbers. Bitwise only on the same backend (``DCLSZOO_BACKEND``: the C, numba and torch kernels
round differently) and the same torch build; on a GPU, close but not bitwise.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import math
import multiprocessing
import os
import time

import torch
import torch.nn as nn

VARIANTS = {"none": "no delays", "random": "fixed random delays", "snn": "SNN-delays recipe",
            "learned": "learned delays"}
"""``snn``: learned delays with SNN-delays' schedule (sigma -> 0.5 over the first quarter, no hard phase, one delay
group at 100 x the weights' lr, cosine-annealed per epoch), for comparison; ``learned``: the library's defaults."""

BASE = dict(channels=12, spacing=2, classes=4, hidden=12, noise=0.05, steps=64)
"""The default row; every other grid row changes one thing (spacing 1 two: see its comment)."""
GRID = {
    "default": {},
    "8 channels": dict(channels=8, steps=48),
    "16 channels": dict(channels=16, steps=80),
    "spacing 1": dict(spacing=1, steps=48, hidden=8),  # with 12 hidden, random delays reach 0.95-0.99 here
    "spacing 3": dict(spacing=3, steps=80),
    "6 classes": dict(classes=6),
    "8 hidden": dict(hidden=8),
    "noise 0.1": dict(noise=0.1),
}
UNSEEN = {
    "10 ch, spacing 3, 5 classes, 15 hidden, noise 0.08": dict(channels=10, spacing=3, classes=5, hidden=15,
                                                               noise=0.08, steps=64),
    "20 ch, spacing 1, 3 classes, 9 hidden": dict(channels=20, spacing=1, classes=3, hidden=9, steps=48),
    "6 ch, spacing 4, 4 classes, 12 hidden, noise 0.03": dict(channels=6, spacing=4, noise=0.03, steps=40),
    "14 ch, 8 classes, 24 hidden": dict(channels=14, classes=8, hidden=24, steps=64),
}
SETS = {"grid": GRID, "unseen": UNSEEN}


def describe(row: dict) -> str:
    r = {**BASE, **row}
    return (f"{r['channels']} ch, spacing {r['spacing']}, {r['classes']} classes, {r['hidden']} hidden, "
            f"noise {r['noise']:g}, T {r['steps']}")


class Net(nn.Module):
    def __init__(self, task, hidden: int, variant: str, path: str = "dense") -> None:
        from spikingjelly.activation_based import neuron, surrogate

        from dclszoo import DelayedLinear

        super().__init__()
        max_delay = 1 if variant == "none" else task.max_delay_needed
        # the layers are tiny: the dense conv over max_delay is the fastest path on CPU (the default); 'auto'
        # takes the sparse delay kernels once sigma is narrow and in the hard phase
        learned = variant in ("learned", "snn")
        self.syn = DelayedLinear(task.channels, hidden, max_delay, sigma=None if learned else 0.0,
                                 path=path)
        if variant == "random":
            with torch.no_grad():
                self.syn.delays.copy_(torch.randint(0, max_delay, self.syn.delays.shape).float())
        if not learned:
            self.syn.delays.requires_grad_(False)
        self.lif = neuron.LIFNode(tau=1.01, decay_input=False, v_threshold=1.0,
                                  surrogate_function=surrogate.ATan(alpha=5.0), detach_reset=True, step_mode="m")
        self.readout = nn.Linear(hidden, task.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.lif(self.syn(x))).sum(0)


def evaluate(net: Net, x: torch.Tensor, y: torch.Tensor) -> float:
    from spikingjelly.activation_based import functional

    from dclszoo.delays_training import integer_delays

    net.eval()
    with torch.no_grad(), integer_delays(net):
        functional.reset_net(net)
        acc = (net(x).argmax(-1) == y).float().mean().item()
    net.train()
    return acc


def run(row: dict, variant: str, seed: int, args) -> tuple[float, float]:
    """Train one network; returns (test accuracy with integer delays, seconds)."""
    from spikingjelly.activation_based import functional

    from dclszoo.delays_training import SigmaSchedule, delay_param_groups
    from dclszoo.training import DELAY_LR_SCALE
    from dclszoo.tasks import TimingTask

    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    r = {**BASE, **row}
    task = TimingTask(channels=r["channels"], classes=r["classes"], spacing=r["spacing"], steps=r["steps"],
                      noise=r["noise"], pattern_seed=seed)
    xtr, ytr = (t.to(args.device) for t in task.sample(args.train, seed=1000 + seed))
    xte, yte = (t.to(args.device) for t in task.sample(args.test, seed=2000 + seed))
    torch.manual_seed(seed)
    net = Net(task, r["hidden"], variant, args.path).to(args.device)
    if variant == "learned":
        opt = torch.optim.Adam(delay_param_groups(net, lr=args.lr))
        sched = SigmaSchedule(net, args.epochs, optimizer=opt)
    elif variant == "snn":
        opt = torch.optim.Adam(delay_param_groups(net, lr=args.lr, delay_lr=DELAY_LR_SCALE * args.lr))
        sched = SigmaSchedule(net, args.epochs, decay_fraction=0.25, floor=0.5, hard_fraction=0.0)
    else:
        opt, sched = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=args.lr), None
    batches = (args.train + args.batch - 1) // args.batch
    for epoch in range(args.epochs):
        if variant == "snn":  # the delay group (the last) anneals from 100 x lr to 0
            opt.param_groups[-1]["lr"] = DELAY_LR_SCALE * args.lr * 0.5 * (1 + math.cos(math.pi * epoch / args.epochs))
        perm = torch.randperm(args.train).to(args.device)
        for b in range(batches):
            idx = perm[b * args.batch:(b + 1) * args.batch]
            functional.reset_net(net)
            loss = nn.functional.cross_entropy(net(xtr[:, idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if sched is not None:
            sched.step()
    return evaluate(net, xte, yte), time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", choices=tuple(SETS), default="grid", help="grid (the table in the docs) or unseen")
    p.add_argument("--rows", default=None, help="comma-separated row names of the set (default: all)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated among {', '.join(VARIANTS)}")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--train", type=int, default=2048)
    p.add_argument("--test", type=int, default=1024)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate of the weights")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the networks and data are moved there)")
    p.add_argument("--path", default="dense", choices=("dense", "auto", "sparse"),
                   help="the delay layer's path (DelayedLinear(path=...)); the docs' tables: dense")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs in parallel, one process each (default: min(2, CPUs) on cpu, 1 on cuda)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (1: fastest for these tiny nets)")
    args = p.parse_args()
    rows = SETS[args.set]
    names = list(rows) if args.rows is None else [n.strip() for n in args.rows.split(",")]
    unknown = [n for n in names if n not in rows]
    if unknown:
        p.error(f"--rows {unknown} not in --set {args.set}: {list(rows)}")
    variants = [v.strip() for v in args.variants.split(",")]
    if any(v not in VARIANTS for v in variants):
        p.error(f"--variants {variants}: expected names among {list(VARIANTS)}")
    jobs = args.jobs or (min(2, os.cpu_count() or 1) if args.device == "cpu" else 1)
    print(f"# {args.set}: {len(names)} rows x {args.seeds} seeds x {len(variants)} variants, {args.epochs} epochs, "
          f"{jobs} jobs x {args.threads} thread(s), device {args.device}, delay path {args.path}, "
          f"DCLSZOO_BACKEND={os.environ.get('DCLSZOO_BACKEND', 'auto')}, torch {torch.__version__}", flush=True)
    todo = [(n, v, s) for n in names for v in variants for s in range(args.seeds)]
    results: dict[tuple[str, str, int], tuple[float, float]] = {}
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run, rows[n], v, s, args): (n, v, s) for n, v, s in todo}
        for fut in cf.as_completed(futures):
            n, v, s = futures[fut]
            results[n, v, s] = fut.result()
            print(f"{n:>50s} | {VARIANTS[v]:>19s} | seed {s}: {results[n, v, s][0]:.3f} "
                  f"({results[n, v, s][1]:.0f} s)", flush=True)
    wall = time.perf_counter() - t0
    print("\nTest accuracy per seed (integer delays), min in bold; chance = 1 / classes.\n")
    print("| task variant | chance | " + " | ".join(VARIANTS[v] for v in variants) + " |")
    print("|---|---|" + "---|" * len(variants))
    for n in names:
        cells = []
        for v in variants:
            accs = [results[n, v, s][0] for s in range(args.seeds)]
            cells.append(", ".join(f"{a:.3f}" for a in accs) + f" (**{min(accs):.3f}**)")
        label = n if args.set == "unseen" else f"{n}: {describe(rows[n])}"
        chance = 1 / rows[n].get("classes", BASE["classes"])
        print(f"| {label} | {chance:.2f} | " + " | ".join(cells) + " |")
    cpu = sum(sec for _, sec in results.values())
    print(f"\n{len(todo)} runs: {cpu / len(todo):.0f} s per run, {wall / 60:.1f} min wall time with {jobs} jobs")


if __name__ == "__main__":
    main()
