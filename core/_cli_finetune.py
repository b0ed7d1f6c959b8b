"""``dclszoo finetune [--recipe NAME]``: train a DCLS / delay model beside its plain twin, save, reload, check.

Recipes (one module each; every one runs offline on a CPU in minutes):

- ``digits`` (default, :mod:`dclszoo._cli_digits`): timm ConvNeXt-atto with DCLS on scikit-learn's digits;
- ``delays`` (:mod:`dclszoo._cli_delays`): learnable synaptic delays on the timing task (SpikingJelly);
- ``audio`` (:mod:`dclszoo._cli_audio`): a transformers Wav2Vec2 classifier with DCLS on synthetic audio events.

A recipe's ``run(args, accelerator, out)`` returns a result dict (``title``, ``runs``: label -> test accuracy,
parameters, steps, seconds; ``reload``: directory, max logit difference, accuracy; ``settings``; ``chance``); this
module prints it, writes ``results.json`` and fails (exit 1) if the reloaded model's outputs differ.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path

from ._cli_common import CliError, format_table, info
from ._cli_train import MAX_STEPS_ENV, choose_threads, make_accelerator, max_steps_default

__all__ = ["add_arguments", "run", "RECIPES"]

RECIPES = {
    "digits": ("dclszoo._cli_digits", "timm ConvNeXt-atto with / without DCLS on scikit-learn's handwritten digits"),
    "delays": ("dclszoo._cli_delays", "SpikingJelly network with / without learnable delays on the timing task"),
    "audio": ("dclszoo._cli_audio", "transformers Wav2Vec2 classifier with / without DCLS on synthetic audio events"),
}

DESCRIPTION = """\
Fine-tune a model with DCLS convolutions (or learnable delays) beside the same model without them, with
accelerate (CPU, one GPU, or `accelerate launch` for several), print both test accuracies, save the DCLS model in
Hub format (dclszoo.save_pretrained), reload it and check that it gives the same outputs.

With no arguments: the digits recipe, offline, a few minutes on 2 CPU cores.
"""

EPILOG = "recipes:\n" + "\n".join(f"  {name:<8}{text}" for name, (_, text) in RECIPES.items()) + f"""

Unset options take the recipe's defaults. ${MAX_STEPS_ENV} sets the default of --max-steps (smoke tests).
Datasets you download yourself (SHD via tonic, ImageNet-style folders): see docs/recipes.md.

examples:
  dclszoo finetune
  dclszoo finetune --recipe delays
  dclszoo finetune --recipe audio --no-baseline --epochs 2
"""

_RECIPE_OPTIONS = {  # options that only some recipes read
    "model": ("digits", "audio"), "span": ("digits", "audio"), "kernel_count": ("digits", "audio"),
    "interpolation": ("digits", "audio"), "image_size": ("digits",), "hidden": ("delays",),
}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an int") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} is not > 0")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", choices=sorted(RECIPES), default="digits", help="what to train (default: digits)")
    p.add_argument("--out", default=None, metavar="DIR", help="output directory (default runs/<recipe>)")
    p.add_argument("--epochs", type=_positive_int, default=None)
    p.add_argument("--max-steps", type=_positive_int, default=None, metavar="N",
                   help=f"stop each training run after N optimizer steps (default ${MAX_STEPS_ENV} or none)")
    p.add_argument("--batch-size", type=_positive_int, default=None)
    p.add_argument("--lr", type=_positive_float, default=None, help="base learning rate (DCLS positions: 5x; "
                                                                    "delays: 0.5 x sigma; no weight decay on them)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-baseline", action="store_true", help="train only the DCLS / delay model")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even if a GPU is present")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="CPU threads (default: torch's, fewer when the load average shows busy cores)")
    p.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    g = p.add_argument_group("model options (recipe digits / audio)")
    g.add_argument("--model", default=None, help="digits: a timm architecture (default convnext_atto); audio: a dense "
                                                 "transformers audio classifier, directory or cached Hub id")
    g.add_argument("--span", type=_positive_int, default=None, help="DCLS span (digits: 11; audio: 2x the kernel)")
    g.add_argument("--kernel-count", type=_positive_int, default=None, help="taps per filter (default: every weight of "
                                                                           "the dense kernel, an exact conversion)")
    g.add_argument("--interpolation", choices=("bilinear", "gauss"), default=None)
    g.add_argument("--image-size", type=_positive_int, default=None, help="digits: upscaled image size (default 64)")
    g.add_argument("--hidden", type=_positive_int, default=None, help="delays: hidden neurons (default 8)")


def check_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """A usage error (exit 2) for an option the chosen recipe does not read."""
    for option, recipes in _RECIPE_OPTIONS.items():
        if getattr(args, option) is not None and args.recipe not in recipes:
            parser.error(f"--{option.replace('_', '-')} applies to --recipe {' / '.join(recipes)}, not {args.recipe}")


def _report(result: dict, elapsed: float, out: Path) -> None:
    runs = result["runs"]
    info("")
    info(f"{result['title']} (chance {result['chance']:.2f}):")
    info(format_table(["model", "parameters", "test accuracy", "steps", "train time"],
                      [[label, f"{r['parameters']:,}", f"{r['test_accuracy']:.3f}", r["steps"], f"{r['seconds']:.0f} s"]
                       for label, r in runs.items()]))
    reload = result["reload"]
    info(f"saved to {reload['directory']}/ (Hub format: dclszoo.from_pretrained / push_to_hub); reloaded: max "
         f"|logit difference| {reload['max_abs_logit_diff']:.3g}, test accuracy {reload['test_accuracy']:.3f}")
    info(f"results in {out / 'results.json'}; total {elapsed:.0f} s. Next: dclszoo inspect {reload['directory']}")


def run(args: argparse.Namespace) -> int:
    import torch

    if args.max_steps is None:
        args.max_steps = max_steps_default()
    out = Path(args.out) if args.out else Path("runs") / args.recipe
    module = importlib.import_module(RECIPES[args.recipe][0])
    began = time.perf_counter()
    threads, why = choose_threads(args.threads)
    torch.set_num_threads(threads)
    accelerator = make_accelerator(args.cpu, args.mixed_precision)
    where = str(accelerator.device)
    if accelerator.device.type == "cpu":
        where += f", {threads} thread{'s' if threads > 1 else ''} ({why})"
    info(f"dclszoo finetune --recipe {args.recipe}: on {where}; output in {out}/")
    out.mkdir(parents=True, exist_ok=True)
    result = module.run(args, accelerator, out)
    elapsed = time.perf_counter() - began
    result["seconds"] = elapsed
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    _report(result, elapsed, out)
    if result["reload"]["max_abs_logit_diff"] != 0.0:
        raise CliError(f"the model reloaded from {result['reload']['directory']} gives different outputs "
                       f"(max |diff| {result['reload']['max_abs_logit_diff']:.3g}).")
    return 0
