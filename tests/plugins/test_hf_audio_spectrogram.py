"""The spectrogram classifier of the audio plugin (log-mel front end + DCLS timm backbone), the synthetic audio
task and the fine-tuning example.

References: torchaudio's MelSpectrogram where torchaudio imports (the front end is plain torch), the model before
saving, and checkpoints the tests write themselves.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import warnings
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)
transformers = pytest.importorskip("transformers")
pytest.importorskip("timm")

import dclszoo  # noqa: E402
from dclszoo import DclsConvNd  # noqa: E402
from dclszoo.plugins.hf_audio import (DCLS_AUDIO, MelSpectrogram, SpectrogramDclsConfig,  # noqa: E402
                                      SpectrogramDclsForAudioClassification, get_preset, mel_filterbank)
from dclszoo.tasks import AUDIO_EVENT_CLASSES, AudioEventTask  # noqa: E402

dclszoo.enable()
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "finetune_audio.py"
SMALL = dict(depths=(2, 2, 1, 1), dims=(8, 16, 24, 32))


def _config(backbone: str = "convnext_atto", **kwargs) -> SpectrogramDclsConfig:
    kwargs.setdefault("backbone_kwargs", SMALL)
    return SpectrogramDclsConfig(backbone=backbone, n_mels=32, num_labels=5, **kwargs)


def _dcls(model) -> dict[str, DclsConvNd]:
    return {n: m for n, m in model.named_modules() if isinstance(m, DclsConvNd)}


def _waves(n: int = 2, seed: int = 0) -> torch.Tensor:
    return AudioEventTask().sample(n, seed)[0]


@torch.no_grad()
def _perturb(model, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in _dcls(model).values():
        m.positions.add_(torch.rand(m.positions.shape, generator=gen) - 0.5)
        m.weight.add_(0.1 * torch.randn(m.weight.shape, generator=gen))


# --------------------------------------------------------------------------- front end
def test_mel_front_end_matches_torchaudio():
    ta = pytest.importorskip("torchaudio.transforms")  # the reference, where it works with this torch
    x = _waves(3)
    for kwargs in (dict(n_fft=400, hop_length=160, n_mels=32), dict(n_fft=512, hop_length=128, win_length=400,
                                                                    n_mels=40, f_min=50.0, f_max=7000.0)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchaudio: empty filters warning for some settings
            ref = torch.log(ta.MelSpectrogram(16000, **kwargs)(x) + 1e-6)
        ours = MelSpectrogram(16000, **kwargs)(x)
        assert ours.shape == (3, 1) + ref.shape[1:]
        torch.testing.assert_close(ours[:, 0], ref, rtol=0, atol=2e-5 * ref.abs().max().item())


def test_mel_filterbank_is_a_partition_of_the_mel_band():
    fb = mel_filterbank(201, 16000, 20)
    assert fb.shape == (201, 20) and (fb >= 0).all() and fb.max() <= 1
    inner = fb.sum(1)[(torch.linspace(0, 8000, 201) > 200) & (torch.linspace(0, 8000, 201) < 7000)]
    torch.testing.assert_close(inner, torch.ones_like(inner), atol=0.05, rtol=0)  # adjacent triangles sum to ~1
    with pytest.raises(ValueError, match="f_min"):
        mel_filterbank(201, 16000, 20, f_min=5000, f_max=4000)


# --------------------------------------------------------------------------- the model
def test_dcls_audio_preset():
    preset = get_preset("dcls_audio")
    assert (preset.kernel_count, preset.span, preset.interpolation, preset.share_positions) == (26, 23, "gauss", True)
    assert preset == DCLS_AUDIO
    model = SpectrogramDclsForAudioClassification(_config())
    convs = _dcls(model)
    assert len(convs) == 6 and all(m.span == (23, 23) and m.kernel_count == 26 and m.interpolation == "gauss"
                                   for m in convs.values())
    stage0 = model.backbone.stages[0].blocks
    assert stage0[1].conv_dw.positions is stage0[0].conv_dw.positions  # shared in a stage
    assert model.backbone.stages[1].blocks[0].conv_dw.positions is not stage0[0].conv_dw.positions
    with pytest.raises(ValueError, match="dcls_audio"):
        get_preset("dcls_video")


@pytest.mark.parametrize("backbone", ["convnext_atto", "convformer_s18"])
def test_spectrogram_model_trains_saves_and_reloads(backbone, tmp_path):
    torch.manual_seed(0)
    model = SpectrogramDclsForAudioClassification(_config(backbone)).eval()
    assert _dcls(model)
    x, y = AudioEventTask().sample(4, seed=3)
    out = model(input_values=x, labels=y)
    assert out.logits.shape == (4, 5) and torch.isfinite(out.loss)
    out.loss.backward()
    for name, m in _dcls(model).items():
        assert m.positions.grad is not None and m.positions.grad.abs().sum() > 0, name
    _perturb(model)
    with torch.no_grad():
        expected = model(input_values=x).logits
    model.save_pretrained(tmp_path / "m")
    torch.manual_seed(5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing may be missing from the checkpoint
        loaded = transformers.AutoModelForAudioClassification.from_pretrained(tmp_path / "m").eval()
    assert type(loaded) is SpectrogramDclsForAudioClassification
    if backbone == "convnext_atto":  # the stage sharing survives the meta-device load
        blocks = loaded.backbone.stages[0].blocks
        assert blocks[1].conv_dw.positions is blocks[0].conv_dw.positions
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_values=x).logits, expected, rtol=1e-6, atol=1e-6)
    dense = dclszoo.to_dense(copy.deepcopy(model))
    assert not _dcls(dense)
    with torch.no_grad():
        torch.testing.assert_close(dense(input_values=x).logits, expected, rtol=1e-5, atol=1e-5)


def test_spectrogram_model_on_the_meta_device_and_missing_tensors(tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    model = SpectrogramDclsForAudioClassification(_config()).eval()
    with torch.device("meta"):
        meta = SpectrogramDclsForAudioClassification(_config())
    assert all(m.weight.is_meta for m in _dcls(meta).values())
    geometry = lambda mod: [(n, m.extra_repr()) for n, m in _dcls(mod).items()]  # noqa: E731
    assert geometry(meta) == geometry(model)
    model.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    state = load_file(path)
    dropped = [k for k in state if k.endswith("conv_dw.positions")] + ["frontend.filterbank"]
    save_file({k: v for k, v in state.items() if k not in dropped}, path, metadata={"format": "pt"})
    with pytest.warns(UserWarning, match="DCLS initialisation"):
        loaded = transformers.AutoModelForAudioClassification.from_pretrained(tmp_path / "m").eval()
    for name, m in _dcls(loaded).items():
        assert torch.isfinite(m.positions).all() and 0.2 < m.positions.std() < 0.8, name
    torch.testing.assert_close(loaded.frontend.filterbank, model.frontend.filterbank)  # recomputed, not memory


def test_pipeline_on_a_saved_spectrogram_classifier(tmp_path):
    task = AudioEventTask()
    config = _config(id2label=task.id2label, label2id=task.label2id)
    model = SpectrogramDclsForAudioClassification(config).eval()
    model.save_pretrained(tmp_path / "clf")
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=False).save_pretrained(tmp_path / "clf")
    classifier = transformers.pipeline("audio-classification", model=str(tmp_path / "clf"), device="cpu")
    x = _waves(1)[0]
    result = classifier({"raw": x.numpy(), "sampling_rate": 16000}, top_k=5)
    assert sorted(r["label"] for r in result) == sorted(AUDIO_EVENT_CLASSES)
    with torch.no_grad():
        probs = model(input_values=x[None]).logits.softmax(-1)[0]
    assert abs(max(r["score"] for r in result) - float(probs.max())) < 1e-5


# --------------------------------------------------------------------------- the task and the example
def test_audio_event_task_is_deterministic_balanced_and_validated():
    task = AudioEventTask()
    x, y = task.sample(50, seed=7)
    x2, y2 = task.sample(50, seed=7)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape == (50, 8000) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert y.bincount().tolist() == [10] * 5
    assert not torch.equal(task.sample(50, seed=8)[0], x)
    assert AudioEventTask(classes=3).sample(9)[1].max() == 2
    # classes are not separable by loudness alone: mean clip energy within a factor 2 across classes
    energy = torch.stack([x[y == c].square().mean() for c in range(5)])
    assert energy.max() < 2 * energy.min()
    for bad in (dict(classes=1), dict(min_event=0.4, max_event=0.3), dict(f_max=9000.0), dict(noise=-1.0)):
        with pytest.raises(ValueError):
            AudioEventTask(**bad)


def test_finetune_example_runs_saves_and_reloads(tmp_path):
    spec = importlib.util.spec_from_file_location("finetune_audio_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example
    try:
        spec.loader.exec_module(example)
        result = example.main(["--out", str(tmp_path), "--train", "32", "--test", "16", "--epochs", "1",
                               "--batch-size", "16", "--cpu"])
    finally:
        sys.modules.pop(spec.name, None)
    assert result["model_type"] == "wav2vec2_dcls"
    assert result["reloaded_class"] == "DclsWav2Vec2ForSequenceClassification"
    assert result["reload_max_abs_logit_diff"] == 0.0
    assert result["reloaded_test_accuracy"] == result["test_accuracy"]
    assert (tmp_path / "dcls-model" / "config.json").exists()
