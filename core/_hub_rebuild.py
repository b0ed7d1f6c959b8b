"""How a saved model is rebuilt: plugin descriptions, registered builders, and the plugin check at load time.

Saving asks the plugins to describe the model (hook ``dclszoo_describe_model``, first answer wins); the answering
plugin is recorded. Loading requires that plugin to be enabled and asks it alone to build the model (hook
``dclszoo_build_model``). Models no zoo registry can rebuild (a SpikingJelly network, a plain torch module) are
rebuilt from a **builder**: a function registered with :func:`register_builder` in the loading process. The
checkpoint stores only the builder's name and JSON arguments; dclszoo never imports a module or calls a function
named by a downloaded file (the module name is stored only to say what to import).
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
from typing import Any, Callable

import torch.nn as nn

from . import _plugins
from ._hub_config import CheckpointConfig, first_non_json
from ._safe_io import CheckpointError

__all__ = ["register_builder", "registered_builders", "describe", "build", "save_native", "require_plugin",
           "BUILDER_ATTR"]

BUILDER_ATTR = "dclszoo_builder"
_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


# --------------------------------------------------------------------------- builders


def register_builder(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None):
    """Register a model-building function so that checkpoints of the models it builds can be reloaded.

    Use as a decorator (``@dclszoo.hub.register_builder`` or ``@register_builder(name="snn")``). Calling the
    decorated function builds the model as before and records ``{name, kwargs}`` on it (attribute
    ``dclszoo_builder``; every argument with its default filled in, so later default changes do not alter
    reloads). :func:`dclszoo.save_pretrained` stores that record and :func:`dclszoo.from_pretrained` calls the
    builder registered under the same name, in the loading process, with the same arguments.

    Args:
        fn: The function; its arguments must be JSON values (numbers, strings, lists, dicts, None).
        name: Registry name (default ``fn.__name__``).

    Returns:
        The wrapped function (or a decorator when ``fn`` is None).

    Raises:
        ValueError: ``name`` is already registered to another function.
        TypeError: ``fn`` takes positional-only or ``*args`` parameters (they cannot be stored by name).
    """
    def wrap(func: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or func.__name__
        sig = inspect.signature(func)
        bad = [p.name for p in sig.parameters.values()
               if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL)]
        if bad:
            raise TypeError(f"register_builder({key!r}): parameter(s) {bad} are positional-only or *args; a builder "
                            f"is called by keyword on reload, so make them ordinary parameters.")
        where = f"{func.__module__}.{func.__qualname__}"
        old = _BUILDERS.get(key)
        if old is not None and getattr(old, "_dclszoo_where", None) != where:
            raise ValueError(f"builder name {key!r} is already registered by {old._dclszoo_where}; pass "
                             f"register_builder(name=...) to register {where} under another name.")

        @functools.wraps(func)
        def builder(*args: Any, **kwargs: Any) -> nn.Module:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            recorded = dict(bound.arguments)
            for p in sig.parameters.values():
                if p.kind is inspect.Parameter.VAR_KEYWORD:
                    recorded.update(recorded.pop(p.name, {}))
            bad = first_non_json(recorded)
            if bad is not None:
                raise TypeError(f"builder {key!r}: argument {bad[0]}={bad[1]!r} is not a JSON value; a checkpoint "
                                f"stores builder arguments as JSON (pass a name or number instead).")
            model = func(*bound.args, **bound.kwargs)
            if not isinstance(model, nn.Module):
                raise TypeError(f"builder {key!r} returned {type(model).__name__}; expected an nn.Module.")
            model.__dict__[BUILDER_ATTR] = {"name": key, "kwargs": recorded, "module": func.__module__}
            return model

        builder._dclszoo_where = where  # type: ignore[attr-defined]
        _BUILDERS[key] = builder
        return builder

    return wrap if fn is None else wrap(fn)


def registered_builders() -> list[str]:
    """Names of the builders registered in this process."""
    return sorted(_BUILDERS)


def _from_builder(record: dict, where: str) -> nn.Module:
    name = record["name"]
    fn = _BUILDERS.get(name)
    if fn is None:
        module = record.get("module") or "the module that defines it"
        raise CheckpointError(
            f"{where} is rebuilt by the builder {name!r} (defined in {module!r}), which is not registered in this "
            f"process (registered: {registered_builders()}). Import {module!r} (it registers the builder with "
            f"@dclszoo.hub.register_builder), or pass model=<an unpatched instance> to from_pretrained. dclszoo "
            f"never imports code named by a checkpoint."
        )
    kwargs = record.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{where}: builder kwargs={kwargs!r}; expected a JSON object.")
    return fn(**kwargs)


# --------------------------------------------------------------------------- plugin hooks


def _impls(hook_name: str) -> list:
    """Implementations of a hook in pluggy's call order (last registered / tryfirst first)."""
    pm = _plugins.ensure_enabled()
    return list(reversed(getattr(pm.hook, hook_name).get_hookimpls()))


def _call(impl, **kwargs: Any) -> Any:
    return impl.function(*[kwargs[a] for a in impl.argnames])


