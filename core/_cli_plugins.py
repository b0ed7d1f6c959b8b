"""``dclszoo plugins``: the installed plugins, whether they loaded, and what they support."""

from __future__ import annotations

import argparse
import importlib.metadata
import json

from ._cli_common import info

__all__ = ["add_arguments", "run"]

DESCRIPTION = """\
List the dclszoo plugins installed (entry-point group 'dclszoo'), whether each loaded, what it supports, and
what to install when its model zoo is missing. $DCLSZOO_PLUGINS / $DCLSZOO_BLOCK_PLUGINS restrict loading.
"""

_BUILTIN_EXTRAS = {"timm": "timm", "hf_audio": "audio", "spikingjelly": "snn"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _install_hint(name: str) -> str:
    if name in _BUILTIN_EXTRAS:
        return f'pip install "dclszoo[{_BUILTIN_EXTRAS[name]}]"'
    for ep in importlib.metadata.entry_points(group="dclszoo"):
        if ep.name == name and getattr(ep, "dist", None) is not None:
            return f"install what {ep.dist.name} needs (pip install --force-reinstall {ep.dist.name})"
    return "install the model zoo it serves"


def run(args: argparse.Namespace) -> int:
    import warnings

    import dclszoo

    with warnings.catch_warnings(record=True) as caught:  # a broken plugin is reported below, not as a warning
        warnings.simplefilter("always")
        plugins = dclszoo.enable()
    plugins = sorted(plugins, key=lambda p: p.name)
    if args.json:
        info(json.dumps([{"name": p.name, "version": p.version, "loaded": p.loaded, "module": p.module,
                          "supports": list(p.supports), "error": p.error,
                          "install": None if p.loaded else _install_hint(p.name)} for p in plugins], indent=1))
        return 0
    if not plugins:
        info("no dclszoo plugin installed or allowed ($DCLSZOO_PLUGINS); the generic patch of plain torch "
             "convolutions still works.")
    for p in plugins:
        status = "loaded" if p.loaded else "NOT LOADED"
        info(f"{p.name} {p.version or ''} [{status}] ({p.module})")
        for s in p.supports:
            info(f"    {s}")
        if not p.loaded:
            info(f"    error: {p.error}")
            info(f"    fix: {_install_hint(p.name)}")
    for w in caught:
        if "plugin" not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    loaded = sum(p.loaded for p in plugins)
    info(f"{loaded} of {len(plugins)} plugin(s) loaded. Write your own: tests/thirdparty_plugin/ in the dclszoo "
         f"repository is a complete example.")
    return 0
