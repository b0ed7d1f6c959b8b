"""dclszoo.save_pretrained / push_to_hub / from_pretrained for transformers audio models (the hf_audio plugin's
describe / build / save-native hooks), without ``model=``: wav2vec2-family classifiers, a conformer, the
spectrogram classifier; the Auto classes reading a dclszoo checkpoint; adapters on a transformers base; which
plugin owns a transformers model with timm modules inside; bad checkpoints.

Outputs are compared bit for bit (``torch.equal``) with the saved model, whose tensors were all perturbed first, and
every reload starts from another random seed, so nothing can come from a fresh initialisation.
"""

from __future__ import annotations

import json
import uuid

import pytest
import torch
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")
pytest.importorskip("timm")

import dclszoo  # noqa: E402
from dclszoo import DclsConfig  # noqa: E402
from dclszoo.hub import CONFIG_NAME, CheckpointError  # noqa: E402
from dclszoo.plugins.hf_audio import SpectrogramDclsConfig, SpectrogramDclsForAudioClassification  # noqa: E402
from dclszoo.plugins.hf_audio import patch_audio  # noqa: E402

from hub_zoo import perturb  # noqa: E402

torch.set_num_threads(2)
# patching untrained models with Gaussian taps: the lossy conversion is intended
pytestmark = pytest.mark.filterwarnings("ignore:.*does not represent the dense kernel")

W2V2 = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, conv_dim=(16, 16, 16),
            conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3), num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2, num_labels=3, vocab_size=12)
WAVE = torch.randn(2, 1600, generator=torch.Generator().manual_seed(0))
LONG_WAVE = torch.randn(2, 8000, generator=torch.Generator().manual_seed(1))  # enough frames for four stages


def _wav2vec2():
    """The default target (the weight-normed positional conv), Gaussian taps: positions, sigma and weights."""
    torch.manual_seed(0)
    model = transformers.Wav2Vec2ForSequenceClassification(transformers.Wav2Vec2Config(**W2V2))
    dclszoo.patch(model, DclsConfig(span=20, kernel_count=12, interpolation="gauss"))
    return model


def _hubert_two_targets():
    """Two target groups with their own settings: the patch config differs from each target's."""
    torch.manual_seed(0)
    model = transformers.HubertForSequenceClassification(transformers.HubertConfig(**W2V2))
    patch_audio(model, DclsConfig(), {"positional": DclsConfig(span=18), "*conv_layers.0.conv": DclsConfig(span=12),
                        "feature_encoder": DclsConfig(span=5)})
    return model


def _conformer():
    """Depthwise convs of the second block only (filter_fn): the rebuilt model must convert exactly that one."""
    torch.manual_seed(0)
    config = transformers.Wav2Vec2ConformerConfig(conv_depthwise_kernel_size=7, **W2V2)
    model = transformers.Wav2Vec2ConformerForCTC(config)
    dclszoo.patch(model, DclsConfig(span=11), filter_fn=lambda m, name: ".layers.1." in name)
    return model


def _spectrogram():
    torch.manual_seed(0)
    return SpectrogramDclsForAudioClassification(SpectrogramDclsConfig(
        backbone="convnext_atto", backbone_kwargs=dict(depths=(2, 2, 1, 1), dims=(8, 16, 24, 32)), n_mels=32,
        num_labels=5))


def _dense():
    torch.manual_seed(0)
    return transformers.Wav2Vec2ForSequenceClassification(transformers.Wav2Vec2Config(**W2V2))


# case -> (factory, input, Auto class that reads the checkpoint)
CASES = {
    "wav2vec2": (_wav2vec2, WAVE, "AutoModelForAudioClassification"),
    "hubert (two targets)": (_hubert_two_targets, WAVE, "AutoModelForAudioClassification"),
    "wav2vec2-conformer (filter_fn)": (_conformer, WAVE, "AutoModelForCTC"),
    "spectrogram": (_spectrogram, LONG_WAVE, "AutoModelForAudioClassification"),
    "dense wav2vec2": (_dense, WAVE, "AutoModelForAudioClassification"),
}


def _logits(model, x):
    with torch.no_grad():
        return model(input_values=x).logits


def _make(case):
    make, x, auto = CASES[case]
    return perturb(make()), x, getattr(transformers, auto)


