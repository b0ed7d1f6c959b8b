"""Safe loading: pickles refused (and never executed), truncated / corrupt files, invalid configs, newer versions,
unknown plugins or builders, key and shape mismatches: each a clear CheckpointError, nothing half-loaded."""

from __future__ import annotations

import json
import pickle
import uuid
from pathlib import Path

import pytest
import torch

import dclszoo
from dclszoo import DclsConfig
from dclszoo.hub import CONFIG_NAME, CheckpointError

import hub_zoo
from hub_zoo import perturb, run

X = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def saved(tmp_path) -> tuple[Path, torch.Tensor]:
    """A patched plain-torch model saved to ``tmp_path / 'ckpt'``, and its output on X."""
    torch.manual_seed(0)
    model = hub_zoo.small_cnn(channels=4)
    dclszoo.patch(model, DclsConfig(span=7))
    perturb(model)
    return dclszoo.save_pretrained(model, tmp_path / "ckpt"), run(model, X)


def _edit_config(path: Path, **changes) -> None:
    data = json.loads((path / CONFIG_NAME).read_text())
    data.update(changes)
    (path / CONFIG_NAME).write_text(json.dumps(data))


def _skeleton():
    torch.manual_seed(3)
    return hub_zoo.small_cnn(channels=4)


class _Exploit:
    """Unpickling this calls ``open(marker, 'w')``: a stand-in for arbitrary code in a malicious pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's restricted unpickler on the exploit file
def test_pickle_weights_are_refused_unless_allowed_and_never_executed(saved, tmp_path):
    ckpt, expected = saved
    from safetensors.torch import load_file

    torch.save(load_file(ckpt / "model.safetensors"), ckpt / "model.bin")
    (ckpt / "model.safetensors").unlink()
    _edit_config(ckpt, weights="model.bin", weights_sha256=None)
    with pytest.raises(CheckpointError, match=r"'model.bin', a pickle-based file.*allow_pickle=True"):
        dclszoo.from_pretrained(ckpt)
    assert torch.equal(run(dclszoo.from_pretrained(ckpt, allow_pickle=True), X), expected)

    marker = tmp_path / "pwned"
    with open(ckpt / "model.bin", "wb") as fh:
        pickle.dump({"0.weight": _Exploit(marker)}, fh)
    with pytest.raises(CheckpointError, match="allow_pickle"):
        dclszoo.from_pretrained(ckpt)
    with pytest.raises(CheckpointError, match=r"weights_only=True\) refused"):
        dclszoo.from_pretrained(ckpt, allow_pickle=True)
    assert not marker.exists()


def test_truncated_or_corrupt_weights_leave_the_model_untouched(saved):
    ckpt, _ = saved
    weights = ckpt / "model.safetensors"
    good = weights.read_bytes()
    cases = {
        "truncated": good[:-40],
        "header": good[:8] + b"{not json" + good[17:],
        "short": good[:5],
        "bit flip": good[:-3] + bytes([good[-3] ^ 0xFF]) + good[-2:],
        "trailing": good + b"\0" * 16,
    }
    expected = {"truncated": "truncated", "header": "not valid JSON", "short": "truncated",
                "bit flip": "SHA-256", "trailing": "follow the last tensor"}
    for name, data in cases.items():
        weights.write_bytes(data)
        model = _skeleton()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(CheckpointError, match=expected[name]) as err:
            dclszoo.from_pretrained(ckpt, model=model)
        assert "model.safetensors" in str(err.value) and "Save the checkpoint again" in str(err.value), name
        assert not dclszoo.is_patched(model), name  # refused before patching
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), name
    weights.write_bytes(good)
    assert dclszoo.from_pretrained(ckpt) is not None


@pytest.mark.parametrize("change, message", [
    ("{not json", "dclszoo_config.json of checkpoint directory .* is invalid"),
    (dict(mode="banana"), r"mode='banana': expected one of \('full', 'adapter'\)"),
    (dict(weights="../../outside.safetensors"), "expected a plain file name"),
    (dict(colour="blue"), r"unknown key\(s\) \['colour'\]"),
    (dict(patch_config={"config_type": "DclsConfig", "span": -3, "version": 1}), "patch_config is invalid.*span=-3"),
    (dict(builder={"name": "not_registered", "kwargs": {}, "module": "someone.models"}),
     r"builder 'not_registered' \(defined in 'someone.models'\), which is not registered.*Import 'someone.models'"),
])
def test_invalid_config_is_named(saved, change, message):
    ckpt, _ = saved
    if isinstance(change, str):
        (ckpt / CONFIG_NAME).write_text(change)
    else:
        _edit_config(ckpt, **change)
    with pytest.raises(CheckpointError, match=message):
        dclszoo.from_pretrained(ckpt)


def test_newer_config_version_warns_and_loads(saved):
    ckpt, expected = saved
    _edit_config(ckpt, version=99, sharding="a future option")
    with pytest.warns(UserWarning, match=r"version 99 is newer.*ignoring key\(s\) \['sharding'\].*upgrade dclszoo"):
        model = dclszoo.from_pretrained(ckpt)
    assert torch.equal(run(model, X), expected)


def test_unknown_plugin_lists_the_installed_ones_and_the_pip_command(saved):
    ckpt, _ = saved
    _edit_config(ckpt, plugin="sparkles", plugin_version="2.0", pip="dclszoo-sparkles>=2")
    with pytest.raises(CheckpointError) as err:
        dclszoo.from_pretrained(ckpt)
    message = str(err.value)
    assert "plugin 'sparkles' 2.0" in message and "not installed" in message
    assert "pip install 'dclszoo-sparkles>=2'" in message
    enabled = sorted(p.name for p in dclszoo.plugins() if p.loaded)
    assert f"Enabled plugins: {enabled}" in message


def test_shape_and_key_mismatches_name_the_key(saved):
    ckpt, _ = saved
    config = json.loads((ckpt / CONFIG_NAME).read_text())
    _edit_config(ckpt, builder=dict(config["builder"], kwargs={"channels": 4, "classes": 5}))
    shapes = r"'7\.(weight|bias)' has shape \(3,( 4)?\) in the checkpoint, \(5,( 4)?\)"
    with pytest.raises(CheckpointError, match=shapes):
        dclszoo.from_pretrained(ckpt)
    _edit_config(ckpt, builder=config["builder"])

    model = _skeleton()  # patched by the caller with another span: same tensor shapes, another function
    dclszoo.patch(model, DclsConfig(span=9))
    with pytest.raises(CheckpointError, match=r"patched with another config.*differs in \['span'\]: \{'span': 9\}"):
        dclszoo.from_pretrained(ckpt, model=model)

    model = _skeleton()
    model.append(torch.nn.Linear(3, 3))  # an extra layer the checkpoint does not have
    missing = r"the rebuilt model has key\(s\) '8.bias', '8.weight'.*model= you passed"
    with pytest.raises(CheckpointError, match=missing):
        dclszoo.from_pretrained(ckpt, model=model)
    assert model[8].weight.abs().sum() > 0  # untouched: nothing was copied


def test_not_a_dclszoo_checkpoint(tmp_path, local_hub):
    with pytest.raises(CheckpointError, match=r"has no dclszoo_config.json: it is not a dclszoo checkpoint"):
        dclszoo.from_pretrained(tmp_path)
    from huggingface_hub import HfApi

    repo = f"tester/not-dclszoo-{uuid.uuid4().hex[:8]}"
    HfApi().create_repo(repo)
    HfApi().upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=repo)
    with pytest.raises(CheckpointError, match=rf"Hub repo '{repo}' has no dclszoo_config.json.*timm.create_model"):
        dclszoo.from_pretrained(repo)
    with pytest.raises(ValueError, match="applies to Hub repos"):
        dclszoo.from_pretrained(tmp_path, revision="main")
    with pytest.raises(CheckpointError, match="neither a checkpoint directory nor a Hub repo id"):
        dclszoo.from_pretrained(tmp_path / "missing")
