"""Plugin system: entry-point discovery, enable() idempotence, allow/block lists, validation, plugins(), and a
third-party plugin (tests/thirdparty_plugin) found through the entry-point group alone.

Plugins are "installed" the way pip would: a ``<dist>-<version>.dist-info`` with METADATA and entry_points.txt
in a temporary directory put on ``sys.path``. The plugin manager is reset around every test.
"""

from __future__ import annotations

import copy
import importlib.metadata
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import dclszoo
from dclszoo import _plugins

THIRDPARTY = Path(__file__).resolve().parents[1] / "thirdparty_plugin"
BUILTINS = "timm,spikingjelly,hf_audio"
# Modules the tests create or import; dropped from sys.modules after each test.
TEST_MODULES = ("toyzoo", "dclszoo_toyzoo", "tp_")


@pytest.fixture(autouse=True)
def fresh_manager(monkeypatch):
    """A fresh plugin manager; built-in plugins blocked so these tests do not depend on them."""
    monkeypatch.delenv(_plugins.ENV_ALLOW, raising=False)
    monkeypatch.setenv(_plugins.ENV_BLOCK, BUILTINS)
    with _plugins._isolated():
        yield
    for name in list(sys.modules):
        if name.startswith(TEST_MODULES):
            del sys.modules[name]


def install(tmp_path: Path, monkeypatch, dist: str, entry_points: dict[str, str],
            modules: dict[str, str] | None = None, version: str = "1.0") -> Path:
    """Write ``<dist>-<version>.dist-info`` (and plugin modules) into a fresh dir on sys.path, as pip would."""
    site = tmp_path / f"site-{dist}"
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"  # pip's normalised directory name
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[dclszoo]\n{lines}")
    for mod, source in (modules or {}).items():
        (site / f"{mod}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(site))
    return site


def install_toyzoo(tmp_path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(THIRDPARTY))
    install(tmp_path, monkeypatch, "dclszoo_toyzoo", {"toy": "dclszoo_toyzoo"}, version="0.2.0")


GOOD = """
    import dclszoo
    CALLS = []

    @dclszoo.hookimpl
    def dclszoo_register():
        CALLS.append("register")
"""


def names(infos) -> set[str]:
    return {i.name for i in infos}


# --------------------------------------------------------------------------- discovery


def test_builtin_entry_points_are_declared():
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="dclszoo")}
    assert eps.get("timm") == "dclszoo.plugins.timm_dcls.plugin"
    assert eps.get("spikingjelly") == "dclszoo.plugins.spikingjelly_delays.plugin"
    assert eps.get("hf_audio") == "dclszoo.plugins.hf_audio.plugin"


def test_import_does_not_load_plugins(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "tp-good", {"good": "tp_good"}, {"tp_good": GOOD})
    assert dclszoo.plugins() == []
    assert "tp_good" not in sys.modules


def test_entry_point_discovery_registers_and_calls_register(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "tp-good", {"good": "tp_good"}, {"tp_good": GOOD}, version="3.1")
    infos = dclszoo.enable()
    assert names(infos) == {"good"}
    (info,) = infos
    assert info.loaded and info.version == "3.1" and info.module == "tp_good" and info.supports == ()
    assert sys.modules["tp_good"].CALLS == ["register"]
    assert _plugins.get_plugin_manager().has_plugin("good")


def test_enable_is_idempotent_and_does_not_rescan(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "tp-good", {"good": "tp_good"}, {"tp_good": GOOD})
    scans = []
    real = _plugins._entry_points
    monkeypatch.setattr(_plugins, "_entry_points", lambda: scans.append(1) or real())
    first = dclszoo.enable()
    second = dclszoo.enable()
    assert first == second
    assert len(scans) == 1  # the second call did no work
    assert sys.modules["tp_good"].CALLS == ["register"]


