"""transformers audio plugin: one shared table of tiny models of every supported family, patched and checked
against the unpatched model, saved and reloaded through the Auto classes, and turned back into dense convolutions.

References are independent of the code under test: the unpatched transformers model (same weights) and
checkpoints the tests write themselves. Nothing is downloaded.
"""

from __future__ import annotations

import copy
import sys
import warnings

import pytest
import torch
import torch.nn as nn

torch.set_num_threads(2)
transformers = pytest.importorskip("transformers")

import dclszoo  # noqa: E402
from dclszoo import DclsConfig, DclsConvNd  # noqa: E402
from dclszoo.plugins.hf_audio import CausalDclsConv1d, patch_audio  # noqa: E402
from dclszoo.plugins.hf_audio import models as dcls_models  # noqa: E402
from dclszoo.plugins.hf_audio import plugin as audio_plugin  # noqa: E402

dclszoo.enable()

W2V2 = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, conv_dim=(16, 16, 16),
            conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3), num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2, num_labels=3, vocab_size=12)
SEAMLESS = dict(vocab_size=50, t2u_vocab_size=20, hidden_size=32, speech_encoder_layers=2,
                speech_encoder_attention_heads=2, speech_encoder_intermediate_size=37, encoder_layers=1,
                decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=37,
                decoder_ffn_dim=37, feature_projection_input_dim=16, conv_depthwise_kernel_size=7,
                max_position_embeddings=64, num_adapter_layers=1, adapter_kernel_size=3, adapter_stride=2,
                pad_token_id=0, bos_token_id=2, eos_token_id=3, decoder_start_token_id=3, t2u_encoder_layers=1,
                t2u_decoder_layers=1, t2u_encoder_attention_heads=2, t2u_decoder_attention_heads=2,
                t2u_encoder_ffn_dim=37, t2u_decoder_ffn_dim=37, t2u_pad_token_id=0, t2u_bos_token_id=2,
                t2u_eos_token_id=3, t2u_decoder_start_token_id=3)
FS2 = dict(hidden_size=32, vocab_size=20, num_mel_bins=8, encoder_num_attention_heads=2, encoder_layers=1,
           encoder_linear_units=37, decoder_num_attention_heads=2, decoder_layers=1, decoder_linear_units=37,
           speech_decoder_postnet_layers=2, speech_decoder_postnet_units=16, speech_decoder_postnet_kernel=5,
           duration_predictor_layers=1, duration_predictor_channels=16, energy_predictor_layers=1,
           energy_predictor_channels=16, pitch_predictor_layers=1, pitch_predictor_channels=16,
           encoder_kernel_size=7, decoder_kernel_size=31)
PARAKEET = dict(vocab_size=20, pad_token_id=19, encoder_config=dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, conv_kernel_size=9,
    subsampling_conv_channels=8, num_mel_bins=16))
WHISPER = dict(vocab_size=60, num_mel_bins=16, d_model=32, encoder_layers=1, decoder_layers=1,
               encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=37, decoder_ffn_dim=37,
               max_source_positions=30, max_target_positions=20, pad_token_id=0, bos_token_id=1, eos_token_id=2,
               decoder_start_token_id=1, num_labels=3)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def wave(seed: int = 0) -> dict:
    return {"input_values": torch.randn(2, 1600, generator=_gen(seed))}


def features(frames: int, bins: int = 16, transpose: bool = False):
    def make(seed: int = 0) -> dict:
        x = torch.randn(2, frames, bins, generator=_gen(seed))
        return {"input_features": x.transpose(1, 2).contiguous() if transpose else x}
    return make


def seamless_inputs(seed: int = 0) -> dict:
    return dict(features(20)(seed), decoder_input_ids=torch.randint(4, 50, (2, 5), generator=_gen(seed)))


def token_inputs(seed: int = 0) -> dict:
    return {"input_ids": torch.randint(1, 20, (2, 7), generator=_gen(seed))}


def _cfg(name: str, **kwargs):
    return lambda: getattr(transformers, name)(**kwargs)