def _distribution(plugin: str) -> str | None:
    """The name of the distribution that provides ``plugin``'s entry point (None if none does)."""
    for ep in importlib.metadata.entry_points(group=_plugins.ENTRY_POINT_GROUP):
        if ep.name == plugin and getattr(ep, "dist", None) is not None:
            return ep.dist.name
    return None


def describe(model: nn.Module) -> tuple[str | None, dict]:
    """``(plugin name or None, description)`` of ``model`` (see ``dclszoo_describe_model``)."""
    for impl in _impls("dclszoo_describe_model"):
        spec = _call(impl, model=model)
        if spec is None:
            continue
        if not isinstance(spec, dict):
            raise TypeError(f"dclszoo plugin {impl.plugin_name!r}: dclszoo_describe_model returned "
                            f"{type(spec).__name__}; expected a dict or None.")
        spec = dict(spec)
        if "pip" not in spec:  # the entry points are scanned only for a plugin that does not say it
            spec["pip"] = _distribution(impl.plugin_name)
        info = {p.name: p for p in _plugins.plugins()}.get(impl.plugin_name)
        spec["plugin_version"] = info.version if info is not None else None
        return impl.plugin_name, spec
    return None, {}


def require_plugin(config: CheckpointConfig, where: str) -> None:
    """Raise :class:`CheckpointError` unless the plugin ``config`` names is enabled (what to install if not)."""
    if config.plugin is None:
        return
    pm = _plugins.ensure_enabled()
    if pm.get_plugin(config.plugin) is not None:
        return
    infos = {p.name: p for p in _plugins.plugins()}
    enabled = sorted(n for n, p in infos.items() if p.loaded)
    saved = f" {config.plugin_version}" if config.plugin_version else ""
    if config.plugin in infos and not infos[config.plugin].loaded:
        why = f"it is installed but failed to load ({infos[config.plugin].error})"
    elif pm.is_blocked(config.plugin):
        why = f"it is blocked (${_plugins.ENV_BLOCK} or enable(block=...)); unblock it"
    else:
        why = "it is not installed"
    pip = (f"pip install {config.pip!r}" if config.pip
           else f"install the package that provides dclszoo plugin {config.plugin!r}")
    raise CheckpointError(
        f"{where} was saved with the dclszoo plugin {config.plugin!r}{saved}, and {why}. Enabled plugins: "
        f"{enabled}. To load it: {pip}."
    )


def _plugin_impl(hook_name: str, plugin: str):
    for impl in _impls(hook_name):
        if impl.plugin_name == plugin:
            return impl
    return None


def build(config: CheckpointConfig, pretrained: bool, where: str) -> nn.Module:
    """Build the model ``config`` describes: its builder, else its plugin's ``dclszoo_build_model``. With
    ``pretrained`` (the zoo-native base of an adapter) only the plugin can: a builder makes untrained weights."""
    if config.builder is not None and not pretrained:
        return _from_builder(config.builder, where)
    model = None
    if config.plugin is not None and config.architecture is not None:
        impl = _plugin_impl("dclszoo_build_model", config.plugin)
        if impl is not None:
            spec = {"architecture": config.architecture, "model_args": dict(config.model_args),
                    "base_model": config.base_model, "base_revision": config.base_revision}
            model = _call(impl, spec=spec, pretrained=pretrained)
            if model is not None and not isinstance(model, nn.Module):
                raise TypeError(f"dclszoo plugin {config.plugin!r}: dclszoo_build_model returned "
                                f"{type(model).__name__}; expected an nn.Module or None.")
    if model is None and pretrained:
        raise CheckpointError(
            f"{where} is an adapter on {config.base_model!r}"
            + (f" (revision {config.base_revision!r})" if config.base_revision else "")
            + (f", which its plugin {config.plugin!r} cannot load" if config.plugin else
               ", which dclszoo cannot load without a plugin (a builder makes untrained weights)")
            + ". Pass model=<the base model with its weights> to from_pretrained."
        )
    if model is None:
        what = f"architecture {config.architecture!r}" if config.architecture else f"a {config.model_class or 'model'}"
        by = f"plugin {config.plugin!r}" if config.plugin else "no plugin"
        raise CheckpointError(
            f"{where} holds {what} ({by}) that dclszoo cannot rebuild by itself: it was saved without a registered "
            f"builder. Pass model=<an unpatched (or identically patched) instance> to from_pretrained, or build "
            f"such models with a function decorated by @dclszoo.hub.register_builder before saving."
        )
    return model


def save_native(plugin: str | None, model: nn.Module, directory: str) -> list[str]:
    """Let the describing plugin write its zoo's own files; returns their names."""
    if plugin is None:
        return []
    impl = _plugin_impl("dclszoo_save_native", plugin)
    if impl is None:
        return []
    files = _call(impl, model=model, save_directory=directory) or []
    if not isinstance(files, (list, tuple)) or not all(isinstance(f, str) for f in files):
        raise TypeError(f"dclszoo plugin {plugin!r}: dclszoo_save_native returned {files!r}; expected a list of names.")
    return list(files)
