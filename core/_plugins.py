"""The plugin manager: entry-point discovery, allow/block lists and loud validation.

Plugins are modules registered under the entry-point group ``dclszoo`` (see :mod:`dclszoo.hookspecs`).
:func:`enable` loads them once; nothing is loaded when ``dclszoo`` is imported.

Failure policy (auto-discovered = loaded because no allow-list excluded it; explicit = named in
``enable(only=...)`` or ``$DCLSZOO_PLUGINS``):
  * The plugin module fails to import: a broken plugin. Auto-discovered: ``RuntimeWarning``, the plugin is
    skipped and listed by :func:`plugins` with its error. Explicit: :class:`PluginLoadError`.
  * Its ``dclszoo_register`` raises ``ImportError``: the model zoo it serves is not installed (plugin modules
    import their zoo inside hooks). Auto-discovered: skipped quietly and listed with its error (no warning, so
    users of one zoo are not nagged about the others). Explicit: :class:`PluginLoadError`.
  * A malformed hook (an argument the spec does not provide, or a ``dclszoo_*`` function that matches no
    spec): always ``pluggy.PluginValidationError`` naming plugin, hook and argument, since that is a bug.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import pluggy
from pluggy import PluginValidationError

from . import hookspecs
from ._plugin_validation import validate_plugin as _validate, where as _where
from .hookspecs import HOOK_PREFIX, PROJECT

__all__ = [
    "ENTRY_POINT_GROUP", "ENV_ALLOW", "ENV_BLOCK", "PluginInfo", "PluginLoadError", "PluginValidationError",
    "enable", "plugins", "register_plugin", "get_plugin_manager",
]

ENTRY_POINT_GROUP = PROJECT
ENV_ALLOW = "DCLSZOO_PLUGINS"
ENV_BLOCK = "DCLSZOO_BLOCK_PLUGINS"


@dataclass(frozen=True)
class PluginInfo:
    """A plugin known to dclszoo.

    Attributes:
        name: Registration name (the entry-point name); what ``only=``/``block=`` and the env lists use.
        version: The plugin's version (from ``dclszoo_plugin_info`` or its distribution), or None.
        supports: What it handles, as declared by ``dclszoo_plugin_info``.
        module: Where it lives (``"dclszoo.plugins.timm_dcls.plugin"``).
        error: None if loaded; else why loading failed (the plugin is then not active).
    """

    name: str
    version: str | None
    supports: tuple[str, ...] = ()
    module: str = ""
    error: str | None = None

    @property
    def loaded(self) -> bool:
        """Whether the plugin is active."""
        return self.error is None


class PluginLoadError(ImportError):
    """An explicitly requested plugin could not be imported or set up."""


class _Manager(pluggy.PluginManager):
    """Also treats undecorated ``dclszoo_*`` functions as hook implementations (so typos are caught)."""

    def parse_hookimpl_opts(self, plugin: Any, name: str):
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith(HOOK_PREFIX):
            attr = inspect.getattr_static(plugin, name, None)
            if isinstance(attr, (staticmethod, classmethod)) or inspect.isfunction(attr) or inspect.ismethod(attr):
                return {}
        return opts


class _State:
    def __init__(self) -> None:
        self.manager: _Manager | None = None
        self.infos: dict[str, PluginInfo] = {}
        self.key: tuple | None = None


_STATE = _State()
_LOCK = threading.RLock()


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (created on first use, with the specs of :mod:`dclszoo.hookspecs`)."""
    with _LOCK:
        if _STATE.manager is None:
            pm = _Manager(PROJECT)
            pm.add_hookspecs(hookspecs)
            _STATE.manager = pm
        return _STATE.manager


def _reset() -> None:
    """Forget every plugin and setting (for tests)."""
    with _LOCK:
        _STATE.__init__()


@contextlib.contextmanager
def _isolated() -> Iterator[None]:
    """Run with a fresh plugin state, then put the previous one back (for tests)."""
    with _LOCK:
        saved = dict(vars(_STATE))
        _reset()
    try:
        yield
    finally:
        with _LOCK:
            vars(_STATE).update(saved)


def _call_own(pm: pluggy.PluginManager, plugin: Any, hook_name: str) -> Any:
    """Call ``plugin``'s own implementation of a no-argument hook (None if it has none)."""
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        if impl.plugin is plugin:
            return impl.function()
    return None


def _info(pm: pluggy.PluginManager, plugin: Any, name: str, version: str | None) -> PluginInfo:
    raw = _call_own(pm, plugin, "dclszoo_plugin_info")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PluginValidationError(
            plugin, f"dclszoo plugin {name!r}: dclszoo_plugin_info() returned {type(raw).__name__}, expected a dict "
                    f"with keys name, version, supports."
        )
    supports = raw.get("supports", ())
    if isinstance(supports, str) or not all(isinstance(s, str) for s in supports):
        raise PluginValidationError(
            plugin, f"dclszoo plugin {name!r}: dclszoo_plugin_info()['supports']={supports!r}; expected a list of str."
        )
    version = raw.get("version") or version
    return PluginInfo(name, None if version is None else str(version), tuple(supports), _where(plugin))


def _fail(name: str, module: str, version: str | None, message: str, explicit: bool, cause: BaseException,
          warn: bool = True) -> None:
    if explicit:
        raise PluginLoadError(
            f"{message}. It was requested explicitly (enable(only=...) or ${ENV_ALLOW}); install what it needs "
            f"or leave it out of the list."
        ) from cause
    if warn:
        warnings.warn(f"{message}; plugin skipped (block it with ${ENV_BLOCK}={name} to silence this).",
                      RuntimeWarning, stacklevel=4)
    _STATE.infos[name] = PluginInfo(name, version, (), module, f"{type(cause).__name__}: {cause}")


