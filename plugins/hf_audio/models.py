"""DCLS model types for transformers: ``<model_type>_dcls`` configs and ``Dcls<Class>`` models.

For every supported family (:mod:`.families`) there is a config class ``Dcls<Config>`` (a subclass of the
family's config with ``model_type = "<model_type>_dcls"`` and the patch spec in ``config.dcls``) and, for every
model class of the family the Auto classes know, a twin ``Dcls<Class>`` (a subclass with :class:`DclsAudioMixin`
first in its bases). :func:`register_all` (run by ``dclszoo.enable()``) registers them with ``AutoConfig`` and the
``AutoModel*`` / ``AutoFeatureExtractor`` / ``AutoProcessor`` / ``AutoTokenizer`` classes, so a saved DCLS model
(config.json says ``"model_type": "wav2vec2_dcls"``) is rebuilt by the usual Auto class. Nothing is loaded as
remote code. The classes are created on first use (also by attribute access:
``dclszoo.plugins.hf_audio.models.DclsWav2Vec2ForCTC``), which keeps pickling working.

A twin's ``__init__`` builds the dense model, then converts the convolutions its spec names
(:func:`~.patch.patch_with_spec`), on the meta device too (geometry only) -- that is how ``from_pretrained``
builds it before filling it from the checkpoint. Loading, :meth:`DclsAudioMixin.from_pretrained`:

- a DCLS checkpoint loads as usual; DCLS parameters the checkpoint lacks (transformers would leave them as
  ``torch.empty_like`` memory) get the DCLS initialisation, with a warning naming them;
- a **dense** checkpoint of the family (its config.json has the dense ``model_type``) loads into the dense class
  first and is then converted, function-preserving: ``DclsWav2Vec2ForCTC.from_pretrained("facebook/...")`` is the
  pretrained model with DCLS convolutions.

``dclszoo.patch`` on a plain model of a supported family adopts it into the twin class and a DCLS config
(:func:`adopt`), so ``save_pretrained`` writes a DCLS model type; ``dclszoo.unpatch`` / ``to_dense`` undo that
(:func:`release`).
"""

from __future__ import annotations

import copy
import os
import sys
import warnings
from typing import Any

import torch
import torch.nn as nn

from dclszoo.config import DclsConfig
from dclszoo.modules import DclsConvNd

from .families import DCLS_SUFFIX, FAMILIES, dense_model_type
from .patch import model_family, patch_with_spec, restore_weight_norm
from .spec import AudioPatchSpec

__all__ = ["DclsAudioMixin", "SPEC_ATTR", "dcls_config_class", "dcls_model_class", "adopt", "release",
           "register_all", "init_dcls_parameters", "load_checked"]

SPEC_ATTR = "dcls"
CONFIG_ATTR = "dclszoo_config"  # as in dclszoo.api
_CONFIG_CLASSES: dict[type, type] = {}
_MODEL_CLASSES: dict[type, type] = {}
_DCLS_PARAMS = ("weight", "positions", "sigma", "bias")
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")


# --------------------------------------------------------------------------- initialisation
@torch.no_grad()
def init_dcls_parameters(module: DclsConvNd, names: list[str] | tuple[str, ...] = _DCLS_PARAMS) -> None:
    """Give the named tensors of ``module`` the DCLS initialisation (``DclsConvNd.reset_parameters``): kaiming
    weights, positions ~ N(0, 0.5) clamped into the span, sigma at its initial value, uniform bias."""
    names = [n for n in names if getattr(module, n, None) is not None]
    if not names or module.weight.is_meta:
        return
    fresh = copy.deepcopy(module)
    fresh.reset_parameters()
    for name in names:
        getattr(module, name).copy_(getattr(fresh, name))


def not_loaded(module: DclsConvNd) -> list[str]:
    """The DCLS tensors of ``module`` transformers did not fill from a checkpoint (it flags loaded tensors)."""
    return [n for n in _DCLS_PARAMS
            if getattr(module, n, None) is not None and not getattr(getattr(module, n), "_is_hf_initialized", False)]


