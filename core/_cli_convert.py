"""``dclszoo convert MODEL --out DIR``: build a dense model, patch it to DCLS, check it, save it in Hub format."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import warnings
from pathlib import Path

from ._cli_common import CliError, count_params, example_input, info, model_output
from ._cli_load import build_source

__all__ = ["add_arguments", "run", "config_from_args"]

DESCRIPTION = """\
Convert a dense model to DCLS and save it with dclszoo.save_pretrained (model.safetensors, dclszoo_config.json,
a model card, and timm's / transformers' own config.json).

MODEL is a timm architecture name (random weights unless --pretrained), hf-hub:<repo> or local-dir:<dir>
(timm checkpoints), a transformers Hub id ('owner/name') or a timm / transformers model directory.

The default settings are the exact conversion (every weight of the dense kernel becomes a tap at its grid
position, so the outputs do not change); --span lets the taps move further, --kernel-count keeps fewer taps
(the largest weights; lossy), --preset applies a published recipe (timm ConvNeXt).
"""

EPILOG = """\
examples:
  dclszoo convert convnext_atto --out convnext-atto-dcls --span 11
  dclszoo convert convnext_tiny --pretrained --preset convnext_tiny --out convnext-tiny-dcls
  dclszoo convert local-dir:my-convnext --out my-convnext-dcls
  dclszoo convert facebook/wav2vec2-base --num-classes 5 --span 256 --out wav2vec2-dcls
"""

_FLAGS = ("kernel_count", "span", "interpolation", "sigma", "targets", "share_positions", "min_kernel_size")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .config import DCLS_TARGETS
    from .functional import INTERPOLATIONS

    p.add_argument("model", metavar="MODEL", help="timm name, hf-hub:/local-dir: source, transformers id or directory")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created; files are overwritten)")
    p.add_argument("--pretrained", action="store_true",
                   help="timm names: load the pretrained weights (downloads them unless cached)")
    p.add_argument("--num-classes", type=int, default=None, metavar="N", help="new classifier with N classes")
    p.add_argument("--in-chans", type=int, default=None, metavar="C", help="timm: input channels")
    g = p.add_argument_group("DCLS settings (defaults: exact conversion of the depthwise convolutions)")
    g.add_argument("--preset", default=None, metavar="NAME",
                   help="published recipe: convnext_tiny, convnext_small, convnext_base, convnext_tiny_gauss, "
                        "or 'paper' (the recipe of the timm architecture); flags below override its fields")
    g.add_argument("--span", type=int, default=None, metavar="S", help="window the taps move in (default: kernel size)")
    g.add_argument("--kernel-count", type=int, default=None, metavar="K",
                   help="taps per filter (default: every weight of the dense kernel)")
    g.add_argument("--interpolation", choices=INTERPOLATIONS, default=None, help="tap interpolation (default bilinear)")
    g.add_argument("--sigma", type=float, default=None, help="initial Gaussian std in pixels (gauss)")
    g.add_argument("--targets", choices=DCLS_TARGETS, default=None,
                   help="which convolutions (default: depthwise; the timm plugin picks 'dense' for ResNets)")
    g.add_argument("--share-positions", action="store_true", default=None,
                   help="share tap positions across the blocks of a stage (timm ConvNeXt)")
    g.add_argument("--min-kernel-size", type=int, default=None, metavar="K", help="skip smaller kernels (default 3)")
    p.add_argument("--no-check", action="store_true", help="skip the output check against the dense model and "
                                                          "the reload check")


def config_from_args(args: argparse.Namespace, model_name: str | None = None):
    """The :class:`DclsConfig` of ``--preset`` and the flags (flags override the preset's fields)."""
    from .config import DclsConfig

    fields: dict = {}
    if args.preset is not None:
        from .plugins.timm_dcls.presets import PRESETS, list_presets, paper_preset_for

        name = args.preset
        if name == "paper":
            name = paper_preset_for(model_name or "") if model_name else None
            if name is None:
                raise CliError(f"--preset paper: no published recipe for {model_name!r}; the presets are "
                               f"{list_presets()}.")
        if name not in PRESETS:
            raise CliError(f"--preset {args.preset!r}: unknown preset; expected one of {list_presets()} or 'paper'.")
        fields.update(PRESETS[name])
    for f in _FLAGS:
        value = getattr(args, f, None)
        if value is not None:
            fields[f] = value
    if args.targets is None and model_name is not None and "targets" not in fields:
        fields["targets"] = _default_targets(model_name)
    try:
        return DclsConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise CliError(str(exc)) from None


def _default_targets(name: str) -> str:
    """The timm plugin's default targets for this architecture (``dense`` for ResNets, else ``depthwise``)."""
    from .plugins.timm_dcls.registry import resolve_config

    return resolve_config(name, None).targets


def _max_diff(a, b) -> float:
    """``max |a - b|`` of two :func:`model_output` results (nan if they are not tensors)."""
    import torch

    return float((a.float() - b.float()).abs().max()) if isinstance(a, torch.Tensor) else float("nan")


def run(args: argparse.Namespace) -> int:
    import dclszoo

    model, zoo = build_source(args.model, pretrained=args.pretrained, num_classes=args.num_classes,
                              in_chans=args.in_chans)
    name = args.model if zoo == "timm" and ":" not in args.model and not Path(args.model).is_dir() else None
    config = config_from_args(args, name)
    model.eval()
    dense = copy.deepcopy(model) if not args.no_check else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            report = dclszoo.patch(model, config)
        except (ValueError, TypeError) as exc:
            raise CliError(f"cannot patch {args.model!r} with {config}: {exc}") from None
    for w in caught:
        if "does not represent the dense kernel" not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not report.replaced:
        raise CliError(f"{args.model!r}: no convolution matched {config} (try --targets all, or a smaller "
                       f"--min-kernel-size); nothing to save.")
    info(report)
    lossy = [fqn for fqn, m in model.named_modules() if m.__dict__.get("conversion_error")]
    info(f"{type(model).__name__} ({zoo}): {len(report.replaced)} convolution(s) -> DCLS with "
         f"{ {k: v for k, v in dataclasses.asdict(config).items() if k != 'version'} }")
    if lossy:
        info(f"note: {len(lossy)} layer(s) keep fewer taps than their dense kernel has weights, so the outputs "
             f"change (fine-tune to recover).")
    sample = example_input(model) if not args.no_check else None
    if sample is not None:
        output = model_output(model, sample)
        diff = _max_diff(output, model_output(dense, sample))
        info(f"check: max |DCLS - dense| on a random input = {diff:.3g}"
             + (" (function preserved)" if diff < 1e-4 and not lossy else ""))
    out = Path(args.out)
    try:
        dclszoo.save_pretrained(model, out)
    except (ValueError, TypeError) as exc:
        raise CliError(f"cannot save to {str(out)!r}: {exc}") from None
    if sample is not None:
        from ._cli_load import load_checkpoint

        reloaded, _ = load_checkpoint(str(out))
        diff = _max_diff(model_output(reloaded, sample), output)  # save_pretrained leaves the model as it was
        if diff != 0.0:
            raise CliError(f"the checkpoint in {str(out)!r} reloads with different outputs (max |diff| {diff:.3g}).")
        info("check: reloaded from the checkpoint, identical outputs")
    info(f"saved {count_params(model):,} parameters to {out}/ (load with dclszoo.from_pretrained({str(out)!r}))")
    return 0
