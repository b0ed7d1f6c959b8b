"""Patching timm models: which convolutions become DCLS, and how (``dclszoo.patch`` lands here for timm).

Targets are the convolutions whose class computes a plain convolution: ``nn.Conv1d/2d/3d`` themselves and timm's
``Conv2dSame`` / ``Conv2dSameExport`` (dynamic TF 'SAME' padding, converted to :class:`DclsConv2dSame`). Other
``nn.Conv2d`` subclasses (weight-standardised ``StdConv2d``, ...) change the weights in ``forward`` and are left
alone. Which of them match is the core rule (:func:`dclszoo.patching.is_target_conv`): depthwise by default
(ConvNeXt, ConvNeXt-V2, InceptionNeXt, MobileNetV3/V4, EfficientNet, ConvFormer, EdgeNeXt), ``targets='dense'``
or ``'all'`` for ResNet-style models.

Re-parameterisable blocks (FastViT, MobileOne, RepViT, ...: modules with ``reparameterize()`` / ``fuse()``)
keep parallel training branches whose kernels are summed when fused, reading every branch's ``.weight``; a DCLS
branch would break that. Fuse first (``timm.utils.reparameterize_model(model)``) and patch the fused model, or
exclude those modules with ``filter_fn``; patching an unfused branch raises ``ValueError``.
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from dclszoo.config import DclsConfig
from dclszoo.modules import DclsConv1d, DclsConv2d, DclsConv3d, DclsConvNd
from dclszoo.patching import conv_to_dcls, is_target_conv, replace_modules
from dclszoo.report import PatchReport

from .same_conv import DclsConv2dSame
from .sharing import convert_shared, sharing_groups

__all__ = ["is_timm_model", "conv_kind", "convert_conv", "patch_timm_model", "mark_timm_metadata",
           "clear_timm_metadata", "MODEL_ARGS_KEY"]

MODEL_ARGS_KEY = "dcls"
_PLAIN = {nn.Conv1d: DclsConv1d, nn.Conv2d: DclsConv2d, nn.Conv3d: DclsConv3d}
_SAME_NAMES = ("Conv2dSame", "Conv2dSameExport")
_REPARAM_METHODS = ("reparameterize", "fuse", "switch_to_deploy")


def _from_timm(module: nn.Module) -> bool:
    return type(module).__module__.startswith("timm.")


def is_timm_model(model: nn.Module) -> bool:
    """Whether ``model`` is, or contains, a timm module (checked by class module name: timm is not imported)."""
    return any(_from_timm(m) for m in model.modules())


def conv_kind(module: nn.Module) -> type[DclsConvNd] | None:
    """The DCLS class that replaces ``module`` exactly, or None if ``module`` is not a convertible convolution."""
    cls = type(module)
    if cls in _PLAIN:
        return _PLAIN[cls]
    if cls.__name__ in _SAME_NAMES and cls.__module__.startswith("timm.layers"):
        return DclsConv2dSame
    return None


def convert_conv(conv: nn.Module, config: DclsConfig, fqn: str = "") -> DclsConvNd:
    """Function-preserving conversion of one convolution with the settings of ``config``."""
    cls = conv_kind(conv)
    if cls is None:
        raise TypeError(f"{fqn or 'conv'}: {type(conv).__name__} is not a convolution the timm plugin converts.")
    return conv_to_dcls(conv, config, fqn, cls=cls)


def _check_not_in_reparam_block(model: nn.Module, fqn: str) -> None:
    parts = fqn.split(".")
    for depth in range(len(parts)):
        name = ".".join(parts[:depth])
        block = model.get_submodule(name)
        if not any(callable(getattr(block, m, None)) for m in _REPARAM_METHODS):
            continue
        if getattr(block, "reparam_conv", None) is not None and parts[depth] == "reparam_conv":
            continue  # the conv a fused MobileOne/FastViT block runs
        raise ValueError(
            f"{fqn}: lies in {type(block).__name__} at {name or '<root>'!r}, a re-parameterisable block whose "
            f"branches are fused by reading each conv's weight. Fuse it first (timm.utils.reparameterize_model("
            f"model)) and patch the fused model, or exclude it with filter_fn."
        )


def patch_timm_model(
    model: nn.Module, config: DclsConfig, filter_fn: Callable[[nn.Module, str], bool] | None = None
) -> PatchReport | None:
    """Replace the matching convolutions of a timm model by DCLS ones (in place); None if ``config`` is not ours.

    With ``config.share_positions`` the convolutions at the same place in consecutive blocks of a stage share
    one positions Parameter (:mod:`.sharing`).
    """
    if not isinstance(config, DclsConfig):
        return None
    chosen: list[tuple[str, nn.Module]] = []
    for fqn, module in model.named_modules():
        if conv_kind(module) is None or not is_target_conv(module, config):
            continue
        if filter_fn is not None and not filter_fn(module, fqn):
            continue
        _check_not_in_reparam_block(model, fqn)
        chosen.append((fqn, module))
    groups = sharing_groups(chosen) if config.share_positions else [[pair] for pair in chosen]
    new: dict[str, tuple[nn.Module, nn.Module]] = {}
    for group in groups:
        converted = convert_shared(group, lambda conv, fqn: convert_conv(conv, config, fqn))
        new.update({fqn: (old, dcls) for (fqn, old), dcls in zip(group, converted)})

    def make(module: nn.Module, fqn: str) -> nn.Module | None:
        entry = new.get(fqn)
        return entry[1] if entry is not None and entry[0] is module else None

    report = replace_modules(model, make, plugin="timm")
    if report.replaced:
        mark_timm_metadata(model, config)
    return report


def mark_timm_metadata(model: nn.Module, config: DclsConfig) -> None:
    """Make timm's save/push describe the DCLS model: ``pretrained_cfg['architecture'] = '<arch>_dcls'`` (registered
    on the fly if needed) and the config in ``model._model_args['dcls']`` (written to config.json ``model_args``,
    handed back to the ``<arch>_dcls`` entrypoint when the checkpoint is re-created)."""
    from .registry import SUFFIX, register_architecture

    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and isinstance(cfg.get("architecture"), str):
        arch = cfg["architecture"]
        if not arch.endswith(SUFFIX):
            name = register_architecture(arch)
            if name is not None:
                model.pretrained_cfg = dict(cfg, architecture=name)
                model.default_cfg = model.pretrained_cfg
    if hasattr(model, "pretrained_cfg"):
        model._model_args = dict(getattr(model, "_model_args", {}), **{MODEL_ARGS_KEY: config.to_dict()})


def clear_timm_metadata(model: nn.Module) -> None:
    """Undo :func:`mark_timm_metadata` after ``dclszoo.unpatch`` (the model is a plain timm model again)."""
    from .registry import SUFFIX

    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and str(cfg.get("architecture", "")).endswith(SUFFIX):
        model.pretrained_cfg = dict(cfg, architecture=cfg["architecture"][: -len(SUFFIX)])
        model.default_cfg = model.pretrained_cfg
    args = getattr(model, "_model_args", None)
    if isinstance(args, dict) and MODEL_ARGS_KEY in args:
        model._model_args = {k: v for k, v in args.items() if k != MODEL_ARGS_KEY}