def _init_missing(model: nn.Module, info: dict) -> None:
    """DCLS-initialise the DCLS tensors ``from_pretrained`` reported missing or mismatched (else: empty memory)."""
    missing = set(info.get("missing_keys") or ())
    for entry in info.get("mismatched_keys") or ():
        missing.add(entry[0] if isinstance(entry, (tuple, list)) else entry)
    done = []
    for fqn, module in model.named_modules():
        if isinstance(module, DclsConvNd):
            names = [n for n in _DCLS_PARAMS if f"{fqn}.{n}" in missing]
            if names:
                init_dcls_parameters(module, names)
                done += [f"{fqn}.{n}" for n in names]
    if done:
        warnings.warn(
            f"{type(model).__name__}.from_pretrained: the checkpoint has no values for {len(done)} DCLS tensor(s) "
            f"({done[:4]}{' ...' if len(done) > 4 else ''}); they got the DCLS initialisation (random positions): "
            f"train before use.",
            UserWarning, stacklevel=3,
        )


# --------------------------------------------------------------------------- configs
def dcls_config_class(dense_cls: type) -> type:
    """The DCLS config class of a family's config class (created once)."""
    if dense_cls in _CONFIG_CLASSES:
        return _CONFIG_CLASSES[dense_cls]
    if dense_cls.model_type.endswith(DCLS_SUFFIX):
        return dense_cls
    name = "Dcls" + dense_cls.__name__
    cls = type(name, (dense_cls,), {
        "model_type": dense_cls.model_type + DCLS_SUFFIX,
        "__module__": __name__,
        "__doc__": f"{dense_cls.__name__} with DCLS convolutions (dclszoo); the patch spec is in ``config.dcls``.",
    })
    _CONFIG_CLASSES[dense_cls] = cls
    setattr(sys.modules[__name__], name, cls)
    return cls


def _swap_config(model: nn.Module, new_cls: type, spec: dict | None) -> None:
    """Give ``model`` (and every submodule sharing its config object) a copy of its config of class ``new_cls``."""
    old = model.config
    new = copy.copy(old)
    new.__class__ = new_cls
    new.__dict__.pop("model_type", None)  # the class attribute names the type
    if spec is None:
        new.__dict__.pop(SPEC_ATTR, None)
    else:
        setattr(new, SPEC_ATTR, spec)
    for module in model.modules():
        if module.__dict__.get("config") is old:
            module.config = new


def _spec_of(data: Any, model: nn.Module) -> AudioPatchSpec:
    """The spec ``config.dcls`` holds: a spec dict, or just a ``DclsConfig`` (or its dict) for the family's default
    targets, or nothing (the family's defaults, exact conversion)."""
    if isinstance(data, dict) and data.get("config_type") == "DclsConfig":
        data = DclsConfig.from_dict(data)
    if isinstance(data, DclsConfig) or not data:
        return AudioPatchSpec.build(data or None, None, model_family(model).default)
    return AudioPatchSpec.from_dict(data)


# --------------------------------------------------------------------------- models
class DclsAudioMixin:
    """What makes ``Dcls<Class>`` a DCLS model type (first base of every twin; see the module docstring)."""

    dclszoo_dense_class: type = None  # set on each twin

    def __init__(self, config, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        spec = _spec_of(getattr(config, SPEC_ATTR, None), self)
        patch_with_spec(self, spec)
        setattr(self.config, SPEC_ATTR, spec.to_dict())
        self.__dict__[CONFIG_ATTR] = spec.targets[0][1] if spec.targets else None

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, DclsConvNd):
            # only what the checkpoint did not provide (transformers flags loaded tensors)
            init_dcls_parameters(module, not_loaded(module))
            return
        super()._init_weights(module)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path=None, *model_args, **kwargs):
        """``from_pretrained`` of the dense class, plus: a dense checkpoint is loaded and converted
        (function-preserving); DCLS tensors missing from a DCLS checkpoint get the DCLS initialisation; a tensor
        whose shape does not fit raises ``ValueError`` naming it (unless ``ignore_mismatched_sizes=True``)."""
        if _is_dense_checkpoint(cls, pretrained_model_name_or_path, kwargs):
            return _from_dense_checkpoint(cls, pretrained_model_name_or_path, *model_args, **kwargs)
        return load_checked(cls, super().from_pretrained, pretrained_model_name_or_path, *model_args, **kwargs)