# case -> (model class, config factory, inputs, targets (None = family default), DclsConfig kwargs,
#          expected replaced names (with the base prefix stripped), Auto class for reloading)
CASES = {
    "wav2vec2": ("Wav2Vec2ForSequenceClassification", _cfg("Wav2Vec2Config", **W2V2), wave, None, dict(span=20),
                 ["encoder.pos_conv_embed.conv"], "AutoModelForAudioClassification"),
    "wav2vec2-features+pos": (
        "Wav2Vec2ForCTC", _cfg("Wav2Vec2Config", **W2V2), wave,
        {"positional": DclsConfig(span=20), "*conv_layers.0.conv": DclsConfig(span=12),
         "feature_encoder": DclsConfig(span=5)},
        {}, ["encoder.pos_conv_embed.conv", "feature_extractor.conv_layers.0.conv",
             "feature_extractor.conv_layers.1.conv", "feature_extractor.conv_layers.2.conv"], "AutoModelForCTC"),
    "hubert": ("HubertForCTC", _cfg("HubertConfig", **W2V2), wave, None, dict(span=18),
               ["encoder.pos_conv_embed.conv"], "AutoModelForCTC"),
    "hubert-batchnorm": ("HubertForSequenceClassification", _cfg("HubertConfig", conv_pos_batch_norm=True, **W2V2),
                         wave, None, dict(span=20), ["encoder.pos_conv_embed.conv"],
                         "AutoModelForAudioClassification"),
    "wavlm": ("WavLMForSequenceClassification", _cfg("WavLMConfig", **W2V2), wave, None, dict(span=20),
              ["encoder.pos_conv_embed.conv"], "AutoModelForAudioClassification"),
    "unispeech": ("UniSpeechForCTC", _cfg("UniSpeechConfig", **W2V2), wave, None, dict(span=20),
                  ["encoder.pos_conv_embed.conv"], "AutoModelForCTC"),
    "unispeech-sat": ("UniSpeechSatForSequenceClassification", _cfg("UniSpeechSatConfig", **W2V2), wave, None,
                      dict(span=20), ["encoder.pos_conv_embed.conv"], "AutoModelForAudioClassification"),
    "sew (stride)": ("SEWForSequenceClassification", _cfg("SEWConfig", squeeze_factor=2, **W2V2), wave, None,
                     dict(span=20), ["encoder.pos_conv_embed.conv"], "AutoModelForAudioClassification"),
    "sew-d": ("SEWDForCTC", _cfg("SEWDConfig", squeeze_factor=2, position_buckets=16, max_position_embeddings=64,
                                 **W2V2), wave, None, dict(span=20), ["encoder.pos_conv_embed.conv"],
              "AutoModelForCTC"),
    "data2vec-audio (stack)": (
        "Data2VecAudioForSequenceClassification",
        _cfg("Data2VecAudioConfig", **dict(W2V2, num_conv_pos_embeddings=5, conv_pos_kernel_size=19)), wave, None,
        dict(span=23), [f"encoder.pos_conv_embed.layers.{i}.conv" for i in range(5)],
        "AutoModelForAudioClassification"),
    "wav2vec2-conformer": (
        "Wav2Vec2ConformerForCTC", _cfg("Wav2Vec2ConformerConfig", conv_depthwise_kernel_size=7, **W2V2), wave,
        None, dict(span=11), [f"encoder.layers.{i}.conv_module.depthwise_conv" for i in range(2)],
        "AutoModelForCTC"),
    "wav2vec2-bert (causal)": (
        "Wav2Vec2BertForSequenceClassification",
        _cfg("Wav2Vec2BertConfig", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
             feature_projection_input_dim=16, conv_depthwise_kernel_size=7, num_labels=3),
        features(20), None, dict(span=12), [f"encoder.layers.{i}.conv_module.depthwise_conv" for i in range(2)],
        "AutoModelForAudioClassification"),
    "seamless_m4t": ("SeamlessM4TForSpeechToText", _cfg("SeamlessM4TConfig", **SEAMLESS), seamless_inputs, None,
                     dict(span=11), [f"speech_encoder.encoder.layers.{i}.conv_module.depthwise_conv" for i in range(2)],
                     "AutoModelForSpeechSeq2Seq"),
    "seamless_m4t_v2 (causal)": (
        "SeamlessM4Tv2ForSpeechToText", _cfg("SeamlessM4Tv2Config", **SEAMLESS), seamless_inputs, None,
        dict(span=10), [f"speech_encoder.encoder.layers.{i}.conv_module.depthwise_conv" for i in range(2)],
        "AutoModelForSpeechSeq2Seq"),
    "fastspeech2_conformer": (
        "FastSpeech2ConformerModel", _cfg("FastSpeech2ConformerConfig", **FS2), token_inputs, None, dict(span=33),
        [f"{part}.conformer_layers.0.conv_module.depthwise_conv" for part in ("encoder", "decoder")],
        "AutoModel"),
    "parakeet_ctc (+stem)": (
        "ParakeetForCTC", _cfg("ParakeetCTCConfig", **PARAKEET), features(40),
        {"depthwise": DclsConfig(span=13), "conv_stem": DclsConfig(span=5)}, {},
        ["encoder.layers.0.conv.depthwise_conv", "encoder.layers.1.conv.depthwise_conv", "encoder.subsampling.layers.0",
         "encoder.subsampling.layers.2", "encoder.subsampling.layers.5"], "AutoModelForCTC"),
    "whisper (stem)": ("WhisperForAudioClassification", _cfg("WhisperConfig", **WHISPER),
                       features(60, transpose=True), ["conv_stem"], dict(span=5), ["encoder.conv1", "encoder.conv2"],
                       "AutoModelForAudioClassification"),
}