def test_enable_is_additive(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "tp-a", {"a": "tp_a"}, {"tp_a": GOOD})
    install(tmp_path, monkeypatch, "tp-b", {"b": "tp_b"}, {"tp_b": GOOD})
    assert names(dclszoo.enable(only=["a"])) == {"a"}
    assert names(dclszoo.enable()) == {"a", "b"}
    assert sys.modules["tp_a"].CALLS == ["register"]  # not registered twice


# --------------------------------------------------------------------------- allow / block


def test_allow_list_argument(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "tp-a", {"a": "tp_a"}, {"tp_a": GOOD})
    install(tmp_path, monkeypatch, "tp-b", {"b": "tp_b"}, {"tp_b": GOOD})
    assert names(dclszoo.enable(only=["b"])) == {"b"}
    assert "tp_a" not in sys.modules


def test_allow_list_env(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "tp-a", {"a": "tp_a"}, {"tp_a": GOOD})
    install(tmp_path, monkeypatch, "tp-b", {"b": "tp_b"}, {"tp_b": GOOD})
    monkeypatch.setenv("DCLSZOO_PLUGINS", " a ")
    assert names(dclszoo.enable()) == {"a"}
    assert "tp_b" not in sys.modules


def test_empty_env_allow_list_loads_nothing(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "tp-a", {"a": "tp_a"}, {"tp_a": GOOD})
    monkeypatch.setenv("DCLSZOO_PLUGINS", "")
    assert dclszoo.enable() == []


def test_only_overrides_env(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "tp-a", {"a": "tp_a"}, {"tp_a": GOOD})
    install(tmp_path, monkeypatch, "tp-b", {"b": "tp_b"}, {"tp_b": GOOD})
    monkeypatch.setenv("DCLSZOO_PLUGINS", "a")
    assert names(dclszoo.enable(only=["b"])) == {"b"}


def test_unknown_name_in_only_raises(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "tp-a", {"a": "tp_a"}, {"tp_a": GOOD})
    with pytest.raises(ValueError, match=r"\['nope'\].*not installed.*available.*'a'"):
        dclszoo.enable(only=["nope"])


def test_unknown_name_in_env_warns(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "tp-a", {"a": "tp_a"}, {"tp_a": GOOD})
    monkeypatch.setenv("DCLSZOO_PLUGINS", "a,nope")
    with pytest.warns(RuntimeWarning, match="DCLSZOO_PLUGINS.*nope"):
        assert names(dclszoo.enable()) == {"a"}


def test_block_argument(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "tp-a", {"a": "tp_a"}, {"tp_a": GOOD})
    install(tmp_path, monkeypatch, "tp-b", {"b": "tp_b"}, {"tp_b": GOOD})
    assert names(dclszoo.enable(block=["a"])) == {"b"}
    assert "tp_a" not in sys.modules


def test_block_env(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "tp-a", {"a": "tp_a"}, {"tp_a": GOOD})
    install(tmp_path, monkeypatch, "tp-b", {"b": "tp_b"}, {"tp_b": GOOD})
    monkeypatch.setenv("DCLSZOO_BLOCK_PLUGINS", f"{BUILTINS},b")
    assert names(dclszoo.enable()) == {"a"}


def test_block_unloads_a_loaded_plugin_and_wins_over_allow(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "tp-a", {"a": "tp_a"}, {"tp_a": GOOD})
    dclszoo.enable()
    assert dclszoo.enable(only=["a"], block=["a"]) == []
    assert not _plugins.get_plugin_manager().has_plugin("a")
    assert dclszoo.plugins() == []


def test_enable_rejects_a_bare_string():
    with pytest.raises(TypeError, match="only='timm'.*lists"):
        dclszoo.enable(only="timm")


# --------------------------------------------------------------------------- failures


def test_auto_discovered_import_failure_warns_and_is_listed(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "tp-ghost", {"ghost": "tp_ghost_not_there"})
    install(tmp_path, monkeypatch, "tp-a", {"a": "tp_a"}, {"tp_a": GOOD})
    with pytest.warns(RuntimeWarning, match="'ghost'.*failed to import.*tp_ghost_not_there"):
        infos = dclszoo.enable()
    by_name = {i.name: i for i in infos}
    assert by_name["a"].loaded
    assert not by_name["ghost"].loaded and "ModuleNotFoundError" in by_name["ghost"].error
    assert by_name["ghost"].version == "1.0"


