"""Fine-tune a patched model with accelerate: mixed precision, gradient accumulation, tqdm, checkpoint / resume.

One process (CPU or one GPU), or several with DDP, same script::

    python examples/finetune_accelerate.py --model convnext --steps 40 --mixed-precision bf16
    accelerate launch --cpu --num_processes 2 examples/finetune_accelerate.py --model convnext --steps 40
    python examples/finetune_accelerate.py --steps 80 --resume        # continue from runs/finetune/checkpoint

Models (small, on synthetic data so the script runs anywhere without downloads):

- ``convnext``: a small timm ConvNeXt whose depthwise 7x7 convolutions become DCLS (``pip install dclszoo[timm]``);
- ``snn``: a SpikingJelly network with learnable synaptic delays on the timing task (``dclszoo[snn]``; shows the
  loop with a sigma schedule; the task itself needs far more steps than a smoke run);
- ``cnn``: a plain torch CNN (the generic patch, no zoo needed).

What the library does here: ``dclszoo.patch`` before the optimizer and ``prepare`` (no unused dense weights
left for DDP), ``dclszoo.training.param_groups`` (positions / delays at their own learning rate, no weight decay),
automatic position clamping after every optimizer step (through accelerate's wrapped optimizer), the sigma
schedule and a ``Progress`` counter registered for checkpointing (``save_state`` / ``load_state`` resume
exactly), ``finalize`` and ``dclszoo.save_pretrained`` at the end. ``--report`` writes, per process, the losses
and a digest of the final parameters (the 2-process test checks that the replicas are identical).

FSDP (v1) needs ``use_orig_params=True`` for the separate parameter groups (``fsdp_use_orig_params: true``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import dclszoo
from dclszoo.training import Progress, SigmaSchedule, finalize, needs_find_unused_parameters, param_groups

CLASSES = 4


# --------------------------------------------------------------------------- models and data


def image_data(n: int, seed: int, size: int = 32) -> torch.utils.data.TensorDataset:
    """Class k = a bright bar at orientation k * 45 degrees, at a random offset, in noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % CLASSES
    r = torch.arange(size, dtype=torch.float32) - size / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    angle = y.float() * math.pi / CLASSES
    shift = torch.randint(-6, 7, (n,), generator=g).float()
    sin, cos = torch.sin(angle)[:, None, None], torch.cos(angle)[:, None, None]
    dist = xx[None] * sin - yy[None] * cos - shift[:, None, None]
    bars = torch.exp(-0.5 * dist ** 2)
    x = bars[:, None].expand(n, 3, size, size) + 0.5 * torch.randn(n, 3, size, size, generator=g)
    return torch.utils.data.TensorDataset(x.contiguous(), y)


def timing_data(n: int, seed: int):
    from dclszoo.tasks import TimingTask

    x, y = TimingTask(channels=6, classes=CLASSES, spacing=2, steps=24).sample(n, seed=seed)
    return torch.utils.data.TensorDataset(x.transpose(0, 1).contiguous(), y)  # [n, T, C]: batched by the loader


class SpikingNet(nn.Module):
    """Synapses with delays -> LIF -> readout summed over time (input [N, T, C], batch first for the loader)."""

    def __init__(self, channels: int = 6, hidden: int = 16, max_delay: int = 12) -> None:
        super().__init__()
        from spikingjelly.activation_based import layer, neuron, surrogate

        self.syn = layer.Linear(channels, hidden, step_mode="m")
        self.lif = neuron.LIFNode(tau=1.01, decay_input=False, surrogate_function=surrogate.ATan(alpha=5.0),
                                  detach_reset=True, step_mode="m")
        self.readout = nn.Linear(hidden, CLASSES)
        self.max_delay = max_delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from spikingjelly.activation_based import functional

        functional.reset_net(self)
        return self.readout(self.lif(self.syn(x.transpose(0, 1)))).sum(0)


def build(name: str, seed: int):
    """``(patched model, train dataset)``, the model patched before any optimizer or ``prepare`` sees it."""
    torch.manual_seed(seed)
    if name == "convnext":
        import timm

        model = timm.create_model("convnext_atto", num_classes=CLASSES, depths=(1, 1, 1, 1), dims=(16, 24, 32, 40))
        with warnings.catch_warnings():  # from scratch: 16 taps cannot hold the random 7x7 kernels, no matter
            warnings.filterwarnings("ignore", message=".*does not represent the dense kernel")
            dclszoo.patch(model, dclszoo.DclsConfig(kernel_count=16, span=9, interpolation="gauss"))
        return model, image_data(512, seed)
    if name == "cnn":
        model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GELU(), nn.Conv2d(16, 16, 7, padding=3, groups=16),
                              nn.BatchNorm2d(16), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(16, CLASSES))
        dclszoo.patch(model, dclszoo.DclsConfig(span=11))
        return model, image_data(512, seed)
    if name == "snn":
        model = SpikingNet()
        dclszoo.patch(model, dclszoo.DelayConfig(max_delay=model.max_delay))
        return model, timing_data(512, seed)
    raise ValueError(f"--model {name!r}: expected convnext, cnn or snn.")


def digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- training


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="convnext", choices=["convnext", "cnn", "snn"])
    p.add_argument("--steps", type=int, default=40, help="optimizer steps in total (a resumed run continues to it)")
    p.add_argument("--batch-size", type=int, default=16, help="per process and micro-batch")
    p.add_argument("--grad-accum", type=int, default=2, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--mixed-precision", default="bf16", choices=["no", "bf16", "fp16"])
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even when a GPU is there")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", type=Path, default=Path("runs/finetune"))
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N optimizer steps (0: at the end)")
    p.add_argument("--stop-after", type=int, default=0, help="stop (and checkpoint) after N steps of this run")
    p.add_argument("--resume", action="store_true", help="load output-dir/checkpoint first")
    p.add_argument("--report", type=Path, default=None, help="write per-process losses and a parameter digest here")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
    from tqdm.auto import tqdm

    args = parse_args(argv)
    model, data = build(args.model, args.seed)
    schedule = (SigmaSchedule(model, total_steps=args.steps, decay_fraction=0.5, start=4.0, floor=0.5)
                if args.model == "snn" else None)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.grad_accum, cpu=args.cpu,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        kwargs_handlers=[DistributedDataParallelKwargs(
            find_unused_parameters=needs_find_unused_parameters(model, schedule))],
    )
    launched_cpu = os.environ.get("ACCELERATE_USE_CPU") == "True" and "MASTER_PORT" in os.environ
    if accelerator.num_processes == 1 and launched_cpu:
        warnings.warn("`accelerate launch --cpu --num_processes N` started one process (accelerate 1.16 starts "
                      "several CPU processes only through mpirun); for CPU DDP use `accelerate launch --multi_gpu "
                      "--num_processes N examples/finetune_accelerate.py --cpu`.", stacklevel=1)
    optimizer = torch.optim.AdamW(param_groups(model, lr=args.lr, weight_decay=args.weight_decay))
    # accelerate steps a prepared scheduler once per process per optimizer step: count in those units
    lr_sched = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], pct_start=0.1,
        total_steps=args.steps * accelerator.num_processes + 1)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(args.seed))
    model, optimizer, loader, lr_sched = accelerator.prepare(model, optimizer, loader, lr_sched)
    progress = Progress()
    accelerator.register_for_checkpointing(progress, *([schedule] if schedule is not None else []))
    checkpoint = args.output_dir / "checkpoint"
    if args.resume:
        accelerator.load_state(checkpoint)

    losses: list[float] = []
    start = progress.step
    bar = tqdm(total=args.steps, initial=start, desc=f"{args.model} {args.mixed_precision}",
               disable=args.no_progress or not accelerator.is_local_main_process)
    window: list[torch.Tensor] = []
    began = time.perf_counter()
    while progress.step < args.steps:
        loader.set_epoch(progress.epoch)
        batches = accelerator.skip_first_batches(loader, progress.batch) if progress.batch else loader
        for x, y in batches:
            with accelerator.accumulate(model):
                loss = F.cross_entropy(model(x), y)
                accelerator.backward(loss)
                optimizer.step()
                lr_sched.step()
                optimizer.zero_grad()
            progress.batch += 1
            window.append(loss.detach().float())
            if not accelerator.sync_gradients:
                continue
            progress.step += 1
            if schedule is not None:
                schedule.step()
            step_loss = accelerator.gather(torch.stack(window).mean()).mean().item()  # mean over processes
            window.clear()
            losses.append(step_loss)
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}")
            done = progress.step >= args.steps or (args.stop_after and progress.step - start >= args.stop_after)
            if done or (args.save_every and progress.step % args.save_every == 0):
                accelerator.save_state(checkpoint)
            if done:
                break
        else:
            progress.epoch, progress.batch = progress.epoch + 1, 0
            continue
        break
    bar.close()
    seconds = time.perf_counter() - began
    samples = (progress.step - start) * args.grad_accum * args.batch_size * accelerator.num_processes

    accelerator.wait_for_everyone()
    trained = accelerator.unwrap_model(model)
    result = {"rank": accelerator.process_index, "world": accelerator.num_processes, "losses": losses,
              "digest": digest(trained), "step": progress.step, "samples_per_s": samples / max(seconds, 1e-9),
              "device": str(accelerator.device)}
    accelerator.print(f"{args.model} on {accelerator.num_processes} x {accelerator.device} "
                      f"({args.mixed_precision}): {result['samples_per_s']:.1f} samples/s over {progress.step - start} "
                      f"steps; final loss {losses[-1] if losses else float('nan'):.3f}")
    if args.report is not None:
        args.report.mkdir(parents=True, exist_ok=True)
        (args.report / f"rank{accelerator.process_index}.json").write_text(json.dumps(result))
    if progress.step >= args.steps and accelerator.is_main_process:
        dclszoo.save_pretrained(finalize(trained), args.output_dir / "model")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


if __name__ == "__main__":
    main()