def _output(model: nn.Module, inputs: dict) -> torch.Tensor:
    out = model(**inputs)
    for name in ("logits", "spectrogram", "last_hidden_state"):
        value = getattr(out, name, None)
        if value is not None:
            return value
    raise AssertionError(f"no output tensor in {type(out).__name__}")


def _dcls_modules(model: nn.Module) -> dict[str, DclsConvNd]:
    return {n: m for n, m in model.named_modules() if isinstance(m, DclsConvNd)}


def _close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    assert actual.shape == expected.shape
    scale = expected.abs().max().clamp_min(1e-6)
    diff = (actual - expected).abs().max()
    assert diff <= rel * scale, f"max abs diff {diff:.3g} > {rel} * output scale {scale:.3g}"


@torch.no_grad()
def _perturb(model: nn.Module, seed: int = 1) -> None:
    """Move every tap off the grid and change its weight, as training would."""
    gen = _gen(seed)
    for m in _dcls_modules(model).values():
        m.positions.add_(torch.rand(m.positions.shape, generator=gen) - 0.5)
        m.clamp_parameters()
        m.weight.mul_(1.0 + 0.5 * torch.randn(m.weight.shape, generator=gen))


def _build(case: str):
    cls_name, make_config, inputs, targets, cfg_kwargs, expected, auto = CASES[case]
    torch.manual_seed(0)
    reference = getattr(transformers, cls_name)(make_config()).eval()
    return reference, inputs, targets, DclsConfig(**cfg_kwargs), expected, auto


def _patch(model: nn.Module, targets, config: DclsConfig):
    if targets is None:
        return dclszoo.patch(model, config)  # through the plugin hook: the family's default targets
    return patch_audio(model, config, targets)