def test_explicit_import_failure_raises_naming_the_plugin(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "tp-ghost", {"ghost": "tp_ghost_not_there"})
    with pytest.raises(dclszoo.PluginLoadError, match="'ghost'.*failed to import.*requested explicitly"):
        dclszoo.enable(only=["ghost"])
    monkeypatch.setenv("DCLSZOO_PLUGINS", "ghost")
    with pytest.raises(dclszoo.PluginLoadError, match="'ghost'"):
        dclszoo.enable()


def test_register_import_error_is_a_missing_dependency(tmp_path, monkeypatch):
    src = """
        def dclszoo_register():
            import tp_zoo_not_installed
    """
    install(tmp_path, monkeypatch, "tp-needs", {"needs": "tp_needs"}, {"tp_needs": src})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a zoo that is not installed is no reason to nag
        (info,) = dclszoo.enable()
    assert not info.loaded and "tp_zoo_not_installed" in info.error
    assert not _plugins.get_plugin_manager().has_plugin("needs")
    with pytest.raises(dclszoo.PluginLoadError, match="'needs': dclszoo_register.*not installed.*requested explicitly"):
        dclszoo.enable(only=["needs"])


BAD_ARG = """
    import dclszoo

    @dclszoo.hookimpl
    def dclszoo_patch(model, cfg, filter_fn):
        return None
"""
BAD_NAME = """
    def dclszoo_pacth(model, config, filter_fn):
        return None
"""
BAD_UNPREFIXED = """
    import dclszoo

    @dclszoo.hookimpl
    def patch_model(model):
        return None
"""


@pytest.mark.parametrize(
    "source, pattern",
    [
        (BAD_ARG, r"plugin 'broken' \(tp_broken\): hook 'dclszoo_patch' declares argument\(s\) 'cfg'.*"
                  r"dclszoo_patch\(model, config, filter_fn\)"),
        (BAD_NAME, r"plugin 'broken' \(tp_broken\): dclszoo_pacth\(\) implements unknown hook 'dclszoo_pacth'"),
        (BAD_UNPREFIXED, r"plugin 'broken' \(tp_broken\): patch_model\(\) implements unknown hook 'patch_model'"),
    ],
    ids=["wrong-argument", "unknown-prefixed-hook", "unknown-decorated-hook"],
)
def test_malformed_plugin_fails_loudly(tmp_path, monkeypatch, source, pattern):
    install(tmp_path, monkeypatch, "tp-broken", {"broken": "tp_broken"}, {"tp_broken": source})
    with pytest.raises(dclszoo.PluginValidationError, match=pattern):
        dclszoo.enable()  # auto-discovered, and still an error: it is a bug in the plugin
    assert not _plugins.get_plugin_manager().has_plugin("broken")
    assert _plugins.get_plugin_manager().hook.dclszoo_patch.get_hookimpls() == []


def test_pluggy_checks_are_wrapped_with_the_plugin_name():
    class Plugin:
        @dclszoo.hookimpl(wrapper=True)
        def dclszoo_patch(self, model):
            return None

    with pytest.raises(dclszoo.PluginValidationError, match=r"(?s)plugin 'wrap'.*dclszoo_patch.*not a generator"):
        dclszoo.register_plugin(Plugin(), "wrap")
    assert not _plugins.get_plugin_manager().has_plugin("wrap")


def test_patch_hook_returning_garbage_is_reported():
    class Plugin:
        def dclszoo_patch(self, model):
            return {"replaced": []}

    dclszoo.register_plugin(Plugin(), "garbage")
    with pytest.raises(TypeError, match=r"dclszoo_patch hook returned dict; expected a PatchReport.*'garbage'"):
        dclszoo.patch(nn.Sequential(nn.Conv2d(2, 2, 3, groups=2)), dclszoo.DclsConfig())


