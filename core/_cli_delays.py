"""``dclszoo finetune --recipe delays``: learnable synaptic delays on the timing task, with the library's recipe.

The task (:class:`dclszoo.tasks.TimingTask`, default settings): every class fires the same channels once each, in
a class-specific order; a network without delays that sums its readout over time is at chance by construction.
The network (:class:`dclszoo._cli_models.TimingSNN`): SpikingJelly ``layer.Linear`` -> LIF (tau ~ 1) -> linear
readout summed over time. The recipe is the library's: ``dclszoo.patch(net, DelayConfig(max_delay=...))`` on the
input synapses, :func:`dclszoo.training.param_groups` (each delay module's delays in a group of their own, no weight decay),
:class:`dclszoo.training.SigmaSchedule` with its defaults (stepped per epoch; given the optimizer where it drives
the delays' learning rate), evaluation with integer delays, :func:`dclszoo.training.finalize` (rounded delays)
before saving. The same network without delays is trained beside it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F

from ._cli_common import count_params, info, require
from ._cli_train import TrainSettings, evaluate, fit, reload_report

__all__ = ["run", "DEFAULTS"]

DEFAULTS = dict(epochs=60, batch_size=64, lr=1e-2, hidden=8, train=1024, test=512)


def _forward(model, x):  # x: [N, T, C] batches -> the network's [T, N, C]
    return model(x.transpose(0, 1))


def _loss(model, batch):
    x, y = batch
    return F.cross_entropy(_forward(model, x), y)


def run(args, accelerator, out: Path) -> dict:
    require("spikingjelly", "the delays recipe (a SpikingJelly network)")
    import dclszoo
    from ._cli_models import timing_snn
    from .config import DelayConfig
    from .tasks import TimingTask
    from .training import SigmaSchedule, finalize, integer_delays

    task = TimingTask(pattern_seed=args.seed)
    x_train, y_train = task.sample(DEFAULTS["train"], seed=1000 + args.seed)
    x_test, y_test = task.sample(DEFAULTS["test"], seed=2000 + args.seed)
    x_train, x_test = x_train.transpose(0, 1).contiguous(), x_test.transpose(0, 1).contiguous()  # [N, T, C]
    hidden = args.hidden or DEFAULTS["hidden"]
    max_delay = task.max_delay_needed
    info(f"data: dclszoo.tasks.TimingTask ({task.channels} channels, {task.classes} classes, T={task.steps}, "
         f"noise {task.noise}): {len(y_train)} train / {len(y_test)} test sequences; chance {1 / task.classes:.2f}")
    info(f"model: Linear({task.channels}->{hidden}) -> LIF -> Linear({hidden}->{task.classes}), logits summed over "
         f"time; with delays: the input synapses patched with DelayConfig(max_delay={max_delay})")
    settings = TrainSettings.from_args(args, DEFAULTS, weight_decay=0.0)
    data = torch.utils.data.TensorDataset(x_train, y_train)
    runs: dict[str, dict] = {}
    for label in ([] if args.no_baseline else ["no delays"]) + ["delays"]:
        torch.manual_seed(args.seed)
        net = timing_snn(channels=task.channels, hidden=hidden, classes=task.classes)
        on_start = None
        if label == "delays":
            dclszoo.patch(net, DelayConfig(max_delay=max_delay), filter_fn=lambda m, fqn: fqn == "synapses")

            def on_start(optimizer, epochs, net=net):
                sigma = SigmaSchedule(net, total_steps=epochs, optimizer=optimizer)
                return lambda epoch: sigma.step()

        trained, stats = fit(net, data, _loss, settings, accelerator, desc=label, on_start=on_start)
        with integer_delays(trained) if label == "delays" else contextlib.nullcontext():
            accuracy, logits = evaluate(trained, x_test, y_test, _forward)
        runs[label] = {"test_accuracy": accuracy, "parameters": count_params(trained), **stats}
    model = finalize(trained)  # rounded delays: what was evaluated

    save_dir = out / "model"
    dclszoo.save_pretrained(model, save_dir)
    reloaded = dclszoo.from_pretrained(save_dir)
    return {
        "title": "learnable delays on the timing task",
        "runs": runs,
        "reload": reload_report(save_dir, reloaded, logits, x_test, y_test, _forward),
        "settings": {"task": {"channels": task.channels, "classes": task.classes, "steps": task.steps,
                              "noise": task.noise}, "hidden": hidden, "max_delay": max_delay,
                     "epochs": settings.epochs, "batch_size": settings.batch_size, "lr": settings.lr},
        "chance": 1 / task.classes,
    }