@pytest.mark.parametrize("case", list(CASES))
def test_family_table(case, tmp_path):
    reference, inputs, targets, config, expected, auto = _build(case)
    model = copy.deepcopy(reference)
    report = _patch(model, targets, config)
    prefix = model.base_model_prefix

    # the expected convolutions, and only those, became DCLS; the model is now the registered DCLS type
    strip = lambda n: n[len(prefix) + 1:] if n.startswith(prefix + ".") else n  # noqa: E731
    found = _dcls_modules(model)
    assert report.plugin == "hf_audio"
    assert sorted(strip(n) for n in found) == sorted(expected) == sorted(strip(r.name) for r in report.replaced)
    assert type(model).__name__ == "Dcls" + type(reference).__name__
    assert model.config.model_type == reference.config.model_type + "_dcls"
    if "causal" in case:
        assert all(isinstance(m, CausalDclsConv1d) for m in found.values())

    # 1. function-preserving
    x = inputs(0)
    with torch.no_grad():
        expected_out = _output(reference, x)
        _close(_output(model, x), expected_out)

    # 2. forward / backward: every DCLS layer's positions get gradients
    _perturb(model)
    with torch.no_grad():
        trained = _output(model, x)
        # the taps moved visibly (FastSpeech2's predicted durations, hence its output length, may change too)
        assert trained.shape != expected_out.shape or (
            (trained - expected_out).abs().max() > 1e-3 * expected_out.abs().max())
    model.zero_grad()
    _output(model, x).float().square().mean().backward()
    for name, module in found.items():
        assert module.positions.grad is not None and module.positions.grad.abs().sum() > 0, name
        assert torch.isfinite(module.weight.grad).all(), name

    # 3. save_pretrained -> the Auto class rebuilds the DCLS type with identical outputs
    model.save_pretrained(tmp_path / "dcls")
    torch.manual_seed(123)  # a different init: everything must come from the checkpoint
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no DCLS tensor may be missing
        loaded = getattr(transformers, auto).from_pretrained(tmp_path / "dcls")
    assert type(loaded) is type(model) and sorted(_dcls_modules(loaded)) == sorted(found)
    with torch.no_grad():
        _close(_output(loaded.eval(), x), trained, rel=1e-6)

    # 4. to_dense -> plain convolutions, the dense class again, identical outputs
    with pytest.warns(UserWarning, match="cannot rebuild this dense model"):  # every row widens the span
        dense = dclszoo.to_dense(copy.deepcopy(model))
    assert not _dcls_modules(dense) and type(dense) is type(reference)
    assert type(dense.config) is type(reference.config)
    with torch.no_grad():
        _close(_output(dense, x), trained)