def _dcls_layout(model):
    return [(n, m.extra_repr()) for n, m in model.named_modules() if isinstance(m, dclszoo.DclsConvNd)]


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_without_model_argument(case, tmp_path):
    model, x, auto = _make(case)
    expected = _logits(model, x)
    dclszoo.save_pretrained(model, tmp_path / "ckpt")

    config = json.loads((tmp_path / "ckpt" / CONFIG_NAME).read_text())
    assert (config["plugin"], config["architecture"]) == ("hf_audio", type(model).__name__)
    assert config["pip"] == "dclszoo[audio]" and config["native_files"] == ["config.json"]
    assert config["model_args"]["config"]["model_type"] == model.config.model_type
    assert "_name_or_path" not in config["model_args"]["config"]
    card = (tmp_path / "ckpt" / "README.md").read_text()
    assert '- "hf_audio"' in card and '- "transformers"' in card

    torch.manual_seed(123)  # another initialisation: every tensor must come from the checkpoint
    loaded = dclszoo.from_pretrained(tmp_path / "ckpt")
    assert type(loaded) is type(model) and not loaded.training
    assert _dcls_layout(loaded) == _dcls_layout(model)
    assert torch.equal(_logits(loaded, x), expected)
    own = getattr(model, "dclszoo_config", None)
    assert getattr(loaded, "dclszoo_config", None) == own
    if case == "spectrogram":  # positions shared in a stage stay shared
        blocks = loaded.backbone.stages[0].blocks
        assert blocks[1].conv_dw.positions is blocks[0].conv_dw.positions

    # the transformers-native path reads the same directory
    native = auto.from_pretrained(tmp_path / "ckpt").eval()
    assert type(native) is type(model) and torch.equal(_logits(native, x), expected)

    # saved again from the reloaded model: the same description and tensors
    dclszoo.save_pretrained(loaded, tmp_path / "again")
    again = json.loads((tmp_path / "again" / CONFIG_NAME).read_text())
    for key in ("plugin", "architecture", "model_args", "patch_config"):
        assert again[key] == config[key], key
    first, second = (load_file(tmp_path / d / "model.safetensors") for d in ("ckpt", "again"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_push_load_by_repo_id_and_from_the_cache(local_hub):
    for case in ("wav2vec2-conformer (filter_fn)", "spectrogram"):
        model, x, auto = _make(case)
        expected = _logits(model, x)
        repo = f"tester/dclszoo-audio-{uuid.uuid4().hex[:8]}"
        commit = dclszoo.push_to_hub(model, repo)
        torch.manual_seed(7)
        loaded = dclszoo.from_pretrained(repo)
        assert type(loaded) is type(model) and torch.equal(_logits(loaded, x), expected), case
        assert torch.equal(_logits(dclszoo.from_pretrained(repo, revision=commit.oid), x), expected), case
        assert torch.equal(_logits(auto.from_pretrained(repo).eval(), x), expected), case
        before = len(local_hub.requests)  # from the cache alone, as with HF_HUB_OFFLINE=1
        assert torch.equal(_logits(dclszoo.from_pretrained(repo, local_files_only=True), x), expected), case
        assert len(local_hub.requests) == before, case


def test_adapter_on_a_transformers_base_on_the_hub(local_hub, tmp_path):
    """The base is the dense transformers checkpoint the model was loaded from (config._name_or_path); the adapter
    stores the DCLS layer and the new head only, and reloads onto the base converted with the saved spec."""
    from huggingface_hub import HfApi

    base_repo = f"tester/dense-wav2vec2-{uuid.uuid4().hex[:8]}"
    torch.manual_seed(5)
    transformers.Wav2Vec2ForSequenceClassification(transformers.Wav2Vec2Config(**W2V2)).push_to_hub(base_repo)
    base_rev = HfApi().model_info(base_repo).sha
    model = transformers.AutoModelForAudioClassification.from_pretrained(base_repo)
    dclszoo.patch(model, DclsConfig(span=20, interpolation="gauss"))
    with torch.no_grad():  # fine-tune the DCLS layer and the head only
        conv = model.wav2vec2.encoder.pos_conv_embed.conv
        conv.positions.add_(torch.rand(conv.positions.shape) - 0.5)
        conv.sigma.mul_(1.3)
        model.classifier.weight.normal_()
    model.eval()
    expected = _logits(model, WAVE)

    dclszoo.save_pretrained(model, tmp_path / "adapter", adapter=True, extra_modules=["classifier"],
                            base_revision=base_rev)
    config = json.loads((tmp_path / "adapter" / CONFIG_NAME).read_text())
    assert (config["mode"], config["base_format"], config["base_model"], config["base_revision"]) == (
        "adapter", "native", base_repo, base_rev)
    from safetensors import safe_open

    with safe_open(tmp_path / "adapter" / "adapter_model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert keys and all(".pos_conv_embed.conv." in k or k.startswith("classifier.") for k in keys)
    torch.manual_seed(11)
    loaded = dclszoo.from_pretrained(tmp_path / "adapter")
    assert type(loaded) is type(model) and torch.equal(_logits(loaded, WAVE), expected)

    # an adapter on a dclszoo checkpoint of the base (the core's base_format 'dclszoo'), through the Hub
    dense = transformers.AutoModelForAudioClassification.from_pretrained(base_repo)
    dclszoo.save_pretrained(dense, tmp_path / "dense-zoo")
    repo = f"tester/wav2vec2-adapter-{uuid.uuid4().hex[:8]}"
    dclszoo.push_to_hub(model, repo, adapter=True, base_model=tmp_path / "dense-zoo", extra_modules=["classifier"])
    assert torch.equal(_logits(dclszoo.from_pretrained(repo), WAVE), expected)


def test_the_audio_plugin_owns_its_models_with_timm_modules_inside(tmp_path):
    from dclszoo.plugins.timm_dcls import plugin as timm_plugin

    model = _spectrogram()
    assert any(type(m).__module__.startswith("timm.") for m in model.modules())
    assert timm_plugin.dclszoo_describe_model(model=model) is None  # a transformers model: not timm's
    assert timm_plugin.dclszoo_describe_model(model=model.backbone) is not None  # its backbone alone is
    from dclszoo import _hub_rebuild

    plugin, spec = _hub_rebuild.describe(model)
    assert plugin == "hf_audio" and spec["architecture"] == "SpectrogramDclsForAudioClassification"


def test_bad_or_mismatched_checkpoints_give_clear_errors(tmp_path):
    model, x, _ = _make("wav2vec2")
    ckpt = dclszoo.save_pretrained(model, tmp_path / "ckpt")
    good = json.loads((ckpt / CONFIG_NAME).read_text())

    def edit(change):
        data = json.loads(json.dumps(good))
        change(data)
        (ckpt / CONFIG_NAME).write_text(json.dumps(data))

    def fewer_taps(data):  # the saved spec now builds another geometry than the weights have
        data["model_args"]["config"]["dcls"]["targets"][0]["config"]["kernel_count"] = 8

    edit(fewer_taps)
    with pytest.raises(CheckpointError, match=r"'wav2vec2\.encoder\.pos_conv_embed\.conv\.(weight|positions)' has "
                                              r"shape .* in the checkpoint, .* in the rebuilt model"):
        dclszoo.from_pretrained(ckpt)

    edit(lambda d: d["model_args"]["config"].update(model_type="bert"))
    with pytest.raises(CheckpointError, match=r"model_type='bert' is not a model type the dclszoo hf_audio plugin"):
        dclszoo.from_pretrained(ckpt)
    edit(lambda d: d.update(architecture="os.system"))
    with pytest.raises(CheckpointError, match=r"architecture 'os.system' is not a model class the transformers Auto"):
        dclszoo.from_pretrained(ckpt)
    edit(lambda d: d["model_args"].update(patch_config={"config_type": "DclsConfig", "span": -3, "version": 1}))
    with pytest.raises(CheckpointError, match=r"patch_config is invalid.*span=-3"):
        dclszoo.from_pretrained(ckpt)

    # remote code named by the config is never followed: the key is dropped, the registered class is built
    edit(lambda d: d["model_args"]["config"].update(
        auto_map={"AutoModelForAudioClassification": "someone/evil--modeling.Evil"}))
    assert torch.equal(_logits(dclszoo.from_pretrained(ckpt), x), _logits(model, x))
