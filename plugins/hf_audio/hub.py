"""Saving and rebuilding transformers audio models for :mod:`dclszoo.hub` (the plugin's describe / build /
save-native hooks).

A model of a supported family (dense ``wav2vec2`` or DCLS ``wav2vec2_dcls``, ...; :mod:`.families`) or the
spectrogram classifier (``spectrogram_dcls``) is described by its class name and its transformers config:
``architecture = "DclsWav2Vec2ForSequenceClassification"``, ``model_args = {"config": config.to_dict(),
"patch_config": ...}``. The config of a DCLS model type carries the resolved patch spec (``config.dcls``: which
convolutions, which geometry), so the class built from it already has the saved DCLS layers; ``patch_config`` is
the ``model.dclszoo_config`` it was saved with (the core checks it against the checkpoint's).

Rebuilding never runs or imports code a checkpoint names: the config class is looked up by ``model_type`` among the
types transformers has registered (``CONFIG_MAPPING``, which ``dclszoo.enable()`` extends with the DCLS types), and
only for the model types this plugin serves; the model class is the one an ``AutoModel*`` class maps that config
class to, matched by name, built with ``from_config(trust_remote_code=False)`` (an ``auto_map`` key in the saved
config is dropped). For adapters (``pretrained=True``) the class's ``from_pretrained`` loads the base checkpoint the
model started from (``config._name_or_path``: a Hub id, optionally ``@revision``, or a local directory), dense or
DCLS, and converts it with the saved spec.

Full checkpoints also get transformers' own ``config.json`` (and ``generation_config.json`` for generative
models): ``AutoModelForAudioClassification.from_pretrained(<dclszoo checkpoint>)`` reads the same directory or repo.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import torch.nn as nn

from .families import SPECTROGRAM_TYPE, dense_model_type, family_for
from .patch import is_transformers_model

__all__ = ["owns_model", "describe_audio_model", "build_audio_model", "save_audio_config"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DROPPED_KEYS = ("_name_or_path", "auto_map")  # a local path; remote-code pointers are never followed
_TASK_TAGS = (("ForAudioClassification", "audio-classification"),
              ("ForSequenceClassification", "audio-classification"),
              ("ForCTC", "automatic-speech-recognition"), ("ForSpeechToText", "automatic-speech-recognition"),
              ("ForConditionalGeneration", "automatic-speech-recognition"), ("ForXVector", "audio-xvector"),
              ("ForAudioFrameClassification", "audio-frame-classification"),
              ("FastSpeech2Conformer", "text-to-speech"))


def _served(model_type: Any) -> bool:
    """Whether this plugin serves ``model_type``: a supported family (dense or DCLS) or the spectrogram type."""
    return isinstance(model_type, str) and (model_type == SPECTROGRAM_TYPE or family_for(model_type) is not None)


def owns_model(model: nn.Module) -> bool:
    """Whether ``model`` is a transformers model of a type this plugin serves (see the module docstring)."""
    return is_transformers_model(model) and _served(getattr(getattr(model, "config", None), "model_type", None))


def registered_class(config_cls: type, architecture: str) -> tuple[type, type] | None:
    """``(Auto class, model class)``: the model class named ``architecture`` that an ``AutoModel*`` class maps
    ``config_cls`` to, or None."""
    from .models import _auto_model_classes

    for auto in _auto_model_classes():
        mapping = auto._model_mapping
        if config_cls not in mapping:
            continue
        try:
            cls = mapping[config_cls]
        except (KeyError, ImportError, AttributeError):
            continue
        if isinstance(cls, type) and cls.__name__ == architecture:
            return auto, cls
    return None


def _base(config) -> tuple[str | None, str | None]:
    """The checkpoint the model was loaded from (``from_pretrained``'s argument), as ``(base, revision)``."""
    ref = str(getattr(config, "_name_or_path", "") or "")
    repo, _, revision = ref.partition("@")
    if _REPO_ID.match(repo) and not Path(repo).exists():
        return repo, revision or None
    if ref and Path(ref).is_dir():
        return str(Path(ref).resolve()), None
    return None, None


def _tags(model: nn.Module) -> list[str]:
    name = type(model).__name__
    return ["transformers", "audio"] + [tag for suffix, tag in _TASK_TAGS if suffix in name][:1]


def describe_audio_model(model: nn.Module) -> dict[str, Any] | None:
    """The ``dclszoo_describe_model`` answer for the transformers models this plugin serves (None for others).

    A class that no ``AutoModel*`` class maps its config to is described with ``architecture=None`` (reloaded with
    ``from_pretrained(..., model=...)``).
    """
    if not owns_model(model):
        return None
    config = model.config
    out: dict[str, Any] = {"pip": "dclszoo[audio]", "tags": _tags(model)}
    base, revision = _base(config)
    out.update(base_model=base, base_revision=revision)
    if registered_class(type(config), type(model).__name__) is None:
        return dict(out, architecture=None)
    data = {k: v for k, v in config.to_dict().items() if k not in _DROPPED_KEYS}
    own = getattr(model, "dclszoo_config", None)
    patch_config = own.to_dict() if hasattr(own, "to_dict") else None
    return dict(out, architecture=type(model).__name__, model_args={"config": data, "patch_config": patch_config})


def _error(message: str) -> Exception:
    from dclszoo.hub import CheckpointError

    return CheckpointError(message)


def _config(architecture: str, model_args: dict):
    """The transformers config a checkpoint describes, and the registered class it builds.

    Raises:
        CheckpointError: a malformed description, a model type this plugin does not serve or transformers does not
            know, or a class that is not registered for it.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    data = model_args.get("config")
    model_type = data.get("model_type") if isinstance(data, dict) else None
    if not _served(model_type):
        raise _error(
            f"model_args.config.model_type={model_type!r} is not a model type the dclszoo hf_audio plugin rebuilds "
            f"(supported: the families of dclszoo.plugins.hf_audio.supported_model_types(), dense or '<type>_dcls', "
            f"and {SPECTROGRAM_TYPE!r}); the checkpoint's dclszoo_config.json was edited or written for another "
            f"plugin."
        )
    try:
        config_cls = CONFIG_MAPPING[model_type]
    except KeyError:
        import transformers

        raise _error(f"model_type {model_type!r} ({dense_model_type(model_type)!r}) is not known to transformers "
                     f"{transformers.__version__}; upgrade transformers.") from None
    found = registered_class(config_cls, architecture)
    if found is None:
        raise _error(f"architecture {architecture!r} is not a model class the transformers Auto classes register for "
                     f"model_type {model_type!r}; the checkpoint was written for another version of transformers or "
                     f"dclszoo, or edited.")
    data = {k: v for k, v in data.items() if k not in _DROPPED_KEYS}
    try:
        config = config_cls.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise _error(f"model_args.config does not make a {config_cls.__name__}: {exc}") from None
    return config, found


def build_audio_model(spec: dict[str, Any], pretrained: bool) -> nn.Module | None:
    """The ``dclszoo_build_model`` answer: the registered class built from the saved config (DCLS layers in place,
    untrained) or, for adapters, loaded from the base checkpoint and converted with the saved patch spec."""
    from dclszoo.config import config_from_dict

    architecture, model_args = spec.get("architecture"), spec.get("model_args") or {}
    if not architecture:
        return None
    config, (auto, cls) = _config(architecture, model_args)
    if not pretrained:
        model = auto.from_config(config, trust_remote_code=False)
    else:
        base, revision = spec.get("base_model"), spec.get("base_revision")
        if not base:
            return None
        kwargs = {"revision": revision} if revision else {}
        # the head may differ from the base's (a new task): re-initialised here, overwritten by the adapter
        model = cls.from_pretrained(base, config=config, ignore_mismatched_sizes=True, **kwargs)
    if type(model) is not cls:
        raise _error(f"transformers built a {type(model).__name__} from the saved config, expected {cls.__name__}.")
    patch_config = model_args.get("patch_config")
    model.__dict__.pop("dclszoo_config", None)
    if patch_config is not None:
        try:
            model.__dict__["dclszoo_config"] = config_from_dict(patch_config)
        except (TypeError, ValueError) as exc:
            raise _error(f"model_args.patch_config is invalid: {exc}") from None
    return model


def save_audio_config(model: nn.Module, save_directory: str) -> list[str] | None:
    """The ``dclszoo_save_native`` answer: transformers' ``config.json`` (``architectures`` naming the model's class)
    and, for generative models, ``generation_config.json``."""
    if not owns_model(model):
        return None
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    config.save_pretrained(save_directory)
    files = ["config.json"]
    generation = getattr(model, "generation_config", None)
    if generation is not None and callable(getattr(model, "can_generate", None)) and model.can_generate():
        generation.save_pretrained(save_directory)
        files.append("generation_config.json")
    return files