def test_exact_to_dense_round_trips_through_the_dense_class(tmp_path):
    """span = kernel size: unpatch restores the weight-normed positional conv; the dense model saves and reloads
    with plain transformers."""
    reference, inputs, *_ = _build("wav2vec2")
    model = copy.deepcopy(reference)
    dclszoo.patch(model, DclsConfig())
    _perturb(model)
    x = inputs(0)
    with torch.no_grad():
        trained = _output(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # span = kernel: nothing to warn about
        dense = dclszoo.unpatch(model)
    conv = dense.wav2vec2.encoder.pos_conv_embed.conv
    assert hasattr(conv, "parametrizations") and type(dense.config) is transformers.Wav2Vec2Config
    dense.save_pretrained(tmp_path / "dense")
    reloaded = transformers.AutoModelForAudioClassification.from_pretrained(tmp_path / "dense").eval()
    assert type(reloaded) is transformers.Wav2Vec2ForSequenceClassification
    with torch.no_grad():
        _close(_output(reloaded, x), trained)


# --------------------------------------------------------------------------- the meta-device loading path
def test_dense_checkpoint_into_dcls_type_is_converted_not_garbage(tmp_path):
    """A dense checkpoint loaded by a DCLS model type: the model is built on the meta device, where a naive
    loader leaves the DCLS tensors as torch.empty_like memory. The plugin must give the dense function back,
    with finite positions on the original grid (checked loudly: values, bounds, function)."""
    for case, span in (("wav2vec2", 20), ("wav2vec2-bert (causal)", 12)):
        reference, inputs, *_ = _build(case)
        reference.save_pretrained(tmp_path / case)
        dense_config = type(reference.config).from_pretrained(tmp_path / case)
        twin = dcls_models.dcls_model_class(type(reference))
        spec = {"version": 1, "targets": [{"target": t, "config": DclsConfig(span=span).to_dict()}
                                          for t in dcls_models.model_family(reference).default]}
        config = dcls_models.dcls_config_class(type(dense_config)).from_dict(dict(dense_config.to_dict(), dcls=spec))
        for kwargs in ({}, {"config": config}):
            torch.manual_seed(99)
            model = twin.from_pretrained(tmp_path / case, **kwargs).eval()
            assert type(model) is twin and model.config.model_type.endswith("_dcls")
            modules = _dcls_modules(model)
            assert modules
            for name, m in modules.items():
                for tensor_name in ("weight", "positions", "bias"):
                    t = getattr(m, tensor_name)
                    assert t is None or (t.device.type == "cpu" and torch.isfinite(t).all()), (name, tensor_name)
                lo, hi = m.position_bounds
                assert m.positions.min() >= lo[0] and m.positions.max() <= hi[0], name
                # exact conversion: every tap sits on an integer grid point
                assert torch.equal(m.positions, m.positions.round()), name
                dense_kernel = reference.get_submodule(name).kernel_size
                assert m.span == ((span,) if kwargs else tuple(dense_kernel)), name
            with torch.no_grad():
                _close(_output(model, inputs(0)), _output(reference, inputs(0)))


def test_dcls_checkpoint_missing_dcls_tensors_gets_dcls_init(tmp_path):
    from safetensors.torch import load_file, save_file

    reference, inputs, *_ = _build("wav2vec2")
    model = copy.deepcopy(reference)
    with pytest.warns(UserWarning, match="does not represent the dense kernel exactly"):  # Gaussian taps blur
        dclszoo.patch(model, DclsConfig(span=20, interpolation="gauss", sigma=0.7))
    model.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    state = {k: v for k, v in load_file(path).items() if not k.endswith(("conv.positions", "conv.sigma"))}
    save_file(state, path, metadata={"format": "pt"})
    with pytest.warns(UserWarning, match="DCLS initialisation"):
        loaded, info = transformers.AutoModelForAudioClassification.from_pretrained(tmp_path / "m",
                                                                                    output_loading_info=True)
    assert {"wav2vec2.encoder.pos_conv_embed.conv.positions", "wav2vec2.encoder.pos_conv_embed.conv.sigma"} <= set(
        info["missing_keys"])
    conv = loaded.wav2vec2.encoder.pos_conv_embed.conv
    # the DCLS initialisation, not memory: N(0, 0.5) positions clamped into the span, sigma at its initial value
    assert torch.isfinite(conv.positions).all()
    assert conv.positions.abs().max() <= 10 and 0.3 < conv.positions.std() < 0.7
    assert torch.equal(conv.sigma, torch.full_like(conv.sigma, 0.7))
    torch.testing.assert_close(conv.weight, model.wav2vec2.encoder.pos_conv_embed.conv.weight)  # loaded, untouched
    with torch.no_grad():
        assert torch.isfinite(_output(loaded, inputs(0))).all()


def test_meta_device_build_has_the_geometry_of_the_real_one():
    for case in ("wav2vec2-features+pos", "wav2vec2-bert (causal)", "seamless_m4t", "whisper (stem)"):
        reference, _, targets, config, *_ = _build(case)
        model = copy.deepcopy(reference)
        _patch(model, targets, config)
        twin, dcls_config = type(model), model.config
        with torch.device("meta"):
            meta = twin(dcls_config)
        real, on_meta = _dcls_modules(model), _dcls_modules(meta)
        assert list(real) == list(on_meta)
        for name in real:
            assert on_meta[name].weight.is_meta
            assert type(on_meta[name]) is type(real[name])
            assert on_meta[name].extra_repr() == real[name].extra_repr(), name
            assert {k: v.shape for k, v in on_meta[name].state_dict().items()} == {
                k: v.shape for k, v in real[name].state_dict().items()}


# --------------------------------------------------------------------------- causal taps stay in the past
def test_causal_depthwise_taps_never_see_the_future():
    torch.manual_seed(0)
    conv = nn.Conv1d(4, 4, 5, groups=4)  # the block pads 4 frames on the left
    module = CausalDclsConv1d.from_dense(conv, span=9)
    x = torch.randn(1, 4, 30)
    padded = nn.functional.pad(x, (module.kernel_size[0] - 1, 0))
    _close(module(padded), conv(nn.functional.pad(x, (4, 0))))
    with torch.no_grad():
        module.positions.uniform_(-10, 10)
        module.clamp_parameters()
    y = module(padded)
    x2 = x.clone()
    x2[..., 20:] += 100.0  # change the future of frame 19
    y2 = module(nn.functional.pad(x2, (4, 0)))
    assert torch.equal(y[..., :20], y2[..., :20])
    dense = module.to_dense()
    assert dense.kernel_size == (9,) and dense.padding == (0,)
    _close(dense(nn.functional.pad(x, (8, 0))), y)


# --------------------------------------------------------------------------- bad input
def test_unknown_target_lists_the_conv_modules():
    reference, *_ = _build("wav2vec2")
    with pytest.raises(ValueError, match="matches no convolution") as err:
        patch_audio(copy.deepcopy(reference), DclsConfig(), targets=["*.no_such_conv"])
    assert "wav2vec2.encoder.pos_conv_embed.conv" in str(err.value)
    assert "feature_extractor.conv_layers.0.conv" in str(err.value)
    with pytest.raises(ValueError, match="does not exist in Wav2Vec2; its groups are"):
        patch_audio(copy.deepcopy(reference), DclsConfig(), targets="depthwise")
    with pytest.raises(ValueError, match="no default DCLS targets"):
        dclszoo.patch(_build("whisper (stem)")[0], DclsConfig())
    with pytest.raises(ValueError, match="targets=.*chosen by name"):
        dclszoo.patch(copy.deepcopy(reference), DclsConfig(targets="all"))
    with pytest.raises(ValueError, match="differs from kernel_size.*odd"):
        dclszoo.patch(copy.deepcopy(reference), DclsConfig(span=19))


def test_unsupported_family_lists_the_supported_ones():
    config = transformers.ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                                    num_mel_bins=16, max_length=32, patch_size=8, frequency_stride=8, time_stride=8)
    model = transformers.ASTForAudioClassification(config)
    with pytest.raises(ValueError, match="not a transformers audio family") as err:
        dclszoo.patch(model, DclsConfig())
    assert "Wav2Vec2" in str(err.value) and "Parakeet" in str(err.value) and "Whisper" in str(err.value)
    with pytest.raises(ValueError, match="not a transformers audio family"):
        patch_audio(model, DclsConfig(), targets=["*"])
    # a non-audio transformers model is not ours: the hook returns None (generic fallback)
    bert = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                          intermediate_size=37, vocab_size=30))
    assert audio_plugin.dclszoo_patch(model=bert, config=DclsConfig(), filter_fn=None) is None


