"""The plugin's user API: :func:`patch_audio` (``dclszoo.patch`` with target groups or name patterns)."""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch.nn as nn

from dclszoo.config import DclsConfig
from dclszoo.report import PatchReport

from .models import adopt
from .patch import is_transformers_model, model_family, patch_with_spec
from .spec import AudioPatchSpec

__all__ = ["patch_audio"]


def _patch(model: nn.Module, config: DclsConfig | None, targets: Any,
           filter_fn: Callable[[nn.Module, str], bool] | None) -> PatchReport:
    family = model_family(model)
    if targets is None and not family.default:
        raise ValueError(
            f"{family.name} has no default DCLS targets; name them: dclszoo.plugins.hf_audio.patch_audio(model, "
            f"config, targets={sorted(family.groups)}) (target groups) or module-name patterns."
        )
    spec = AudioPatchSpec.build(config, targets, family.default)
    report = patch_with_spec(model, spec, filter_fn)
    if report.replaced:
        adopt(model, spec)
    return report


def patch_audio(
    model: nn.Module,
    config: DclsConfig | None = None,
    targets: Any = None,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> PatchReport:
    """Convert convolutions of a transformers audio model to DCLS, in place and function-preserving.

    ``dclszoo.patch(model, config)`` is ``patch_audio(model, config)``: the family's default targets. The model
    becomes an instance of its DCLS twin class (``Dcls<Class>``) with a DCLS config, so ``save_pretrained`` writes
    a ``<model_type>_dcls`` checkpoint that the Auto classes reload after ``dclszoo.enable()``.

    Args:
        model: A transformers model of a supported family (:data:`~.families.FAMILIES`).
        config: Conversion settings (span, taps, interpolation, ...); None = ``DclsConfig()``, the exact
            conversion. ``config.targets`` must stay at its default: here convolutions are chosen by ``targets``.
        targets: None (the family's default groups), a target group (``"positional"``, ``"depthwise"``,
            ``"feature_encoder"``, ``"conv_stem"``) or module-name pattern (``fnmatch``, matched with and without
            the base-model prefix, e.g. ``"encoder.layers.0.conv_module.depthwise_conv"``), a list of them, or a
            dict target -> ``DclsConfig`` (or None for ``config``) when groups need different spans.
        filter_fn: ``filter_fn(module, name) -> bool``; only convolutions for which it is True are converted.

    Returns:
        The :class:`dclszoo.PatchReport`.

    Raises:
        ValueError: unsupported family (lists the supported ones), a target that matches no convolution (lists the
            model's convolutions), an already patched model, or an impossible conversion (names the module).
    """
    from dclszoo.api import is_patched

    if not isinstance(model, nn.Module) or not is_transformers_model(model):
        raise TypeError(f"model={type(model).__name__}: expected a transformers PreTrainedModel.")
    if is_patched(model):
        raise ValueError("model is already patched; call dclszoo.unpatch(model) first, then patch with the new "
                         "settings.")
    report = _patch(model, config, targets, filter_fn)
    if report.replaced:
        model.dclszoo_config = config if config is not None else DclsConfig()
    else:
        warnings.warn(f"patch_audio: no convolution of this {type(model).__name__} matched (filter_fn / "
                      f"min_kernel_size excluded them); the model is unchanged.", UserWarning, stacklevel=2)
    return report
