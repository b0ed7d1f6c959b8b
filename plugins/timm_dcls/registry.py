"""``<arch>_dcls`` entries in timm's model registry.

:func:`register_all` (called by the plugin's ``dclszoo_register`` hook, i.e. by ``dclszoo.enable()``) registers,
for every timm architecture of the supported families, an entrypoint ``<arch>_dcls`` that builds ``<arch>``
(with its pretrained weights when ``pretrained=True``, resolved by timm as usual: Hub cache, ``pretrained_cfg``,
``pretrained_cfg_overlay=dict(file=...)``) and converts it with :func:`dclszoo.patch`. Registration creates one
small function per name and never builds a model.

The entrypoint takes one extra keyword, ``dcls``: None (the family default: exact conversion of the depthwise
convs, dense ones for ResNet), a preset name (``"paper"`` = the published recipe of this architecture), or a
``DclsConfig.to_dict()`` dict. Pass a dict or a name rather than a ``DclsConfig`` object if the model will be
saved with timm: timm writes the creation kwargs into config.json.

Checkpoints saved from a DCLS model (``save_for_hf`` / ``push_to_hf_hub``) carry ``architecture: <arch>_dcls``
and ``model_args.dcls``; ``create_model("hf-hub:...")`` / ``"local-dir:..."`` call the entrypoint with that
config, which rebuilds the same DCLS geometry and then loads the DCLS weights strictly.
"""

from __future__ import annotations

import dataclasses
import sys
from collections import deque
from fnmatch import fnmatch
from typing import Any

__all__ = ["SUFFIX", "FAMILIES", "supported_architectures", "register_all", "register_architecture", "resolve_config"]

SUFFIX = "_dcls"

# family -> (timm module, name patterns, excluded patterns, default DclsConfig.targets)
FAMILIES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...], str]] = {
    "ConvNeXt / ConvNeXt-V2": ("convnext", ("convnext*",), (), "depthwise"),
    "InceptionNeXt": ("inception_next", ("inception_next*",), (), "depthwise"),
    "MobileNetV3": ("mobilenetv3", ("mobilenetv3*", "tf_mobilenetv3*"), (), "depthwise"),
    "MobileNetV4": ("mobilenetv3", ("mobilenetv4*",), (), "depthwise"),
    "EfficientNet": ("efficientnet", ("efficientnet*", "tf_efficientnet*"), ("*_cc_*",), "depthwise"),
    "ConvFormer": ("metaformer", ("convformer*",), (), "depthwise"),
    "EdgeNeXt": ("edgenext", ("edgenext*",), (), "depthwise"),
    "ResNet": ("resnet", ("resnet*",), (), "dense"),
}

_CHECKPOINT_SOURCES = ("hf-hub", "local-dir")  # pretrained_cfg["source"] timm sets when reading a config.json
_REGISTERED: dict[str, str] = {}  # dcls name -> base arch
default_cfgs: dict[str, Any] = {}  # read by timm's register_model (pretrained tags of the base arch)


def supported_architectures() -> list[str]:
    """timm architecture names of the supported families (without the suffix)."""
    import timm

    names: list[str] = []
    for module, patterns, excluded, _ in FAMILIES.values():
        for name in timm.list_models(list(patterns), module=module):
            if not any(fnmatch(name, x) for x in excluded) and not name.endswith(SUFFIX):
                names.append(name)
    return sorted(set(names))


def _default_targets(arch: str) -> str:
    import timm

    for module, patterns, excluded, targets in FAMILIES.values():
        if any(fnmatch(arch, p) for p in patterns) and not any(fnmatch(arch, x) for x in excluded):
            if arch in timm.list_models(list(patterns), module=module):
                return targets
    return "depthwise"


