"""Saving and rebuilding timm models for :mod:`dclszoo.hub` (the plugin's describe / build / save-native hooks).

A timm model made by ``timm.create_model`` carries ``pretrained_cfg['architecture']`` (``<arch>_dcls`` once
patched) and its creation arguments (``timm.models.get_model_args``). The checkpoint records the unpatched
``<arch>`` and those arguments without ``dcls`` (the patch config is stored by the core); rebuilding calls
``timm.create_model(<arch>, **model_args)``, and for adapters loads the base weights the way timm does
(``pretrained_cfg_overlay=dict(hf_hub_id="<repo>@<revision>")``). Full checkpoints also get timm's own
``config.json``, so ``timm.create_model("hf-hub:<repo>")`` / ``"local-dir:<dir>"`` read them too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from dclszoo._hub_config import first_non_json
from dclszoo.patching import is_transformers_model

from .patch import MODEL_ARGS_KEY, is_timm_model

__all__ = ["describe_timm_model", "build_timm_model", "save_timm_config"]


def _architecture(model: nn.Module) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None)
    arch = cfg.get("architecture") if isinstance(cfg, dict) else None
    return arch if isinstance(arch, str) and arch else None


def describe_timm_model(model: nn.Module) -> dict[str, Any] | None:
    """The ``dclszoo_describe_model`` answer for timm models (None for other models).

    A transformers ``PreTrainedModel`` with timm modules inside (the hf_audio plugin's spectrogram classifier, a
    ``TimmWrapperModel``) is not described here: its class and config belong to transformers, so its transformers
    plugin describes it (the ownership rule of ``dclszoo_describe_model``).

    Raises:
        ValueError: a creation argument is not JSON (timm's own ``save_for_hf`` refuses it as well).
    """
    if not is_timm_model(model) or is_transformers_model(model):
        return None
    from .registry import SUFFIX

    arch = _architecture(model)
    out: dict[str, Any] = {"pip": "dclszoo[timm]", "tags": ["timm", "image-classification"]}
    if arch is None:  # timm layers in a model timm did not build: patched by this plugin, rebuilt by the user
        return dict(out, architecture=None)
    from timm.models import get_model_args

    args = {k: v for k, v in get_model_args(model).items() if k != MODEL_ARGS_KEY}
    bad = first_non_json(args)
    if bad is not None:
        raise ValueError(f"timm model argument {bad[0]}={bad[1]!r} is not JSON-serialisable, so the checkpoint could "
                         f"not rebuild the model; create it with serialisable arguments.")
    hub_id = model.pretrained_cfg.get("hf_hub_id")
    base = revision = None
    if isinstance(hub_id, str) and hub_id:
        base, _, revision = hub_id.partition("@")
    return dict(out, architecture=arch[: -len(SUFFIX)] if arch.endswith(SUFFIX) else arch, model_args=args,
                base_model=base, base_revision=revision or None)


def build_timm_model(spec: dict[str, Any], pretrained: bool) -> nn.Module | None:
    """The ``dclszoo_build_model`` answer: ``timm.create_model(<arch>, **model_args)``, unpatched."""
    import timm

    arch = spec.get("architecture")
    if not arch:
        return None
    if not timm.is_model(arch):
        raise ValueError(f"architecture={arch!r} is not a timm model in timm {timm.__version__}; upgrade timm.")
    kwargs = dict(spec.get("model_args") or {})
    if not pretrained:
        return timm.create_model(arch, pretrained=False, **kwargs)
    base, revision = spec.get("base_model"), spec.get("base_revision")
    hub_id = f"{base}@{revision}" if revision else base
    return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id=hub_id), **kwargs)


def save_timm_config(model: nn.Module, save_directory: str) -> list[str] | None:
    """The ``dclszoo_save_native`` answer: timm's ``config.json`` (architecture ``<arch>_dcls``, model args)."""
    if not is_timm_model(model) or _architecture(model) is None:
        return None
    from timm.models._hub import save_config_for_hf

    save_config_for_hf(model, Path(save_directory) / "config.json")
    return ["config.json"]
