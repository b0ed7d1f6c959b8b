"""Fine-tune a transformers audio classifier with DCLS convolutions on an offline synthetic task, with accelerate.

    python examples/finetune_audio.py                       # wav2vec2-style model, ~2-4 min on 2 CPU cores
    python examples/finetune_audio.py --arch spectrogram    # DCLS-Audio: log-mel + DCLS ConvNeXt (from scratch)
    accelerate launch examples/finetune_audio.py ...        # the same on GPUs / several processes

What it does:

1. Writes a small "pretrained" dense checkpoint itself (``--arch wav2vec2``: a tiny
   ``Wav2Vec2ForSequenceClassification`` saved with ``save_pretrained``; nothing is downloaded) -- or pass
   ``--model DIR_OR_ID`` for a real one.
2. Loads it with ``AutoModelForAudioClassification`` and patches it: ``dclszoo.patch(model, DclsConfig(span=...))``
   turns the positional convolution into a DCLS convolution (function-preserving; the model becomes the registered
   ``wav2vec2_dcls`` type). ``--arch spectrogram`` builds :class:`SpectrogramDclsForAudioClassification` instead.
3. Fine-tunes on :class:`dclszoo.tasks.AudioEventTask` (tones, chirps, noise bursts, double beeps) with accelerate;
   DCLS positions (and sigma) are in their own parameter group (``--position-lr-scale`` x the learning rate, no
   weight decay), and are clamped into their span after every optimizer step by dclszoo itself.
4. Saves with ``save_pretrained`` (+ the feature extractor), reloads with ``AutoModelForAudioClassification`` after
   ``dclszoo.enable()``, checks the reloaded model gives the same logits, and reports test accuracy -- also through
   ``pipeline("audio-classification", model=DIR)``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

import dclszoo
from dclszoo import DclsConfig, DclsConvNd
from dclszoo.tasks import AudioEventTask, tiny_wav2vec2_checkpoint
from dclszoo.training import param_groups  # positions / sigma: their own group, scaled LR, no weight decay

SAMPLE_RATE = 16000


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=("wav2vec2", "spectrogram"), default="wav2vec2")
    p.add_argument("--model", default=None, help="dense transformers checkpoint (dir or Hub id) to patch instead of "
                                                 "the tiny one this script writes (--arch wav2vec2)")
    p.add_argument("--out", default="runs/finetune_audio", help="output directory")
    p.add_argument("--span", type=int, default=0, help="DCLS span of the patched convolutions (0: 2x kernel)")
    p.add_argument("--train", type=int, default=600, help="training clips")
    p.add_argument("--test", type=int, default=250, help="test clips")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--position-lr-scale", type=float, default=5.0, help="position LR = this x --lr (DCLS-Audio: 5)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if an accelerator is present")
    p.add_argument("--mixed-precision", default="no", choices=("no", "bf16", "fp16"))
    return p.parse_args(argv)


def build_model(args, task: AudioEventTask, out: Path):
    from transformers import AutoModelForAudioClassification

    if args.arch == "spectrogram":
        from dclszoo.plugins.hf_audio import SpectrogramDclsConfig, SpectrogramDclsForAudioClassification

        config = SpectrogramDclsConfig(  # DCLS-Audio's Gaussian 26 taps in 23x23; a small ConvNeXt for a CPU
            backbone="convnext_atto", backbone_kwargs=dict(depths=(2, 2, 2, 2), dims=(16, 32, 48, 64)), n_mels=64,
            num_labels=task.classes, id2label=task.id2label, label2id=task.label2id)
        return SpectrogramDclsForAudioClassification(config), None
    source = args.model or tiny_wav2vec2_checkpoint(out / "pretrained-dense", task)
    model = AutoModelForAudioClassification.from_pretrained(
        source, num_labels=task.classes, id2label=task.id2label, label2id=task.label2id,
        ignore_mismatched_sizes=args.model is not None)
    kernel = model.config.num_conv_pos_embeddings
    span = args.span or 2 * kernel
    report = dclszoo.patch(model, DclsConfig(span=span))  # positional conv -> DCLS, same function
    return model, report


@torch.no_grad()
def evaluate(model, loader, accelerator=None) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        logits = model(input_values=x).logits
        if accelerator is not None:
            logits, y = accelerator.gather_for_metrics((logits, y))
        correct += int((logits.argmax(-1) == y).sum())
        total += y.numel()
    return correct / max(total, 1)


def main(argv=None) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import AutoModelForAudioClassification, Wav2Vec2FeatureExtractor, pipeline

    args = parse_args(argv)
    dclszoo.enable()  # registers the DCLS model types with the Auto classes
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision)
    set_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task = AudioEventTask(sample_rate=SAMPLE_RATE, classes=5)
    x_train, y_train = task.sample(args.train, seed=args.seed + 1)
    x_test, y_test = task.sample(args.test, seed=args.seed + 2)

    with accelerator.main_process_first():
        model, report = build_model(args, task, out)
    if report is not None:
        accelerator.print(report)
    n_dcls = sum(isinstance(m, DclsConvNd) for m in model.modules())
    accelerator.print(f"{type(model).__name__}: {sum(p.numel() for p in model.parameters()):,} parameters, "
                      f"{n_dcls} DCLS layer(s)")

    # patch before building the optimizer and before prepare()
    optimizer = torch.optim.AdamW(param_groups(model, args.lr, args.position_lr_scale, args.weight_decay))
    accelerator.print("param groups:", {g["name"]: (len(g["params"]), g["lr"], g["weight_decay"])
                                        for g in optimizer.param_groups})
    train_loader = DataLoader(TensorDataset(x_train, y_train), batch_size=args.batch_size, shuffle=True,
                              generator=torch.Generator().manual_seed(args.seed))
    test_loader = DataLoader(TensorDataset(x_test, y_test), batch_size=64)
    steps = args.epochs * math.ceil(args.train / args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                                    total_steps=max(steps, 1), pct_start=0.15)
    model, optimizer, train_loader, test_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, test_loader, scheduler)

    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        total = 0.0
        for x, y in train_loader:
            loss = model(input_values=x, labels=y).loss
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            total += float(loss.detach())
        accelerator.print(f"epoch {epoch + 1}/{args.epochs}: train loss {total / len(train_loader):.3f}, "
                          f"test accuracy {evaluate(model, test_loader, accelerator):.3f} "
                          f"({time.time() - start:.0f} s)")
    accuracy = evaluate(model, test_loader, accelerator)

    # save in Hub format, reload through the Auto class, check the function, evaluate again
    save_dir = out / "dcls-model"
    accelerator.wait_for_everyone()
    trained = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        trained.save_pretrained(save_dir)
        Wav2Vec2FeatureExtractor(sampling_rate=SAMPLE_RATE, do_normalize=False).save_pretrained(save_dir)
    accelerator.wait_for_everyone()
    reloaded = AutoModelForAudioClassification.from_pretrained(save_dir).to(accelerator.device).eval()
    probe = x_test[:8].to(accelerator.device)
    with torch.no_grad():
        diff = float((reloaded(input_values=probe).logits.float() - trained.eval()(input_values=probe).logits.float())
                     .abs().max())
    reloaded_accuracy = evaluate(reloaded, [(x.to(accelerator.device), y.to(accelerator.device))
                                            for x, y in DataLoader(TensorDataset(x_test, y_test), batch_size=64)])
    classifier = pipeline("audio-classification", model=str(save_dir), device=accelerator.device)
    predictions = [classifier({"raw": x.numpy(), "sampling_rate": SAMPLE_RATE}, top_k=1)[0]["label"]
                   for x in x_test[:32]]
    hits = sum(p == task.id2label[int(y)] for p, y in zip(predictions, y_test[:32]))
    result = {"arch": args.arch, "model_type": reloaded.config.model_type, "reloaded_class": type(reloaded).__name__,
              "test_accuracy": accuracy, "reloaded_test_accuracy": reloaded_accuracy,
              "reload_max_abs_logit_diff": diff, "pipeline_accuracy_32": hits / 32, "chance": 1 / task.classes,
              "train_seconds": round(time.time() - start, 1), "saved_to": str(save_dir)}
    accelerator.print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
