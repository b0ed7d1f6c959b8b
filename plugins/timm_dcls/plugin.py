"""dclszoo hook implementations of the timm plugin (entry point ``timm`` in the ``dclszoo`` group).

Only hook functions live here; timm is imported inside them, so this module imports without timm installed.
"""

from __future__ import annotations

from typing import Any, Callable

from dclszoo.hookspecs import hookimpl

NAME = "timm"


@hookimpl
def dclszoo_plugin_info() -> dict[str, Any]:
    from dclszoo.version import __version__

    from .registry import FAMILIES

    return {"name": NAME, "version": __version__, "supports": [f"timm: {family}" for family in FAMILIES]}


@hookimpl
def dclszoo_register() -> None:
    import timm  # noqa: F401  (ImportError here = timm not installed; the loader reports it)

    from .registry import register_all

    register_all()


@hookimpl
def dclszoo_patch(model, config, filter_fn: Callable | None):
    from .patch import is_timm_model, patch_timm_model

    if not is_timm_model(model):
        return None
    return patch_timm_model(model, config, filter_fn)


@hookimpl
def dclszoo_after_unpatch(model) -> None:
    from .patch import clear_timm_metadata, is_timm_model

    if is_timm_model(model):
        clear_timm_metadata(model)


@hookimpl
def dclszoo_describe_model(model):
    from .hub import describe_timm_model

    return describe_timm_model(model)


@hookimpl
def dclszoo_build_model(spec, pretrained):
    from .hub import build_timm_model

    return build_timm_model(spec, pretrained)


@hookimpl
def dclszoo_save_native(model, save_directory):
    from .hub import save_timm_config

    return save_timm_config(model, save_directory)
