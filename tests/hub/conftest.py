"""Fixtures of the Hub tests: the toy third-party plugin installed as pip would, and a fresh plugin state."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dclszoo import _plugins

HERE = Path(__file__).resolve().parent
TOYZOO = HERE.parent / "thirdparty_plugin"
TOY_MODULES = ("toyzoo", "dclszoo_toyhub")


def install_dist(site: Path, dist: str, entry_points: dict[str, str], version: str = "1.0") -> None:
    """Write ``<dist>-<version>.dist-info`` declaring ``entry_points`` in the ``dclszoo`` group into ``site``."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[dclszoo]\n{lines}")


@pytest.fixture
def fresh_plugins(monkeypatch):
    """A fresh plugin manager for the test (the process-wide one is put back afterwards)."""
    monkeypatch.delenv(_plugins.ENV_ALLOW, raising=False)
    monkeypatch.delenv(_plugins.ENV_BLOCK, raising=False)
    with _plugins._isolated():
        yield
    for name in list(sys.modules):
        if name.startswith(TOY_MODULES):
            del sys.modules[name]


@pytest.fixture
def toyhub(tmp_path, monkeypatch, fresh_plugins):
    """The ``dclszoo-toyhub`` distribution (entry point ``toyhub``) on sys.path, with the toy zoo it serves."""
    site = tmp_path / "site-toyhub"
    install_dist(site, "dclszoo-toyhub", {"toyhub": "dclszoo_toyhub"}, version="0.3.0")
    monkeypatch.syspath_prepend(str(TOYZOO))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(HERE))
    return site
