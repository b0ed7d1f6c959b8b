"""Hook specifications of dclszoo (project name ``"dclszoo"``).

A plugin is any module (or object) registered through the entry-point group ``dclszoo``::

    [project.entry-points.dclszoo]
    mymodels = "mypackage.dclszoo_plugin"

Its hook implementations are functions named after the specs below. They may be decorated with
:data:`hookimpl` (``from dclszoo import hookimpl``); an undecorated module-level function whose name starts
with ``dclszoo_`` is treated as a hook implementation too, so a plugin does not even need to import dclszoo.
An implementation may take any subset of the spec's arguments, by name. Validation is strict: an argument the
spec does not provide, or a ``dclszoo_*`` function that matches no spec, makes registration fail with a
message naming the plugin, the hook and the argument.

A plugin module must import without the model zoo it supports installed: import timm, transformers,
spikingjelly, ... inside the hook functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import torch.nn as nn

    from .report import PatchReport

__all__ = ["PROJECT", "HOOK_PREFIX", "hookspec", "hookimpl"]

PROJECT = "dclszoo"
HOOK_PREFIX = "dclszoo_"

hookspec = pluggy.HookspecMarker(PROJECT)
"""Marker for hook specifications (this module only)."""

hookimpl = pluggy.HookimplMarker(PROJECT)
"""Marker for hook implementations in plugins: ``@dclszoo.hookimpl`` (``tryfirst=True`` etc. work)."""


@hookspec
def dclszoo_plugin_info() -> dict[str, Any]:
    """Describe the plugin for :func:`dclszoo.plugins`.

    Returns:
        A dict with keys ``name`` (str), ``version`` (str) and ``supports`` (list of str: the model families or
        layer kinds the plugin handles, e.g. ``["timm: ConvNeXt", "timm: EfficientNet"]``). Missing keys
        default to the entry-point name, the distribution's version and ``[]``.
    """


@hookspec
def dclszoo_register() -> None:
    """Register what the plugin adds to its zoo; called once, when :func:`dclszoo.enable` loads the plugin.

    Examples: register ``<arch>_dcls`` names with timm's model registry, or DCLS model classes with the
    transformers ``Auto*`` classes. An ``ImportError`` raised here (the zoo package is not installed) is
    treated like a failed plugin import: a warning for an auto-discovered plugin, an error for one requested
    explicitly.
    """


@hookspec(firstresult=True)
def dclszoo_patch(
    model: "nn.Module", config: Any, filter_fn: "Callable[[nn.Module, str], bool] | None"
) -> "PatchReport | None":
    """Patch ``model`` in place if this plugin recognises it.

    Called by :func:`dclszoo.patch`; the first implementation that returns a report wins (newest plugin
    first, ``tryfirst``/``trylast`` respected). Use :func:`dclszoo.replace_modules` so reports are uniform.

    Args:
        model: The model to patch (the root module; never already patched).
        config: A :class:`dclszoo.DclsConfig` or :class:`dclszoo.DelayConfig` (or a plugin's own config type).
        filter_fn: ``filter_fn(module, fqn) -> bool`` or None; only modules for which it returns True may be
            replaced.

    Returns:
        A :class:`dclszoo.PatchReport`, or None for "not my model / not my config" (the next plugin, then the
        generic fallback for plain torch convolutions, is tried).
    """


@hookspec
def dclszoo_after_unpatch(model: "nn.Module") -> None:
    """Called by :func:`dclszoo.unpatch` / :func:`dclszoo.to_dense` after the dclszoo modules were replaced.

    For bookkeeping a zoo needs after modules are swapped back (e.g. SpikingJelly's reset cache, timm's
    ``pretrained_cfg['architecture']``). Every implementation is called; return values are ignored.
    """