def test_register_plugin_in_process_with_an_object():
    class Plugin:
        def __init__(self):
            self.registered = 0

        def dclszoo_plugin_info(self):
            return {"version": "9", "supports": ["nothing"]}

        def dclszoo_register(self):
            self.registered += 1

    plugin = Plugin()
    info = dclszoo.register_plugin(plugin, "obj")
    assert (info.name, info.version, info.supports, info.error) == ("obj", "9", ("nothing",), None)
    assert plugin.registered == 1 and dclszoo.plugins() == [info]
    with pytest.raises(ValueError, match="'obj' is already registered"):
        dclszoo.register_plugin(Plugin(), "obj")


def test_plugin_info_is_validated():
    class Plugin:
        def dclszoo_plugin_info(self):
            return {"supports": "timm"}

    with pytest.raises(dclszoo.PluginValidationError, match=r"'bad'.*supports.*'timm'.*list of str"):
        dclszoo.register_plugin(Plugin(), "bad")
    assert not _plugins.get_plugin_manager().has_plugin("bad")


# --------------------------------------------------------------------------- the third-party example


def test_thirdparty_plugin_listed_and_registered(tmp_path, monkeypatch):
    install_toyzoo(tmp_path, monkeypatch)
    infos = dclszoo.enable()
    assert infos == [dclszoo.PluginInfo("toy", "0.2.0", ("toyzoo: ToyNet",), "dclszoo_toyzoo")]
    assert dclszoo.plugins() == infos
    import toyzoo

    assert toyzoo.REGISTRY == ["toynet_dcls"]
    dclszoo.enable()
    assert toyzoo.REGISTRY == ["toynet_dcls"]


def test_patch_dispatches_to_thirdparty_plugin(tmp_path, monkeypatch):
    install_toyzoo(tmp_path, monkeypatch)
    import toyzoo

    torch.manual_seed(0)
    model = toyzoo.ToyNet()
    reference = copy.deepcopy(model)
    x = torch.randn(2, 2, 9, 9)
    report = dclszoo.patch(model, dclszoo.DclsConfig(span=7))  # enables plugins on first use
    assert report.plugin == "toy"
    assert [(r.name, r.old, r.new) for r in report.replaced] == [
        ("mixers.0", "ToyMixer", "DclsConv2d"), ("mixers.1", "ToyMixer", "DclsConv2d")]
    assert all(isinstance(m, dclszoo.DclsConv2d) and m.span == (7, 7) for m in model.mixers)
    torch.testing.assert_close(model(x), reference(x))
    # back to plain torch convolutions with the same output
    dclszoo.unpatch(model)
    assert all(type(m) is nn.Conv2d for m in model.mixers)
    torch.testing.assert_close(model(x), reference(x))


def test_without_the_plugin_the_generic_fallback_finds_nothing(tmp_path, monkeypatch):
    install_toyzoo(tmp_path, monkeypatch)
    import toyzoo

    dclszoo.enable(block=["toy"])
    model = toyzoo.ToyNet()
    with pytest.warns(UserWarning, match="no module of this ToyNet matched"):
        report = dclszoo.patch(model, dclszoo.DclsConfig())
    assert report.plugin == "generic" and report.replaced == []
    assert not dclszoo.is_patched(model)


def test_plugin_declines_other_models_and_configs(tmp_path, monkeypatch):
    install_toyzoo(tmp_path, monkeypatch)
    dclszoo.enable()
    plain = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4))
    assert dclszoo.patch(plain, dclszoo.DclsConfig()).plugin == "generic"
    import toyzoo

    with pytest.raises(ValueError, match="No enabled dclszoo plugin recognised this ToyNet for DelayConfig"):
        dclszoo.patch(toyzoo.ToyNet(), dclszoo.DelayConfig(max_delay=5))


def test_plugins_is_callable_after_importing_the_plugins_package():
    import dclszoo.plugins as package

    assert dclszoo.plugins is package and dclszoo.plugins() == []