def load_checked(cls: type, load, path: Any, *model_args, after=None, **kwargs):
    """Run a ``from_pretrained`` function with loading info, then: a shape mismatch raises ``ValueError`` naming
    every key (transformers' own error only points at its log); ``after(model)`` runs; DCLS tensors the checkpoint
    lacks get the DCLS initialisation. Honours ``output_loading_info`` / ``ignore_mismatched_sizes``."""
    want_info = kwargs.pop("output_loading_info", False)
    ignore = kwargs.pop("ignore_mismatched_sizes", False)
    model, info = load(path, *model_args, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
    mismatched = sorted(info.get("mismatched_keys") or (), key=lambda e: str(e[0] if isinstance(e, tuple) else e))
    if mismatched and not ignore:
        rows = "\n".join(
            f"  {e[0]}: {list(e[1])} in the checkpoint, {list(e[2])} in the model" if isinstance(e, tuple) and
            len(e) == 3 else f"  {e}" for e in mismatched)
        raise ValueError(
            f"{path}: the checkpoint does not fit {cls.__name__} as its config describes it; mismatched tensors:\n"
            f"{rows}\nCheck that the checkpoint and its config.json (config.dcls: taps, span) belong together, or pass "
            f"ignore_mismatched_sizes=True to re-initialise these tensors."
        )
    if after is not None:
        after(model)
    _init_missing(model, info)
    return (model, info) if want_info else model


def _is_dense_checkpoint(cls: type, path: Any, kwargs: dict) -> bool:
    if path is None or kwargs.get("gguf_file"):
        return False
    hub = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
    try:
        data, _ = cls.config_class.get_config_dict(path, **hub)
    except (OSError, ValueError):
        return False  # no config.json: transformers reports what is wrong
    return data.get("model_type") == dense_model_type(cls.config_class.model_type)


def _from_dense_checkpoint(cls: type, path: Any, *model_args, **kwargs):
    config = kwargs.pop("config", None)
    spec_data = None
    if config is not None and not isinstance(config, (str, os.PathLike)):
        spec_data = getattr(config, SPEC_ATTR, None)
        config = copy.copy(config)
        config.__class__ = cls.dclszoo_dense_class.config_class
        config.__dict__.pop(SPEC_ATTR, None)
        config.__dict__.pop("model_type", None)
    if config is not None:
        kwargs["config"] = config

    def convert(model: nn.Module) -> None:
        spec = _spec_of(spec_data, model)
        with torch.no_grad():
            patch_with_spec(model, spec)
        adopt(model, spec, cls)

    return load_checked(cls, cls.dclszoo_dense_class.from_pretrained, path, *model_args, after=convert, **kwargs)


def dcls_model_class(dense_cls: type) -> type:
    """The DCLS twin ``Dcls<Class>`` of a transformers model class (created once)."""
    if dense_cls in _MODEL_CLASSES:
        return _MODEL_CLASSES[dense_cls]
    if issubclass(dense_cls, DclsAudioMixin):
        return dense_cls
    name = "Dcls" + dense_cls.__name__
    twin = type(name, (DclsAudioMixin, dense_cls), {
        "config_class": dcls_config_class(dense_cls.config_class),
        "dclszoo_dense_class": dense_cls,
        "__module__": __name__,
        "__doc__": f"{dense_cls.__name__} with DCLS convolutions (dclszoo; see :mod:`{__name__}`).",
    })
    _MODEL_CLASSES[dense_cls] = twin
    setattr(sys.modules[__name__], name, twin)
    return twin


def __getattr__(name: str):
    """``Dcls<Class>`` / ``Dcls<Config>`` for any transformers class (created on first access, e.g. by unpickling)."""
    if name.startswith("Dcls") and len(name) > 4:
        import transformers

        base = getattr(transformers, name[4:], None)
        if isinstance(base, type):
            if issubclass(base, transformers.PreTrainedConfig):
                return dcls_config_class(base)
            if issubclass(base, transformers.PreTrainedModel):
                return dcls_model_class(base)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def adopt(model: nn.Module, spec: AudioPatchSpec, cls: type | None = None) -> None:
    """Make a patched plain model an instance of its DCLS twin with a DCLS config holding ``spec``."""
    twin = cls or dcls_model_class(type(model))
    _swap_config(model, twin.config_class, spec.to_dict())
    model.__class__ = twin
    model.__dict__[CONFIG_ATTR] = spec.targets[0][1] if spec.targets else None


def release(model: nn.Module) -> None:
    """Undo :func:`adopt` after ``dclszoo.unpatch`` / ``to_dense``: the dense class and config again, weight norms
    back on the convolutions that had them."""
    restore_weight_norm(model)
    dense = getattr(type(model), "dclszoo_dense_class", None)
    if dense is not None:
        _swap_config(model, dense.config_class, None)
        model.__class__ = dense
    model.__dict__.pop(CONFIG_ATTR, None)


# --------------------------------------------------------------------------- Auto registration
def _auto_model_classes() -> list[type]:
    from transformers.models.auto import modeling_auto

    found = []
    for name in dir(modeling_auto):
        obj = getattr(modeling_auto, name)
        if isinstance(obj, type) and issubclass(obj, modeling_auto._BaseAutoModelClass) \
                and getattr(obj, "_model_mapping", None) is not None:
            found.append(obj)
    return found


def _register_preprocessors(dense_cfg: type, dcls_cfg: type) -> None:
    """Map the DCLS config to the family's feature extractor / processor / tokenizer (pipelines look them up)."""
    from transformers import AutoFeatureExtractor, AutoProcessor, AutoTokenizer
    from transformers.models.auto.feature_extraction_auto import FEATURE_EXTRACTOR_MAPPING
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING

    for auto, mapping in ((AutoFeatureExtractor, FEATURE_EXTRACTOR_MAPPING), (AutoProcessor, PROCESSOR_MAPPING)):
        try:
            target = mapping[dense_cfg] if dense_cfg in mapping else None
        except (KeyError, ImportError, AttributeError):
            target = None
        if target is not None:
            auto.register(dcls_cfg, target, exist_ok=True)
    try:
        tokenizers = TOKENIZER_MAPPING[dense_cfg] if dense_cfg in TOKENIZER_MAPPING else None
    except (KeyError, ImportError, AttributeError):
        tokenizers = None
    if tokenizers:
        slow, fast = tokenizers if isinstance(tokenizers, tuple) else (tokenizers, None)
        if slow is not None or fast is not None:
            AutoTokenizer.register(dcls_cfg, slow_tokenizer_class=slow, fast_tokenizer_class=fast, exist_ok=True)


def register_all() -> dict[str, list[str]]:
    """Register the DCLS config and model classes of every supported family with the Auto classes (idempotent).

    Families this transformers version does not have are skipped. Returns ``{dcls model_type: [class names]}``.
    """
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    autos = _auto_model_classes()
    registered: dict[str, list[str]] = {}
    for model_type in FAMILIES:
        try:
            dense_cfg = CONFIG_MAPPING[model_type]
        except KeyError:
            continue
        dcls_cfg = dcls_config_class(dense_cfg)
        AutoConfig.register(dcls_cfg.model_type, dcls_cfg, exist_ok=True)
        names = []
        for auto in autos:
            if dense_cfg not in auto._model_mapping:
                continue
            try:
                dense_model = auto._model_mapping[dense_cfg]
            except (KeyError, ImportError, AttributeError):
                continue
            twin = dcls_model_class(dense_model)
            auto.register(dcls_cfg, twin, exist_ok=True)
            names.append(twin.__name__)
        _register_preprocessors(dense_cfg, dcls_cfg)
        registered[dcls_cfg.model_type] = sorted(set(names))
    return registered