def resolve_config(arch: str, dcls: Any):
    """The :class:`DclsConfig` for ``<arch>_dcls(dcls=...)``.

    Raises:
        ValueError: unknown preset, or ``"paper"`` for an architecture without a published recipe.
        TypeError: ``dcls`` of another type.
    """
    from dclszoo.config import DclsConfig

    from .presets import get_preset, list_presets, paper_preset_for

    if dcls is None:
        return DclsConfig(targets=_default_targets(arch))
    if isinstance(dcls, DclsConfig):
        return dcls
    if isinstance(dcls, dict):
        return DclsConfig.from_dict(dcls)
    if isinstance(dcls, str):
        if dcls == "paper":
            preset = paper_preset_for(arch)
            if preset is None:
                raise ValueError(
                    f"dcls='paper': no published DCLS recipe for {arch!r}; presets exist for {list_presets()}. Pass a "
                    f"preset name or a DclsConfig dict instead."
                )
            return get_preset(preset)
        return get_preset(dcls)
    raise TypeError(
        f"dcls={dcls!r}: expected None, a preset name ('paper' or one of get_preset's names), a DclsConfig or its "
        f"to_dict() dict."
    )


def _cfg_dict(cfg: Any) -> dict | None:
    if isinstance(cfg, dict):
        return dict(cfg)
    if dataclasses.is_dataclass(cfg):
        return cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg)
    return None


def _create(arch: str, name: str, pretrained: bool = False, *, dcls: Any = None, pretrained_cfg: Any = None,
            pretrained_cfg_overlay: dict | None = None, cache_dir: Any = None, **kwargs: Any):
    import dclszoo
    from timm.models import load_pretrained, model_entrypoint

    config = resolve_config(arch, dcls)
    base_fn = model_entrypoint(arch)
    cfg = _cfg_dict(pretrained_cfg)
    if cfg is not None and (cfg.get("architecture") == name or cfg.get("source") in _CHECKPOINT_SOURCES):
        # A checkpoint saved from a DCLS model (timm reaches this entrypoint from "hf-hub:" / "local-dir:" because
        # its config.json names <arch>_dcls): build the DCLS geometry, then load its weights as they are.
        cfg["architecture"] = arch
        model = base_fn(pretrained=False, pretrained_cfg=cfg, pretrained_cfg_overlay=pretrained_cfg_overlay,
                        cache_dir=cache_dir, **kwargs)
        dclszoo.patch(model, config)
        if pretrained:
            load_pretrained(model, pretrained_cfg=model.pretrained_cfg, num_classes=getattr(model, "num_classes", 0),
                            in_chans=kwargs.get("in_chans", 3), strict=True, cache_dir=cache_dir)
    else:
        model = base_fn(pretrained=pretrained, pretrained_cfg=pretrained_cfg,
                        pretrained_cfg_overlay=pretrained_cfg_overlay, cache_dir=cache_dir, **kwargs)
        dclszoo.patch(model, config)
    return model


def _entrypoint(arch: str, name: str):
    def create(pretrained: bool = False, **kwargs: Any):
        return _create(arch, name, pretrained, **kwargs)

    create.__name__ = create.__qualname__ = name
    create.__module__ = __name__
    create.__doc__ = f"timm ``{arch}`` with DCLS convolutions (dclszoo; see :mod:`{__name__}`)."
    return create


def register_architecture(arch: str) -> str | None:
    """Register ``<arch>_dcls`` for one timm architecture (idempotent); None if ``arch`` is not a timm model."""
    from timm.models import is_model, register_model
    from timm.models._registry import _model_default_cfgs

    name = arch + SUFFIX
    if _REGISTERED.get(name) == arch:
        return name
    if not is_model(arch) or arch.endswith(SUFFIX):
        return None
    base_cfgs = _model_default_cfgs.get(arch)
    if base_cfgs is not None:
        default_cfgs[name] = dataclasses.replace(base_cfgs, tags=deque(base_cfgs.tags), cfgs=dict(base_cfgs.cfgs))
    fn = _entrypoint(arch, name)
    setattr(sys.modules[__name__], name, fn)
    register_model(fn)
    _REGISTERED[name] = arch
    return name


def register_all() -> list[str]:
    """Register ``<arch>_dcls`` for every supported architecture; returns the registered names."""
    return [register_architecture(arch) for arch in supported_architectures()]