def test_mismatched_checkpoint_names_the_key(tmp_path):
    import json

    reference, *_ = _build("wav2vec2")
    model = copy.deepcopy(reference)
    dclszoo.patch(model, DclsConfig(span=20))
    model.save_pretrained(tmp_path / "m")
    config_path = tmp_path / "m" / "config.json"
    data = json.loads(config_path.read_text())
    data["dcls"]["targets"][0]["config"]["kernel_count"] = 12
    config_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"wav2vec2\.encoder\.pos_conv_embed\.conv\.weight: \[32, 16, 16\] in the "
                                         r"checkpoint, \[32, 16, 12\] in the model"):
        transformers.AutoModelForAudioClassification.from_pretrained(tmp_path / "m")
    data["dcls"]["modules"] = {"encoder.no_such.conv": 0}
    config_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="no_such.conv.*does not have"):
        transformers.AutoModelForAudioClassification.from_pretrained(tmp_path / "m")


def test_filter_fn_is_recorded_so_reloading_builds_the_same_layers(tmp_path):
    reference, inputs, *_ = _build("wav2vec2-conformer")
    model = copy.deepcopy(reference)
    dclszoo.patch(model, DclsConfig(span=11), filter_fn=lambda m, name: ".layers.1." in name)
    assert list(_dcls_modules(model)) == ["wav2vec2_conformer.encoder.layers.1.conv_module.depthwise_conv"]
    _perturb(model)
    model.save_pretrained(tmp_path / "m")
    loaded = transformers.AutoModelForCTC.from_pretrained(tmp_path / "m")
    assert list(_dcls_modules(loaded)) == list(_dcls_modules(model))
    with torch.no_grad():
        _close(_output(loaded, inputs(0)), _output(model, inputs(0)), rel=1e-6)


