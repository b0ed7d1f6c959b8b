"""``dclszoo finetune`` (recipe ``digits``, the default): a timm ConvNeXt with and without DCLS on real images.

The data: scikit-learn's handwritten digits (1,797 8x8 grey images of 10 digits, shipped inside scikit-learn, so
nothing is downloaded), upscaled to 64x64 and split 80/20 (stratified, fixed seed). The model: ``convnext_atto``
from timm, **randomly initialised** (no pretrained weights can be downloaded offline). Two copies of the same
initial network are trained on the same batches with the same schedule: the dense one, and one whose depthwise 7x7
convolutions were converted to DCLS exactly (49 taps at the grid points of the 7x7 kernel, free to move in an
11x11 span: the same function at step 0), so the only difference is that the taps can move. Both test accuracies
are printed; the DCLS model is saved in Hub format, reloaded and checked to give identical outputs.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from ._cli_common import CliError, count_params, info, require
from ._cli_train import TrainSettings, evaluate, fit, reload_report

__all__ = ["run", "digits_data", "DEFAULTS"]

DEFAULTS = dict(model="convnext_atto", epochs=4, batch_size=64, lr=2e-3, span=11, image_size=64)
SHIFT = 4  # random translation of the training images, pixels (at image_size)


def digits_data(image_size: int, seed: int = 0):
    """``(x_train, y_train, x_test, y_test)``: scikit-learn's digits, ``[N, 1, S, S]`` float32, standardised."""
    require("sklearn", "the digits recipe (scikit-learn's handwritten digits data set)")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    i_train, i_test = train_test_split(range(len(y)), test_size=0.2, stratify=digits.target, random_state=seed)
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    mean, std = x[i_train].mean(), x[i_train].std()
    x = (x - mean) / std
    return x[i_train], y[i_train], x[i_test], y[i_test]


def _shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``SHIFT`` pixels (zero fill): cheap augmentation."""
    n, _, h, w = x.shape
    padded = F.pad(x, (SHIFT, SHIFT, SHIFT, SHIFT), value=float(x.min()))
    dy, dx = (torch.randint(0, 2 * SHIFT + 1, (n,), generator=generator) for _ in range(2))
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]


def _loss(generator: torch.Generator):
    def loss(model, batch):
        x, y = batch
        return F.cross_entropy(model(_shift(x, generator).to(y.device)), y)

    return loss


def _forward(model, x):
    return model(x)


def run(args, accelerator, out: Path) -> dict:
    timm = require("timm", "the digits recipe (a timm ConvNeXt)")
    import dclszoo
    from .config import DclsConfig
    from .training import finalize

    dclszoo.enable()
    # timm notes that its ImageNet mean / std do not fit one grey channel (when saving the config): irrelevant here
    logging.getLogger("timm.data.model_config").setLevel(logging.ERROR)
    name = args.model or DEFAULTS["model"]
    if not timm.is_model(name):
        raise CliError(f"--model {name!r} is not a timm architecture (the digits recipe trains a timm model).")
    size = args.image_size or DEFAULTS["image_size"]
    x_train, y_train, x_test, y_test = digits_data(size, args.seed)
    torch.manual_seed(args.seed)
    dense = timm.create_model(name, pretrained=False, num_classes=10, in_chans=1)
    model = copy.deepcopy(dense)
    config = DclsConfig(span=args.span or DEFAULTS["span"], kernel_count=args.kernel_count,
                        interpolation=args.interpolation or "bilinear")
    report = dclszoo.patch(model, config)
    if not report.replaced:
        raise CliError(f"--model {name!r}: no depthwise convolution to convert; pick a ConvNeXt, MobileNet, "
                       f"EfficientNet, ConvFormer or EdgeNeXt.")
    kernels = sorted({"x".join(map(str, dense.get_submodule(r.name).kernel_size)) for r in report.replaced})
    info(f"data: scikit-learn's handwritten digits, 8x8 upscaled to {size}x{size}: {len(y_train)} train / "
         f"{len(y_test)} test images, 10 classes")
    info(f"model: {name} (timm, random init), {count_params(dense):,} parameters dense, {count_params(model):,} with "
         f"DCLS: {len(report.replaced)} depthwise convolution(s) {'/'.join(kernels)} -> "
         f"{config.kernel_count or 'all'} taps in a {config.span}x{config.span} span ({config.interpolation}; the same "
         f"function at the start)")

    settings = TrainSettings.from_args(args, DEFAULTS, weight_decay=0.05)
    data = torch.utils.data.TensorDataset(x_train, y_train)
    runs: dict[str, dict] = {}
    pairs = [("DCLS", model)] if args.no_baseline else [("dense", dense), ("DCLS", model)]
    for label, net in pairs:
        trained, stats = fit(net, data, _loss(torch.Generator().manual_seed(args.seed + 1)), settings, accelerator,
                             desc=f"{label} {name}")
        accuracy, logits = evaluate(trained, x_test, y_test, _forward)
        runs[label] = {"test_accuracy": accuracy, "parameters": count_params(trained), **stats}
    model = finalize(trained)

    save_dir = out / "model"
    dclszoo.save_pretrained(model, save_dir)
    reloaded = dclszoo.from_pretrained(save_dir)
    return {
        "title": f"{name} on scikit-learn's handwritten digits ({size}x{size})",
        "runs": runs,
        "reload": reload_report(save_dir, reloaded, logits, x_test, y_test, _forward),
        "settings": {"model": name, "init": "random", "image_size": size, "dcls": config.to_dict(),
                     "epochs": settings.epochs, "batch_size": settings.batch_size, "lr": settings.lr},
        "chance": 0.1,
    }
