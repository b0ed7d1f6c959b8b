"""DclsConfig / DelayConfig: defaults, help metadata, validation messages, dict/JSON round trip, versions."""

from __future__ import annotations

import dataclasses
import json

import pytest

from dclszoo import DclsConfig, DelayConfig, config_from_dict

NON_DEFAULT_DCLS = DclsConfig(kernel_count=34, span=(17, 15), interpolation="gauss", sigma=0.25, learn_sigma=False,
                              targets="all", min_kernel_size=5, share_positions=True)
NON_DEFAULT_DELAY = DelayConfig(max_delay=25, kernel_count=2, sigma=3.5, targets=("linear", "conv"))


def test_defaults_match_the_contract():
    assert dataclasses.asdict(DclsConfig()) == dict(
        kernel_count=None, span=None, interpolation="bilinear", sigma=0.5, learn_sigma=True, targets="depthwise",
        min_kernel_size=3, share_positions=False, version=1)
    assert dataclasses.asdict(DelayConfig(max_delay=7)) == dict(
        max_delay=7, kernel_count=1, sigma=None, targets=("linear",), version=1)
    assert DelayConfig(max_delay=7).initial_sigma == 3.0


@pytest.mark.parametrize("cls", [DclsConfig, DelayConfig])
def test_every_field_has_help(cls):
    helps = cls.help()
    assert list(helps) == [f.name for f in dataclasses.fields(cls)]
    assert all(isinstance(h, str) and len(h) > 10 for h in helps.values())


@pytest.mark.parametrize("config", [DclsConfig(), NON_DEFAULT_DCLS, DclsConfig(span=9), DelayConfig(max_delay=3),
                                    NON_DEFAULT_DELAY], ids=["dcls", "dcls-custom", "dcls-int-span", "delay",
                                                             "delay-custom"])
def test_json_round_trip(config):
    text = config.to_json()
    data = json.loads(text)  # plain JSON: tuples became lists
    assert data["config_type"] == type(config).__name__
    back = type(config).from_json(text)
    assert back == config and type(back.span if isinstance(back, DclsConfig) else back.targets) is type(
        config.span if isinstance(config, DclsConfig) else config.targets)
    assert config_from_dict(data) == config
    assert type(config).from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(kernel_count=0), ValueError, r"DclsConfig\.kernel_count=0: expected an int >= 1.*None"),
        (dict(kernel_count=2.0), ValueError, r"kernel_count=2\.0"),
        (dict(span=0), ValueError, r"DclsConfig\.span=0: expected None, an int >= 1 or a tuple"),
        (dict(span=(7, "7")), ValueError, r"span=\(7, '7'\)"),
        (dict(span=()), ValueError, r"span=\(\)"),
        (dict(interpolation="v1"), ValueError, r"interpolation='v1': expected one of \('gauss', 'bilinear'\)"),
        (dict(sigma=0.0), ValueError, r"sigma=0\.0: expected a positive finite float"),
        (dict(sigma=float("nan")), ValueError, r"sigma=nan"),
        (dict(learn_sigma=1), TypeError, r"learn_sigma=1: expected True or False"),
        (dict(targets="pointwise"), ValueError, r"targets='pointwise': expected one of \('depthwise', 'dense', 'all'\)"),
        (dict(min_kernel_size=0), ValueError, r"min_kernel_size=0: expected an int >= 1"),
        (dict(share_positions="yes"), TypeError, r"share_positions='yes'"),
        (dict(version=0), ValueError, r"version=0: expected an int >= 1"),
        (dict(version=2), ValueError, r"version=2: this dclszoo understands DclsConfig up to version 1; upgrade"),
    ],
)
def test_dcls_config_validation(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        DclsConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(max_delay=0), ValueError, r"DelayConfig\.max_delay=0: expected an int >= 1"),
        (dict(max_delay=5, kernel_count=6), ValueError, r"kernel_count=6 exceeds max_delay=5"),
        (dict(max_delay=5, sigma=-1.0), ValueError, r"sigma=-1\.0: expected None or a positive finite float"),
        (dict(max_delay=5, targets="linear"), TypeError, r"targets='linear': expected a tuple.*\('linear',\)"),
        (dict(max_delay=5, targets=("rnn",)), ValueError, r"targets=\('rnn',\).*\('linear', 'conv'\)"),
        (dict(max_delay=5, targets=()), ValueError, r"non-empty"),
    ],
)
def test_delay_config_validation(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        DelayConfig(**kwargs)


def test_lists_from_json_become_tuples():
    assert DclsConfig(span=[7, 9]).span == (7, 9)
    assert DelayConfig(max_delay=4, targets=["conv"]).targets == ("conv",)


def test_unknown_keys_from_a_newer_version_warn_and_are_dropped():
    data = dict(NON_DEFAULT_DCLS.to_dict(), version=3, new_knob=1.5)
    with pytest.warns(UserWarning, match=r"version 3 is newer.*ignoring key\(s\) \['new_knob'\].*upgrade dclszoo"):
        config = DclsConfig.from_dict(data)
    assert config == NON_DEFAULT_DCLS  # known settings kept, version brought to what this code represents
    with pytest.warns(UserWarning, match=r"version 2 is newer.*no unknown keys"):
        assert DelayConfig.from_json(json.dumps(dict(NON_DEFAULT_DELAY.to_dict(), version=2))) == NON_DEFAULT_DELAY


def test_unknown_keys_in_a_current_config_are_typos():
    with pytest.raises(TypeError, match=r"unknown key\(s\) \['kernel_cout'\] in a version-1 config; valid keys"):
        DclsConfig.from_dict({"kernel_cout": 3, "version": 1})


def test_config_type_is_checked():
    with pytest.raises(ValueError, match=r"config_type='DelayConfig'; use DelayConfig\.from_dict"):
        DclsConfig.from_dict(NON_DEFAULT_DELAY.to_dict())
    with pytest.raises(ValueError, match=r"config_type='LoraConfig'"):
        config_from_dict({"config_type": "LoraConfig"})
    with pytest.raises(TypeError, match="expected a dict, got list"):
        DclsConfig.from_dict([1])
    assert DclsConfig.from_dict({"span": 5}) == DclsConfig(span=5)  # config_type and version are optional
