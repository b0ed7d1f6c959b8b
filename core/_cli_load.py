"""Where the CLI's models come from: model sources for ``convert``, checkpoint directories for ``inspect`` / ``export``.

A model source (``dclszoo convert MODEL``) is, in this order:

1. ``hf-hub:<repo>`` or ``local-dir:<dir>``: a timm checkpoint (``timm.create_model`` reads the prefix, weights
   included);
2. a directory: timm's (``config.json`` with ``architecture``) or transformers' (``config.json`` with
   ``model_type``), weights included;
3. a name with a ``/``: a transformers Hub id (downloaded, or read from the cache offline);
4. anything else: a timm architecture name (random weights unless ``pretrained``).

A checkpoint directory (``inspect`` / ``export``) is one written by :func:`dclszoo.save_pretrained`, or a timm /
transformers directory of a DCLS model (their own ``save_pretrained``).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from ._cli_common import CliError, require
from ._hub_config import CONFIG_NAME

__all__ = ["build_source", "load_checkpoint", "describe_source"]

TIMM_PREFIXES = ("hf-hub:", "local-dir:")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CliError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CliError(f"{path} holds a JSON {type(data).__name__}; expected an object.")
    return data


def _zoo_of(config: dict) -> str | None:
    if "architecture" in config:
        return "timm"
    if "model_type" in config:
        return "transformers"
    return None


def _load_step(what: str, fn, *args, **kwargs):
    """Run a zoo's loading function; a download / file failure becomes one clear message."""
    try:
        return fn(*args, **kwargs)
    except CliError:
        raise
    except Exception as exc:  # zoo loaders raise OSError, ValueError, HTTP or offline errors of their own
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(f"could not load {what}: {type(exc).__name__}: {text}") from exc


def _timm(name: str, pretrained: bool, kwargs: dict[str, Any]):
    timm = require("timm", f"the timm model {name!r}")
    import dclszoo

    dclszoo.enable()
    if name.endswith("_dcls") and not name.startswith(TIMM_PREFIXES):
        raise CliError(f"{name!r} is already a DCLS architecture; pass the dense one ({name[:-5]!r}), which "
                       f"dclszoo convert patches with your settings.")
    if not name.startswith(TIMM_PREFIXES) and not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=4, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise CliError(f"unknown model {name!r}: not a directory, not a transformers Hub id ('owner/name') and not a "
                       f"timm architecture.{hint} List timm architectures with: python -c \"import timm; "
                       f"print(timm.list_models('convnext*'))\".")
    return _load_step(f"timm model {name!r}", timm.create_model, name, pretrained=pretrained, **kwargs)


def _transformers_class(config):
    """The class that ``config.architectures[0]`` names (DCLS classes are registered with the Auto classes)."""
    import transformers

    arch = (getattr(config, "architectures", None) or [None])[0]
    if arch and hasattr(transformers, arch):
        return getattr(transformers, arch)
    autos = [getattr(transformers, n) for n in ("AutoModelForAudioClassification", "AutoModelForCTC",
                                                "AutoModelForSpeechSeq2Seq", "AutoModelForImageClassification")
             if hasattr(transformers, n)]
    for auto in autos:
        try:
            cls = auto._model_mapping[type(config)]
        except (KeyError, ValueError):
            continue
        if arch is None or getattr(cls, "__name__", None) == arch:
            return cls
    return transformers.AutoModel


def _transformers(ref: str, kwargs: dict[str, Any]):
    transformers = require("transformers", f"the transformers model {ref!r}")
    import dclszoo

    dclszoo.enable()  # registers the <model_type>_dcls types with the Auto classes
    config = _load_step(f"the transformers config of {ref!r}", transformers.AutoConfig.from_pretrained, ref)
    cls = _transformers_class(config)
    extra = {}
    if kwargs.get("num_classes") is not None:
        extra = dict(num_labels=kwargs["num_classes"], ignore_mismatched_sizes=True)
    return _load_step(f"transformers model {ref!r}", cls.from_pretrained, ref, **extra)


