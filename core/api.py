"""The user API: :func:`patch`, :func:`unpatch`, :func:`to_dense`."""

from __future__ import annotations

import warnings
from typing import Callable

import torch.nn as nn

from . import _plugins
from .config import DclsConfig, DelayConfig
from .patching import patch_generic, replace_modules
from .report import PatchReport

__all__ = ["patch", "unpatch", "to_dense", "is_patched"]

CONFIG_ATTR = "dclszoo_config"


def _patched_modules(model: nn.Module) -> list[str]:
    return [fqn or "<root>" for fqn, m in model.named_modules() if getattr(type(m), "dclszoo_patched", False)]


def is_patched(model: nn.Module) -> bool:
    """Whether ``model`` was patched (has ``dclszoo_config``) or contains dclszoo modules."""
    return hasattr(model, CONFIG_ATTR) or bool(_patched_modules(model))


def patch(model: nn.Module, config: DclsConfig | DelayConfig,
          filter_fn: Callable[[nn.Module, str], bool] | None = None) -> PatchReport:
    """Patch ``model`` in place: dense convolutions -> DCLS (``DclsConfig``), or add delays (``DelayConfig``).

    Plugins are loaded on first use (:func:`dclszoo.enable` with default arguments, unless it was already
    called). The first plugin whose ``dclszoo_patch`` recognises the model handles it; otherwise the generic
    fallback replaces plain ``nn.Conv1d/2d/3d`` (``DclsConfig`` only). The config is stored as
    ``model.dclszoo_config``.

    Args:
        model: The model; modified in place.
        config: What to do.
        filter_fn: ``filter_fn(module, fqn) -> bool``; only modules for which it is True are replaced.

    Returns:
        The :class:`PatchReport`.

    Raises:
        ValueError: ``model`` is already patched, or nothing can handle ``config`` for this model.
        TypeError: wrong argument types.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model={type(model).__name__}: expected a torch.nn.Module.")
    if not isinstance(config, (DclsConfig, DelayConfig)):
        raise TypeError(f"config={config!r}: expected a dclszoo.DclsConfig or dclszoo.DelayConfig.")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"filter_fn={filter_fn!r}: expected a callable (module, fqn) -> bool, or None.")
    if getattr(type(model), "dclszoo_patched", False):
        raise ValueError(f"model is a {type(model).__name__}, already a dclszoo module; nothing to patch.")
    if is_patched(model):
        found = _patched_modules(model)
        where = f" (dclszoo modules at {found[:3]}{' ...' if len(found) > 3 else ''})" if found else ""
        raise ValueError(
            f"model is already patched{where}; patching twice is not supported. Call dclszoo.unpatch(model) first "
            f"to restore plain modules, then patch with the new config."
        )
    pm = _plugins.ensure_enabled()
    report = pm.hook.dclszoo_patch(model=model, config=config, filter_fn=filter_fn)
    if report is None:
        if isinstance(config, DelayConfig):
            loaded = [p.name for p in _plugins.plugins() if p.loaded]
            raise ValueError(
                f"No enabled dclszoo plugin recognised this {type(model).__name__} for DelayConfig (loaded plugins: "
                f"{loaded}); the core has no generic delay patch. For SpikingJelly networks install "
                f"`pip install dclszoo[snn]` and make sure the 'spikingjelly' plugin is enabled (dclszoo.plugins())."
            )
        report = patch_generic(model, config, filter_fn)
    elif not isinstance(report, PatchReport):
        impls = [i.plugin_name for i in pm.hook.dclszoo_patch.get_hookimpls()]
        raise TypeError(
            f"a dclszoo_patch hook returned {type(report).__name__}; expected a PatchReport or None "
            f"(plugins implementing it: {impls})."
        )
    if report.replaced:
        setattr(model, CONFIG_ATTR, config)
    else:
        warnings.warn(
            f"dclszoo.patch: no module of this {type(model).__name__} matched {config!r}"
            f"{' and filter_fn' if filter_fn is not None else ''} (plugin {report.plugin!r}); the model is unchanged.",
            UserWarning,
            stacklevel=2,
        )
    return report


def _densify(model: nn.Module) -> nn.Module:
    if getattr(type(model), "dclszoo_patched", False):
        return model.to_dense()

    def make(module: nn.Module, fqn: str) -> nn.Module | None:
        return module.to_dense() if getattr(type(module), "dclszoo_patched", False) else None

    replace_modules(model, make, plugin="to_dense")
    if CONFIG_ATTR in model.__dict__:
        delattr(model, CONFIG_ATTR)
    pm = _plugins.get_plugin_manager()
    pm.hook.dclszoo_after_unpatch(model=model)
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Undo :func:`patch` in place: every dclszoo module becomes its plain torch equivalent (same output).

    Returns:
        ``model`` (a new module only when ``model`` itself is a dclszoo module).

    Raises:
        ValueError: ``model`` is not patched, or a module has no plain equivalent (its ``to_dense`` explains).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model={type(model).__name__}: expected a torch.nn.Module.")
    if not is_patched(model) and not getattr(type(model), "dclszoo_patched", False):
        raise ValueError(f"model ({type(model).__name__}) is not patched: it has no dclszoo modules to undo.")
    return _densify(model)


def to_dense(model: nn.Module) -> nn.Module:
    """Replace every dclszoo module in ``model`` by its plain torch equivalent, in place (for export).

    Unlike :func:`unpatch`, accepts any model (one built with ``DclsConv2d`` layers directly, or one with none,
    which is returned unchanged).

    Returns:
        ``model`` (a new module only when ``model`` itself is a dclszoo module).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model={type(model).__name__}: expected a torch.nn.Module.")
    return _densify(model)
