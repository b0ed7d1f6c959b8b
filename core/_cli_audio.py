"""``dclszoo finetune --recipe audio``: a transformers audio classifier with DCLS on an offline synthetic task.

The task (:class:`dclszoo.tasks.AudioEventTask`): half-second 16 kHz clips with one event each -- a tone, a chirp
up, a chirp down, a noise burst or a double beep -- at a random time. The model: a small dense
``Wav2Vec2ForSequenceClassification`` that the recipe writes itself in Hub format (the "pretrained" checkpoint;
nothing can be downloaded offline), or ``--model DIR_OR_ID`` for a real one (cached). It is loaded through
``AutoModelForAudioClassification`` and patched with the hf_audio plugin (the positional convolution becomes a
DCLS convolution with twice its kernel as span: the same function at the start), fine-tuned beside the dense
model, saved (dclszoo checkpoint + transformers' config.json and feature extractor, so the Auto classes and
``pipeline`` read it too), reloaded and checked.
"""

from __future__ import annotations

import copy

from pathlib import Path

import torch

from ._cli_common import CliError, count_params, info, require
from ._cli_train import TrainSettings, evaluate, fit, reload_report

__all__ = ["run", "DEFAULTS", "tiny_dense_checkpoint"]

DEFAULTS = dict(epochs=8, batch_size=32, lr=4e-3, train=480, test=240)
SAMPLE_RATE = 16000


def tiny_dense_checkpoint(directory: Path, task) -> Path:
    """The task's small dense Wav2Vec2 classifier (seeded: the same every run) and its feature extractor, saved
    with ``save_pretrained`` (what a downloaded model looks like)."""
    from transformers import Wav2Vec2FeatureExtractor

    from .tasks import tiny_wav2vec2_checkpoint

    torch.manual_seed(0)
    tiny_wav2vec2_checkpoint(directory, task)
    Wav2Vec2FeatureExtractor(sampling_rate=SAMPLE_RATE, do_normalize=False).save_pretrained(directory)
    return directory


def _forward(model, x):
    return model(input_values=x).logits


def _loss(model, batch):
    x, y = batch
    return model(input_values=x, labels=y).loss


def run(args, accelerator, out: Path) -> dict:
    transformers = require("transformers", "the audio recipe")
    import dclszoo
    from .config import DclsConfig
    from .tasks import AudioEventTask
    from .training import finalize

    dclszoo.enable()  # registers the <model_type>_dcls classes with the Auto classes
    task = AudioEventTask(sample_rate=SAMPLE_RATE)
    x_train, y_train = task.sample(DEFAULTS["train"], seed=args.seed + 1)
    x_test, y_test = task.sample(DEFAULTS["test"], seed=args.seed + 2)
    source = args.model or str(tiny_dense_checkpoint(out / "pretrained-dense", task))
    labels = dict(num_labels=task.classes, id2label=task.id2label, label2id=task.label2id)
    auto = transformers.AutoModelForAudioClassification
    try:
        dense = auto.from_pretrained(source, ignore_mismatched_sizes=args.model is not None, **labels)
    except (OSError, ValueError) as exc:
        raise CliError(f"--model {source!r}: could not load it as an audio classifier: {exc}") from None
    model = copy.deepcopy(dense)  # the same initial weights (a new head is initialised randomly)
    kernel = getattr(model.config, "num_conv_pos_embeddings", None)
    span = args.span or (2 * kernel if kernel else None)
    config = DclsConfig(span=span, kernel_count=args.kernel_count, interpolation=args.interpolation or "bilinear")
    try:
        report = dclszoo.patch(model, config)
    except ValueError as exc:
        raise CliError(f"cannot patch {source!r}: {exc}") from None
    info(f"data: dclszoo.tasks.AudioEventTask ({', '.join(task.id2label.values())}): {len(y_train)} train / "
         f"{len(y_test)} test clips of {task.duration} s at {SAMPLE_RATE} Hz")
    info(f"model: {type(dense).__name__} from {source}, {count_params(dense):,} parameters dense; DCLS: "
         f"{', '.join(r.name for r in report.replaced)} (span {span}, {config.interpolation})")
    settings = TrainSettings.from_args(args, DEFAULTS, weight_decay=0.01)
    data = torch.utils.data.TensorDataset(x_train, y_train)
    runs: dict[str, dict] = {}
    for label, net in ([("DCLS", model)] if args.no_baseline else [("dense", dense), ("DCLS", model)]):
        torch.manual_seed(args.seed)
        trained, stats = fit(net, data, _loss, settings, accelerator, desc=label)
        accuracy, logits = evaluate(trained, x_test, y_test, _forward, batch_size=64)
        runs[label] = {"test_accuracy": accuracy, "parameters": count_params(trained), **stats}
    model = finalize(trained)

    save_dir = out / "model"
    dclszoo.save_pretrained(model, save_dir)
    if not (save_dir / "config.json").exists():  # transformers' own files: the Auto classes and pipeline read them
        model.config.save_pretrained(save_dir)
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=SAMPLE_RATE, do_normalize=False).save_pretrained(save_dir)
    from ._cli_load import load_checkpoint

    reloaded, _ = load_checkpoint(str(save_dir))
    return {
        "title": "transformers audio classifier on AudioEventTask",
        "runs": runs,
        "reload": reload_report(save_dir, reloaded, logits, x_test, y_test, _forward, batch_size=64),
        "settings": {"model": source, "dcls": config.to_dict(), "epochs": settings.epochs,
                     "batch_size": settings.batch_size, "lr": settings.lr},
        "chance": 1 / task.classes,
    }