def describe_source(source: str) -> str:
    """``"timm"`` or ``"transformers"``: which zoo :func:`build_source` would read ``source`` with."""
    if source.startswith(TIMM_PREFIXES):
        return "timm"
    path = Path(source)
    if path.is_dir():
        if (path / CONFIG_NAME).is_file():
            raise CliError(f"{source!r} is already a dclszoo checkpoint ({CONFIG_NAME}); dclszoo convert takes a dense "
                           f"model. Inspect it with: dclszoo inspect {source}")
        if not (path / "config.json").is_file():
            raise CliError(f"{source!r} is a directory without config.json: not a timm or transformers model "
                           f"directory (expected one written by their save_pretrained / save_for_hf).")
        zoo = _zoo_of(_read_json(path / "config.json"))
        if zoo is None:
            raise CliError(f"{source!r}/config.json names neither 'architecture' (timm) nor 'model_type' "
                           f"(transformers); cannot tell which zoo built it.")
        return zoo
    if path.exists():
        raise CliError(f"{source!r} is a file; expected a model name, a Hub id or a model directory.")
    if "/" in source or "\\" in source:
        if source.startswith((".", "/", "~")) or source.count("/") > 1:
            raise CliError(f"{source!r} does not exist (expected a model directory, a Hub id 'owner/name' or a "
                           f"timm name).")
        return "transformers"
    return "timm"


def build_source(source: str, pretrained: bool = False, num_classes: int | None = None,
                 in_chans: int | None = None):
    """The dense model ``source`` names (see the module docstring); returns ``(model, zoo)``."""
    zoo = describe_source(source)
    if zoo == "timm":
        kwargs: dict[str, Any] = {}
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        if in_chans is not None:
            kwargs["in_chans"] = in_chans
        name = source
        if Path(source).is_dir():
            name, pretrained = f"local-dir:{source}", True
        elif source.startswith(TIMM_PREFIXES):
            pretrained = True
        return _timm(name, pretrained, kwargs), zoo
    if in_chans is not None:
        raise CliError("--in-chans applies to timm models only.")
    return _transformers(source, {"num_classes": num_classes}), zoo


def load_checkpoint(directory: str):
    """Load a (DCLS / delay) model from a checkpoint directory; returns ``(model, format)``.

    Raises:
        CliError: the directory does not exist or holds no model this loader knows, or loading failed.
    """
    path = Path(directory)
    if not path.exists():
        raise CliError(f"{directory!r} does not exist; expected a checkpoint directory (written by dclszoo convert, "
                       f"dclszoo finetune or dclszoo.save_pretrained).")
    if not path.is_dir():
        raise CliError(f"{directory!r} is a file; expected a checkpoint directory (dclszoo.save_pretrained writes "
                       f"one with {CONFIG_NAME} and model.safetensors).")
    has_dclszoo = (path / CONFIG_NAME).is_file()
    native = _read_json(path / "config.json") if (path / "config.json").is_file() else None
    zoo = _zoo_of(native) if native is not None else None
    if not has_dclszoo and zoo is None:
        raise CliError(f"{directory!r} is not a model directory: it has neither {CONFIG_NAME} (dclszoo.save_pretrained) "
                       f"nor a timm / transformers config.json.")
    import dclszoo

    from . import _cli_models  # noqa: F401  (registers the builders of the CLI's own models)

    if has_dclszoo:
        try:
            return dclszoo.from_pretrained(path), "dclszoo"
        except dclszoo.CheckpointError as exc:
            if zoo != "transformers":  # transformers directories reload through their Auto classes below
                raise CliError(str(exc)) from None
    if zoo == "timm":
        return _timm(f"local-dir:{path}", True, {}).eval(), "timm"
    return _transformers(str(path), {}).eval(), "transformers"
