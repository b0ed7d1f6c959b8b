"""dclszoo.save_pretrained / push_to_hub / from_pretrained: a round trip per zoo, through a directory and the local
Hub (tests/hub_server.py), a specific revision, an offline reload from the cache, adapters, a third-party plugin.

Every check compares outputs bit for bit (``torch.equal``) with the model that was saved, after perturbing all its
tensors so that nothing can come from a fresh initialisation.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import dclszoo
from dclszoo import DclsConfig, DelayConfig
from dclszoo.hub import CONFIG_NAME, CheckpointError

import hub_zoo
from hub_zoo import perturb, run

torch.set_num_threads(2)
# patching not-yet-trained models with fewer taps than the dense kernel: the lossy conversion is intended
pytestmark = pytest.mark.filterwarnings("ignore:.*does not represent the dense kernel")
HERE = Path(__file__).resolve().parent


def _timm_model(**kwargs):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", num_classes=10, depths=(2, 1, 1, 1), dims=(16, 24, 32, 40), **kwargs)
    dclszoo.patch(model, DclsConfig(span=9, kernel_count=20, interpolation="gauss", share_positions=True))
    return perturb(model)


def _snn_model():
    pytest.importorskip("spikingjelly")
    torch.manual_seed(0)
    net = hub_zoo.snn_delays_net(hidden=20)
    dclszoo.patch(net, DelayConfig(max_delay=8))
    return perturb(net)


def _cnn_model():
    torch.manual_seed(0)
    model = hub_zoo.small_cnn(channels=6)
    dclszoo.patch(model, DclsConfig(span=9, kernel_count=12, interpolation="gauss"))
    model[2].position_bounds = ((-5.0, -5.0), (5.0, 5.0))  # a custom range: not in state_dict, kept by the config
    return perturb(model)


def _dcls_built_model():
    """Built from DCLS layers directly (never patched: no patch config)."""
    torch.manual_seed(0)
    return perturb(nn.Sequential(dclszoo.DclsConv1d(4, 6, kernel_count=3, span=7, padding="same"), nn.ReLU(),
                                 dclszoo.DclsConv1d(6, 2, kernel_count=2, span=5)))


IMAGE = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
# zoo -> (model factory, input, plugin recorded, pass model= to reload)
CASES = {
    "timm": (_timm_model, IMAGE, "timm", False),
    "spikingjelly": (_snn_model, hub_zoo.spikes(), "spikingjelly", False),
    "torch-builder": (_cnn_model, IMAGE[:, :, :16, :16], None, False),
    "torch-model=": (_dcls_built_model, torch.randn(2, 4, 30), None, True),
}


@pytest.mark.parametrize("zoo", list(CASES))
def test_directory_round_trip_is_bit_identical(zoo, tmp_path):
    make, x, plugin, skeleton = CASES[zoo]
    model = make()
    expected = run(model, x)
    dclszoo.save_pretrained(model, tmp_path / "ckpt")

    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert {"README.md", CONFIG_NAME, "model.safetensors"} <= set(files)
    assert not [f for f in files if f.endswith((".bin", ".pt"))]
    config = json.loads((tmp_path / "ckpt" / CONFIG_NAME).read_text())
    assert config["plugin"] == plugin and config["mode"] == "full" and config["dclszoo_version"] == dclszoo.__version__
    card = (tmp_path / "ckpt" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: dclszoo\ntags:\n- \"dclszoo\"") and "## Patch" in card

    torch.manual_seed(123)  # a different initialisation: every tensor must come from the checkpoint
    if skeleton:
        with pytest.raises(CheckpointError, match="Pass model="):
            dclszoo.from_pretrained(tmp_path / "ckpt")
        fresh = nn.Sequential(dclszoo.DclsConv1d(4, 6, kernel_count=3, span=7, padding="same"), nn.ReLU(),
                              dclszoo.DclsConv1d(6, 2, kernel_count=2, span=5))
        loaded = dclszoo.from_pretrained(tmp_path / "ckpt", model=fresh)
        assert loaded is fresh
    else:
        loaded = dclszoo.from_pretrained(tmp_path / "ckpt")
    assert not loaded.training
    assert [type(m).__name__ for m in loaded.modules()] == [type(m).__name__ for m in model.modules()]
    assert torch.equal(run(loaded, x), expected)
    if zoo == "timm":  # shared positions stay shared; timm's own loader reads the same directory
        import timm

        assert loaded.stages[0].blocks[1].conv_dw.positions is loaded.stages[0].blocks[0].conv_dw.positions
        assert config["native_files"] == ["config.json"]
        native = timm.create_model(f"local-dir:{tmp_path / 'ckpt'}", pretrained=True).eval()
        assert torch.equal(run(native, x), expected)
    if zoo == "torch-builder":
        assert loaded[2].position_bounds == ((-5.0, -5.0), (5.0, 5.0))
        assert config["builder"] == {"name": "hubtest_cnn", "kwargs": {"channels": 6, "classes": 3},
                                     "module": "hub_zoo"}


def test_bfloat16_model_reloads_in_bfloat16(tmp_path):
    model = _cnn_model().to(torch.bfloat16)
    x = IMAGE[:, :, :16, :16].to(torch.bfloat16)
    dclszoo.save_pretrained(model, tmp_path)
    loaded = dclszoo.from_pretrained(tmp_path)
    assert loaded[2].weight.dtype == torch.bfloat16
    assert torch.equal(run(loaded, x), run(model, x))


def test_push_load_by_id_revision_and_offline_cache(local_hub, tmp_path):
    """Push twice; load the latest and the first revision by id; then reload both offline in a fresh process."""
    model = _timm_model()
    first = run(model, IMAGE)
    repo = f"tester/dclszoo-convnext-{uuid.uuid4().hex[:8]}"
    v1 = dclszoo.push_to_hub(model, repo, commit_message="first")
    perturb(model, seed=7)
    second = run(model, IMAGE)
    v2 = dclszoo.push_to_hub(model, repo)
    assert v1.oid != v2.oid and not torch.equal(first, second)

    assert torch.equal(run(dclszoo.from_pretrained(repo), IMAGE), second)
    assert torch.equal(run(dclszoo.from_pretrained(repo, revision=v1.oid), IMAGE), first)
    import timm  # the zoo-native path reads the dclszoo repo too

    assert torch.equal(run(timm.create_model(f"hf-hub:{repo}", pretrained=True).eval(), IMAGE), second)

    snn = _snn_model()
    snn_repo = f"tester/dclszoo-snn-{uuid.uuid4().hex[:8]}"
    dclszoo.push_to_hub(snn, snn_repo)
    assert torch.equal(run(dclszoo.from_pretrained(snn_repo), hub_zoo.spikes()), run(snn, hub_zoo.spikes()))

    from safetensors.torch import save_file

    save_file({"first": first, "second": second, "snn": run(snn, hub_zoo.spikes()).contiguous(), "x": IMAGE},
              tmp_path / "expected.safetensors")
    script = textwrap.dedent(f"""
        import torch, dclszoo, hub_zoo
        from safetensors.torch import load_file
        e = load_file({str(tmp_path / 'expected.safetensors')!r})
        assert torch.equal(hub_zoo.run(dclszoo.from_pretrained({repo!r}), e["x"]), e["second"])
        assert torch.equal(hub_zoo.run(dclszoo.from_pretrained({repo!r}, revision={v1.oid!r}), e["x"]), e["first"])
        assert torch.equal(hub_zoo.run(dclszoo.from_pretrained({snn_repo!r}), hub_zoo.spikes()), e["snn"])
        print("offline ok")
    """)
    before = len(local_hub.requests)
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=path)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "offline ok" in done.stdout, done.stderr[-3000:]
    assert len(local_hub.requests) == before  # nothing reached the Hub


def test_adapter_on_the_zoo_pretrained_base(local_hub, tmp_path):
    """timm: the base is the dense pretrained checkpoint named by pretrained_cfg (here on the local Hub)."""
    timm = pytest.importorskip("timm")
    from huggingface_hub import HfApi
    from safetensors.torch import save_file

    base_repo = f"tester/dense-convnext-{uuid.uuid4().hex[:8]}"
    torch.manual_seed(5)
    dense = timm.create_model("convnext_atto", depths=(1, 1, 1, 1), dims=(16, 24, 32, 40))
    save_file(dense.state_dict(), tmp_path / "model.safetensors")
    api = HfApi()
    api.create_repo(base_repo)
    base_rev = api.upload_file(path_or_fileobj=tmp_path / "model.safetensors", path_in_repo="model.safetensors",
                               repo_id=base_repo).oid

    model = timm.create_model("convnext_atto", pretrained=True, num_classes=10, depths=(1, 1, 1, 1),
                              dims=(16, 24, 32, 40), pretrained_cfg_overlay=dict(hf_hub_id=base_repo))
    dclszoo.patch(model, DclsConfig(span=9))
    with torch.no_grad():  # fine-tune only the DCLS layers and the new head
        for m in model.modules():
            if isinstance(m, dclszoo.DclsConvNd):
                m.positions.add_(torch.rand(m.positions.shape) - 0.5)
                m.weight.mul_(1.5)
        model.head.fc.weight.normal_()
    model.eval()
    expected = run(model, IMAGE)

    dclszoo.save_pretrained(model, tmp_path / "adapter", adapter=True, extra_modules=["head.fc"],
                            base_revision=base_rev)
    config = json.loads((tmp_path / "adapter" / CONFIG_NAME).read_text())
    assert (config["mode"], config["base_format"], config["base_model"]) == ("adapter", "native", base_repo)
    from safetensors import safe_open

    with safe_open(tmp_path / "adapter" / "adapter_model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert keys and all(".conv_dw." in k or k.startswith("head.fc.") for k in keys)
    assert f'base_model: "{base_repo}"' in (tmp_path / "adapter" / "README.md").read_text()

    torch.manual_seed(11)
    assert torch.equal(run(dclszoo.from_pretrained(tmp_path / "adapter"), IMAGE), expected)
    repo = f"tester/convnext-adapter-{uuid.uuid4().hex[:8]}"
    dclszoo.push_to_hub(model, repo, adapter=True, extra_modules=["head.fc"], base_revision=base_rev)
    assert torch.equal(run(dclszoo.from_pretrained(repo), IMAGE), expected)


def test_adapter_on_a_dclszoo_base_and_a_changed_base(tmp_path):
    torch.manual_seed(0)
    base = hub_zoo.small_cnn(channels=6)
    perturb(base)
    dclszoo.save_pretrained(base, tmp_path / "base")
    model = copy.deepcopy(base)
    dclszoo.patch(model, DclsConfig(span=7, interpolation="gauss"))
    with torch.no_grad():
        model[2].positions.add_(0.3)
        model[2].sigma.mul_(1.7)
        model[7].weight.mul_(2.0)  # the head is trained too
    x = IMAGE[:, :, :16, :16]
    expected = run(model.eval(), x)

    dclszoo.save_pretrained(model, tmp_path / "adapter", adapter=True, base_model=tmp_path / "base",
                            extra_modules=["7"])
    full = dclszoo.save_pretrained(model, tmp_path / "full") / "model.safetensors"
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size < full.stat().st_size
    assert torch.equal(run(dclszoo.from_pretrained(tmp_path / "adapter"), x), expected)
    # PEFT style: the base instance given by the user
    given = dclszoo.from_pretrained(tmp_path / "base")
    assert torch.equal(run(dclszoo.from_pretrained(tmp_path / "adapter", model=given), x), expected)

    config = json.loads((tmp_path / "adapter" / CONFIG_NAME).read_text())
    (tmp_path / "adapter" / CONFIG_NAME).write_text(json.dumps(dict(config, base_format="native")))
    with pytest.raises(CheckpointError, match=r"cannot load without a plugin \(a builder .*\). Pass model="):
        dclszoo.from_pretrained(tmp_path / "adapter")  # a builder cannot load pretrained weights

    dclszoo.save_pretrained(model, tmp_path / "no-head", adapter=True, base_model=tmp_path / "base")
    with pytest.warns(UserWarning, match=r"1 base tensor\(s\) differ.*'7.weight'.*extra_modules"):
        dclszoo.from_pretrained(tmp_path / "no-head")
    with pytest.raises(ValueError, match="needs a base checkpoint"):
        dclszoo.save_pretrained(model, tmp_path / "x", adapter=True)
    with pytest.raises(ValueError, match="'head' matches no tensor"):
        dclszoo.save_pretrained(model, tmp_path / "x", adapter=True, base_model=tmp_path / "base",
                                extra_modules=["head"])
    with pytest.raises(ValueError, match="no dclszoo module"):
        dclszoo.save_pretrained(base, tmp_path / "x", adapter=True, base_model=tmp_path / "base")


def test_third_party_plugin_joins_through_hooks(toyhub, tmp_path):
    import toyzoo

    torch.manual_seed(0)
    net = toyzoo.ToyNet(channels=4, k=5, num_classes=3)
    report = dclszoo.patch(net, DclsConfig(span=7))
    assert report.plugin == "toyhub"
    perturb(net)
    x = torch.randn(2, 2, 12, 12)
    dclszoo.save_pretrained(net, tmp_path / "toy")
    config = json.loads((tmp_path / "toy" / CONFIG_NAME).read_text())
    assert (config["plugin"], config["plugin_version"], config["pip"]) == ("toyhub", "0.3.0", "dclszoo-toyhub")
    assert config["architecture"] == "ToyNet" and config["model_args"] == {"channels": 4, "k": 5, "num_classes": 3}
    assert '- "toyhub"' in (tmp_path / "toy" / "README.md").read_text()
    loaded = dclszoo.from_pretrained(tmp_path / "toy")
    assert isinstance(loaded, toyzoo.ToyNet) and torch.equal(run(loaded, x), run(net, x))


def test_plugin_not_installed_says_what_to_install(toyhub, tmp_path, monkeypatch):
    import toyzoo

    net = toyzoo.ToyNet()
    dclszoo.patch(net, DclsConfig())
    dclszoo.save_pretrained(net, tmp_path / "toy")
    sys.path.remove(str(toyhub))  # uninstall the distribution
    from dclszoo import _plugins

    with _plugins._isolated():
        with pytest.raises(CheckpointError) as err:
            dclszoo.from_pretrained(tmp_path / "toy")
    message = str(err.value)
    assert "plugin 'toyhub' 0.3.0" in message and "not installed" in message
    assert "pip install 'dclszoo-toyhub'" in message and "Enabled plugins: [" in message


def test_transformers_audio_model_round_trip_with_model_argument(tmp_path):
    """A transformers audio model patched by the hf_audio plugin: saved, then reloaded into an unpatched instance
    passed as model= (patched with the saved config on load). Rebuilding without model=: test_hub_audio.py."""
    transformers = pytest.importorskip("transformers")
    config = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, conv_dim=(16, 16, 16),
        conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        num_labels=3)
    torch.manual_seed(0)
    model = transformers.Wav2Vec2ForSequenceClassification(config).eval()
    dclszoo.patch(model, DclsConfig(span=24))
    perturb(model)
    x = torch.randn(2, 4000, generator=torch.Generator().manual_seed(0))
    expected = run(model, x).logits
    dclszoo.save_pretrained(model, tmp_path / "w2v")
    torch.manual_seed(9)
    loaded = dclszoo.from_pretrained(tmp_path / "w2v", model=transformers.Wav2Vec2ForSequenceClassification(config))
    assert type(loaded) is type(model) and torch.equal(run(loaded, x).logits, expected)
