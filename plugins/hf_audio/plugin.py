"""dclszoo hook implementations of the transformers audio plugin (entry point ``hf_audio`` in the ``dclszoo`` group).

Only hook functions live here; transformers is imported inside them, so this module imports without it.
"""

from __future__ import annotations

from typing import Any, Callable

from dclszoo.hookspecs import hookimpl

NAME = "hf_audio"


@hookimpl
def dclszoo_plugin_info() -> dict[str, Any]:
    from dclszoo.version import __version__

    from .families import FAMILIES

    supports = [f"transformers: {f.name} ({', '.join(f.default) or 'on request'})" for f in FAMILIES.values()]
    return {"name": NAME, "version": __version__,
            "supports": supports + ["transformers: spectrogram classifier with a DCLS timm backbone"]}


@hookimpl
def dclszoo_register() -> None:
    import transformers  # noqa: F401  (ImportError here = transformers not installed; the loader reports it)

    from .models import register_all
    from .spectrogram_model import register_spectrogram

    register_all()
    register_spectrogram()


@hookimpl
def dclszoo_patch(model, config, filter_fn: Callable | None):
    """Patch a transformers audio model for a ``DclsConfig``; None for anything else (other plugins / generic)."""
    from dclszoo.config import DclsConfig

    from .patch import is_audio_model, is_transformers_model

    if not isinstance(config, DclsConfig) or not is_transformers_model(model) or not is_audio_model(model):
        return None
    from .api import _patch

    return _patch(model, config, None, filter_fn)


@hookimpl
def dclszoo_after_unpatch(model) -> None:
    """Back to the dense class and config, weight norms restored."""
    from .patch import is_transformers_model

    if is_transformers_model(model):
        from .models import release

        release(model)


@hookimpl
def dclszoo_describe_model(model):
    """The transformers audio models this plugin serves (its families, dense or DCLS, and the spectrogram
    classifier): their class and ``config.to_dict()`` (see :mod:`.hub`)."""
    from .hub import describe_audio_model

    return describe_audio_model(model)


@hookimpl
def dclszoo_build_model(spec, pretrained):
    """Rebuild through the transformers Auto classes' registered types (never remote code)."""
    from .hub import build_audio_model

    return build_audio_model(spec, pretrained)


@hookimpl
def dclszoo_save_native(model, save_directory):
    """transformers' ``config.json`` next to the weights: the Auto classes load a dclszoo checkpoint too."""
    from .hub import save_audio_config

    return save_audio_config(model, save_directory)
