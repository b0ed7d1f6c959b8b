"""Validation of a plugin's hook implementations against :mod:`dclszoo.hookspecs`, with clear messages.

Pluggy checks the same things at ``register``; checking first lets the error name the plugin, the hook, the
offending argument and the fix in one line.
"""

from __future__ import annotations

import inspect
from typing import Any

import pluggy
from pluggy import PluginValidationError

from . import hookspecs
from .hookspecs import HOOK_PREFIX

__all__ = ["validate_plugin", "where"]


def where(plugin: Any) -> str:
    """Module name (or class name) of a plugin, for messages."""
    return getattr(plugin, "__name__", None) or type(plugin).__qualname__


def _required_args(func: Any) -> list[str]:
    params = list(inspect.signature(func).parameters.values())
    if params and params[0].name in ("self", "cls") and not inspect.ismethod(func):
        params = params[1:]
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds and p.default is inspect.Parameter.empty]


def validate_plugin(pm: pluggy.PluginManager, plugin: Any, name: str) -> None:
    """Check every hook implementation of ``plugin`` against the specs; raise a clear error on the first bad one."""
    known = sorted(n for n in dir(hookspecs) if n.startswith(HOOK_PREFIX))
    for attr in dir(plugin):
        opts = pm.parse_hookimpl_opts(plugin, attr)
        if opts is None:
            continue
        hook_name = opts.get("specname") or attr
        caller = getattr(pm.hook, hook_name, None)
        if caller is None or not caller.has_spec():
            if opts.get("optionalhook"):
                continue
            fix = "Rename it to one of them"
            fix += f", or drop the '{HOOK_PREFIX}' prefix if it is a helper." if attr.startswith(HOOK_PREFIX) else "."
            raise PluginValidationError(
                plugin,
                f"dclszoo plugin {name!r} ({where(plugin)}): {attr}() implements unknown hook {hook_name!r}. "
                f"Known hooks: {', '.join(known)}. {fix}",
            )
        spec_args = list(caller.spec.argnames) + list(caller.spec.kwargnames)
        extra = [a for a in _required_args(getattr(plugin, attr)) if a not in spec_args]
        if extra:
            raise PluginValidationError(
                plugin,
                f"dclszoo plugin {name!r} ({where(plugin)}): hook {hook_name!r} declares argument(s) "
                f"{', '.join(repr(a) for a in extra)} that the spec does not provide; the spec is "
                f"{hook_name}({', '.join(spec_args)}). Rename the argument(s) to spec names or drop them.",
            )
