"""Timing task: the same small SNN trained with no delays, fixed random delays and learned delays.

Network: DelayedLinear(channels -> hidden, max_delay) -> LIF (tau ~ 1, no memory to speak of) -> Linear(hidden ->
classes), logits = sum over time of the readout. Evaluation always uses integer delays. Prints the per-seed
test accuracies and the median per variant as a markdown table.

    python bench/timing_task.py                 # 3 seeds, the table in docs/timing_task.md
    python bench/timing_task.py --seeds 1 --epochs 10   # quick look
    python bench/timing_task.py --device cuda   # the same on a GPU (Triton delay kernels where the path is sparse)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, neuron, surrogate

from dclszoo import DelayedLinear
from dclszoo.delays_training import SigmaSchedule, delay_param_groups, integer_delays
from dclszoo.tasks import TimingTask

VARIANTS = ("no delays", "fixed random delays", "learned delays")


class Net(nn.Module):
    def __init__(self, task: TimingTask, hidden: int, variant: str, path: str = "dense") -> None:
        super().__init__()
        max_delay = 1 if variant == "no delays" else task.max_delay_needed
        self.syn = DelayedLinear(task.channels, hidden, max_delay, sigma=0.0 if variant != "learned delays" else None,
                                 path=path)
        if variant == "fixed random delays":
            with torch.no_grad():
                self.syn.delays.copy_(torch.randint(0, max_delay, self.syn.delays.shape).float())
            self.syn.delays.requires_grad_(False)
        if variant == "no delays":
            self.syn.delays.requires_grad_(False)
        self.lif = neuron.LIFNode(tau=1.01, decay_input=False, v_threshold=1.0,
                                  surrogate_function=surrogate.ATan(alpha=5.0), detach_reset=True, step_mode="m")
        self.readout = nn.Linear(hidden, task.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.lif(self.syn(x))).sum(0)


def evaluate(net: Net, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    with torch.no_grad(), integer_delays(net):
        functional.reset_net(net)
        acc = (net(x).argmax(-1) == y).float().mean().item()
    net.train()
    return acc


def run(variant: str, seed: int, args) -> float:
    task = TimingTask(channels=args.channels, classes=args.classes, spacing=args.spacing, steps=args.steps,
                      noise=args.noise, pattern_seed=seed)
    xtr, ytr = (t.to(args.device) for t in task.sample(args.train, seed=1000 + seed))
    xte, yte = (t.to(args.device) for t in task.sample(args.test, seed=2000 + seed))
    torch.manual_seed(seed)
    net = Net(task, args.hidden, variant, args.path).to(args.device)
    opt = torch.optim.Adam(delay_param_groups(net, lr=args.lr, delay_lr=args.delay_lr))
    batches = (args.train + args.batch - 1) // args.batch
    sched = SigmaSchedule(net, args.epochs, decay_fraction=0.5, hard_fraction=0.2) if variant == "learned delays" else None
    for _ in range(args.epochs):
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
    return evaluate(net, xte, yte)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--channels", type=int, default=12)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--spacing", type=int, default=2)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--noise", type=float, default=0.05)
    p.add_argument("--hidden", type=int, default=8)
    p.add_argument("--train", type=int, default=2048)
    p.add_argument("--test", type=int, default=1024)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--delay-lr", type=float, default=1.0)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--path", default="dense", help="delay path; the layers are tiny, so the dense conv is fastest")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the networks and data are moved there)")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    for variant in [v.strip() for v in args.variants.split(",")]:
        accs, t0 = [], time.perf_counter()
        for seed in range(args.seeds):
            accs.append(run(variant, seed, args))
            print(f"{variant:>20s} seed {seed}: test accuracy {accs[-1]:.3f}", flush=True)
        rows.append((variant, accs, (time.perf_counter() - t0) / args.seeds))
    print(f"\nchance = {1 / args.classes:.3f}\n")
    print(f"| variant | test accuracy per seed | median | {args.device.upper()} time per run |")
    print("|---|---|---|---|")
    for variant, accs, secs in rows:
        per = ", ".join(f"{a:.3f}" for a in accs)
        print(f"| {variant} | {per} | **{statistics.median(accs):.3f}** | {secs:.0f} s |")


if __name__ == "__main__":
    main()
