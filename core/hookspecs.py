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


# --------------------------------------------------------------------------- saving and loading (dclszoo.hub)


@hookspec(firstresult=True)
def dclszoo_describe_model(model: "nn.Module") -> "dict[str, Any] | None":
    """Say how to rebuild ``model``'s architecture, for :func:`dclszoo.save_pretrained` / ``push_to_hub``.

    Called before saving; the first plugin that recognises the model answers and is recorded as the checkpoint's
    ``plugin``: :func:`dclszoo.from_pretrained` requires that plugin to be installed, and asks it (and only it)
    to rebuild the model with :func:`dclszoo_build_model`. A model no plugin describes is saved as a plain torch
    model (rebuilt from a registered builder, :func:`dclszoo.hub.register_builder`, or from ``model=``).

    Ownership goes by the model's own class, not by the modules inside it: answer for models whose class your zoo
    defines or builds (or plain containers of your zoo's modules), and return None for a model whose class belongs
    to another framework even when it contains your modules -- e.g. a transformers ``PreTrainedModel`` with a timm
    backbone is described by the transformers plugin, which can rebuild it from its config; the timm plugin declines
    it. Then at most one plugin answers, whatever the registration order.

    Args:
        model: The model being saved (patched or not; never wrapped by DDP/FSDP: the caller unwraps it).

    Returns:
        None for "not my model", else a JSON-serialisable dict (every key optional):

        - ``architecture`` (str or None): the zoo's name for the unpatched architecture (timm:
          ``"convnext_atto"``), or None when the zoo has no registry (a SpikingJelly network: rebuilt from a
          builder or ``model=``).
        - ``model_args`` (dict): keyword arguments that rebuild it (timm: ``num_classes``, ``depths``, ...).
        - ``base_model`` / ``base_revision`` (str or None): the zoo-native pretrained checkpoint these
          weights started from (timm: ``pretrained_cfg['hf_hub_id']``); the default base of adapter saves.
        - ``pip`` (str): what to install to load it, for error messages (default: the plugin's distribution).
        - ``tags`` (list of str): extra model-card tags (``"image-classification"``).
    """


@hookspec(firstresult=True)
def dclszoo_build_model(spec: "dict[str, Any]", pretrained: bool) -> "nn.Module | None":
    """Rebuild the model a checkpoint describes; called by :func:`dclszoo.from_pretrained` on the plugin
    recorded in the checkpoint only.

    Args:
        spec: What this plugin's :func:`dclszoo_describe_model` returned when the model was saved: keys
            ``architecture``, ``model_args``, ``base_model``, ``base_revision`` (the last two possibly set by
            the user at save time).
        pretrained: False: weights do not matter (they are loaded from the checkpoint next; build without
            downloading anything). True (adapter checkpoints): load the pretrained weights of
            ``spec['base_model']`` at ``spec['base_revision']``, as the zoo's own loader does.

    Returns:
        The model, unpatched (dclszoo then applies the saved patch config) or already patched with that config
        (e.g. a zoo class that builds DCLS layers itself); None if the spec is not buildable by this plugin (the
        error then tells the user to pass ``model=``).
    """


@hookspec(firstresult=True)
def dclszoo_save_native(model: "nn.Module", save_directory: str) -> "list[str] | None":
    """Write the zoo's own files next to a full dclszoo checkpoint, so the zoo's loader reads it too.

    Called by :func:`dclszoo.save_pretrained` (full checkpoints only, not adapters) on the plugin that described
    the model, after ``model.safetensors`` (the model's ``state_dict``, safetensors metadata ``format: pt``) has
    been written. Example: timm's ``config.json``, so ``timm.create_model("hf-hub:<repo>")`` loads the same repo.

    Returns:
        The names of the files written (listed in ``dclszoo_config.json``), or None.
    """