# --------------------------------------------------------------------------- registry and pipeline
def test_dcls_model_type_from_a_config():
    """A DCLS model built from its config alone (training from scratch): config.dcls may be a DclsConfig."""
    reference, inputs, *_ = _build("wav2vec2-conformer")
    config = dcls_models.dcls_config_class(type(reference.config)).from_dict(
        dict(reference.config.to_dict(), dcls=DclsConfig(span=11).to_dict()))
    model = transformers.AutoModelForCTC.from_config(config)
    assert type(model).__name__ == "DclsWav2Vec2ConformerForCTC"
    convs = _dcls_modules(model)
    assert len(convs) == 2 and all(m.span == (11,) for m in convs.values())
    assert model.config.dcls["modules"] == {f"encoder.layers.{i}.conv_module.depthwise_conv": 0 for i in range(2)}
    out = _output(model, inputs(0))
    out.float().square().mean().backward()
    assert all(m.positions.grad.abs().sum() > 0 for m in convs.values())


def test_every_family_is_registered_with_the_auto_classes():
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    registered = dcls_models.register_all()
    for model_type in dcls_models.FAMILIES:
        assert CONFIG_MAPPING[model_type + "_dcls"].model_type == model_type + "_dcls"
        assert registered[model_type + "_dcls"], model_type
    assert "DclsWav2Vec2ForCTC" in registered["wav2vec2_dcls"]
    assert transformers.AutoModelForCTC._model_mapping[dcls_models.DclsWav2Vec2Config] is dcls_models.DclsWav2Vec2ForCTC
    info = {p.name: p for p in dclszoo.plugins()}["hf_audio"]
    assert info.loaded and any("Wav2Vec2-BERT" in s for s in info.supports)


def test_pipeline_on_a_saved_patched_classifier(tmp_path):
    reference, inputs, *_ = _build("wav2vec2")
    model = copy.deepcopy(reference)
    model.config.id2label = {0: "tone", 1: "chirp", 2: "noise"}
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    dclszoo.patch(model, DclsConfig(span=20))
    _perturb(model)
    model.save_pretrained(tmp_path / "clf")
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=False).save_pretrained(tmp_path / "clf")
    classifier = transformers.pipeline("audio-classification", model=str(tmp_path / "clf"), device="cpu")
    assert type(classifier.model).__name__ == "DclsWav2Vec2ForSequenceClassification"
    audio = inputs(0)["input_values"][0].numpy()
    result = classifier({"raw": audio, "sampling_rate": 16000}, top_k=3)
    assert sorted(r["label"] for r in result) == ["chirp", "noise", "tone"]
    with torch.no_grad():
        probs = model(torch.as_tensor(audio)[None]).logits.softmax(-1)[0]
    best = max(result, key=lambda r: r["score"])
    assert best["label"] == model.config.id2label[int(probs.argmax())]
    assert abs(best["score"] - float(probs.max())) < 1e-5


def test_importing_the_plugin_imports_neither_transformers_nor_timm(tmp_path):
    import subprocess

    code = ("import sys, dclszoo, dclszoo.plugins.hf_audio, dclszoo.plugins.hf_audio.plugin; "
            "heavy = [m for m in ('transformers', 'timm', 'triton', 'torchaudio') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, timeout=120)


def test_push_to_local_hub_and_reload_by_repo_id(local_hub):
    """Zoo-native Hub round trip through the test session's loopback Hub: a DCLS model pushed with push_to_hub
    reloads by repo id; a dense repo loads into the DCLS type converted."""
    import uuid

    reference, inputs, *_ = _build("hubert")
    dense_id = f"tester/hubert-dense-{uuid.uuid4().hex[:6]}"
    reference.push_to_hub(dense_id)
    model = dcls_models.dcls_model_class(type(reference)).from_pretrained(dense_id).eval()
    with torch.no_grad():
        _close(_output(model, inputs(0)), _output(reference, inputs(0)))
    _perturb(model)
    with torch.no_grad():
        trained = _output(model, inputs(0))
    repo_id = f"tester/hubert-dcls-{uuid.uuid4().hex[:6]}"
    model.push_to_hub(repo_id)
    loaded = transformers.AutoModelForCTC.from_pretrained(repo_id).eval()
    assert type(loaded) is type(model)
    with torch.no_grad():
        _close(_output(loaded, inputs(0)), trained, rel=1e-6)