def register_plugin(plugin: Any, name: str | None = None, *, _version: str | None = None,
                    _explicit: bool = True) -> PluginInfo | None:
    """Register a plugin object (module, class instance) in process, as an entry point would.

    Validates its hooks, registers it, then calls its ``dclszoo_register``.

    Args:
        plugin: The plugin module or object.
        name: Registration name (default: the module's ``__name__``).

    Returns:
        Its :class:`PluginInfo`, or None if ``name`` is blocked.

    Raises:
        pluggy.PluginValidationError: A malformed hook (message names plugin, hook and argument).
        ValueError: ``name`` is already registered.
        PluginLoadError: ``dclszoo_register`` raised ImportError (only when registered explicitly).
    """
    name = name or _where(plugin)
    with _LOCK:
        pm = get_plugin_manager()
        if pm.is_blocked(name):
            return None
        if pm.has_plugin(name):
            raise ValueError(f"dclszoo plugin {name!r} is already registered ({_where(pm.get_plugin(name))}).")
        _validate(pm, plugin, name)
        try:
            pm.register(plugin, name=name)
            pm.check_pending()
        except PluginValidationError as exc:  # pluggy's own checks, should _validate miss something
            pm.unregister(name=name)
            raise PluginValidationError(plugin, f"dclszoo plugin {name!r} ({_where(plugin)}): {exc}") from exc
        try:
            info = _info(pm, plugin, name, _version)
            _call_own(pm, plugin, "dclszoo_register")
        except ImportError as exc:
            pm.unregister(name=name)
            _fail(name, _where(plugin), _version, f"dclszoo plugin {name!r}: dclszoo_register() failed, its model "
                  f"zoo is probably not installed: {exc}", _explicit, exc, warn=False)
            return _STATE.infos.get(name)
        except BaseException:
            pm.unregister(name=name)
            raise
        _STATE.infos[name] = info
        return info


def _split_env(var: str) -> set[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return {n.strip() for n in value.split(",") if n.strip()}


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found:
            if found[ep.name].value != ep.value:
                warnings.warn(f"dclszoo plugin name {ep.name!r} is declared twice ({found[ep.name].value} and "
                              f"{ep.value}); using the first.", RuntimeWarning, stacklevel=3)
            continue
        found[ep.name] = ep
    return found


def _load_entry_point(ep: importlib.metadata.EntryPoint, explicit: bool) -> None:
    version = ep.dist.version if getattr(ep, "dist", None) is not None else None
    try:
        module = ep.load()
    except Exception as exc:
        _fail(ep.name, ep.value, version,
              f"dclszoo plugin {ep.name!r} ({ep.value}) failed to import: {type(exc).__name__}: {exc}", explicit, exc)
        return
    register_plugin(module, ep.name, _version=version, _explicit=explicit)


def enable(only: Iterable[str] | None = None, block: Iterable[str] = ()) -> list[PluginInfo]:
    """Load the plugins of the entry-point group ``dclszoo`` (once; a repeated call is a cheap no-op).

    Each newly loaded plugin is validated, then its ``dclszoo_register`` hook runs. Calls are additive: a
    later call with a wider allow-list loads the rest. Blocking lasts for the process and unloads a plugin
    that is already loaded.

    Args:
        only: Entry-point names to load (an allow-list); overrides ``$DCLSZOO_PLUGINS``. None = all, or the
            names in ``$DCLSZOO_PLUGINS`` when set (an empty value loads none). Allowed plugins are required:
            one that fails to import raises :class:`PluginLoadError`; a name no entry point declares raises
            ValueError (a warning for the env variable).
        block: Names never to load, added to ``$DCLSZOO_BLOCK_PLUGINS``.

    Returns:
        :func:`plugins` after loading.
    """
    if isinstance(only, str) or isinstance(block, str):
        raise TypeError(f"only={only!r}, block={block!r}: pass lists of plugin names, e.g. only=['timm'].")
    allow = set(only) if only is not None else _split_env(ENV_ALLOW)
    blocked = set(block) | (_split_env(ENV_BLOCK) or set())
    key = (None if allow is None else frozenset(allow), frozenset(blocked))
    with _LOCK:
        if _STATE.key == key:
            return list(_STATE.infos.values())
        pm = get_plugin_manager()
        for name in blocked:
            if not pm.is_blocked(name):
                pm.set_blocked(name)
                _STATE.infos.pop(name, None)
        eps = _entry_points()
        if allow is not None:
            registered = {n for n, plugin in pm.list_name_plugin() if plugin is not None}
            missing = sorted(allow - set(eps) - registered)
            if missing:
                msg = (f"dclszoo plugin(s) {missing} requested but not installed; available: {sorted(eps)}. "
                       f"Install the package that provides them or fix the name.")
                if only is not None:
                    raise ValueError(msg)
                warnings.warn(f"${ENV_ALLOW}: {msg}", RuntimeWarning, stacklevel=2)
        for name, ep in eps.items():
            if name in blocked or (allow is not None and name not in allow) or pm.has_plugin(name):
                continue
            if name in _STATE.infos and allow is None:
                continue  # failed before; retried only when requested explicitly
            _STATE.infos.pop(name, None)
            _load_entry_point(ep, explicit=allow is not None)
        _STATE.key = key
        return list(_STATE.infos.values())


def ensure_enabled() -> pluggy.PluginManager:
    """:func:`enable` with default arguments unless enable() was already called; returns the manager."""
    with _LOCK:
        if _STATE.key is None:
            enable()
        return get_plugin_manager()


def plugins() -> list[PluginInfo]:
    """The plugins known so far: loaded ones (``error`` None) and auto-discovered ones that failed to load.

    Does not load anything; call :func:`enable` first.
    """
    with _LOCK:
        return list(_STATE.infos.values())
