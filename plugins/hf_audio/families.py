"""The transformers audio families the plugin supports, and where their convolutions are.

A family is keyed by the ``model_type`` of its transformers config. Each names its convolutions in **target
groups** (aliases for module-name patterns, matched with :func:`fnmatch.fnmatchcase` against the module's full
name and against the name without the base-model prefix):

- ``positional``: the grouped positional convolution of the wav2vec2 family (``encoder.pos_conv_embed.conv``,
  kernel 128, 16 groups, weight-normed; SEW / SEW-D with stride ``squeeze_factor``), or Data2VecAudio's stack of
  five plain ones (``encoder.pos_conv_embed.layers.{i}.conv``, kernel 19).
- ``depthwise``: the depthwise convolution of conformer blocks (``conv_module.depthwise_conv``, kernel 31 in
  Wav2Vec2-Conformer / Wav2Vec2-BERT / SeamlessM4T, 7 and 31 in FastSpeech2Conformer, Parakeet's
  ``layers.{i}.conv.depthwise_conv``, kernel 9). Wav2Vec2-BERT and SeamlessM4T-v2 pad these causally (the block
  pads ``kernel_size - 1`` frames on the left): their DCLS twins keep the taps in the past
  (:class:`~.causal.CausalDclsConv1d`).
- ``feature_encoder``: the strided convolutions of the wav2vec2 family's waveform encoder
  (``feature_extractor.conv_layers.{i}.conv``, kernels 10, 3, 3, 3, 3, 2, 2; the 2-tap ones are below the default
  ``DclsConfig.min_kernel_size``).
- ``conv_stem``: Whisper's ``encoder.conv1`` / ``encoder.conv2`` (kernel 3), Parakeet's 2-D subsampling convs.

``default`` groups are what ``dclszoo.patch(model, DclsConfig(...))`` replaces; the others are replaced on
request (``patch_audio(model, config, targets=[...])``). Whisper has no default: its stem is converted only on
request. This module is plain data (no transformers import).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Mapping

__all__ = ["Family", "FAMILIES", "GROUPS", "DCLS_SUFFIX", "SPECTROGRAM_TYPE", "family_for", "supported_model_types",
           "dense_model_type"]

DCLS_SUFFIX = "_dcls"
SPECTROGRAM_TYPE = "spectrogram_dcls"
"""``model_type`` of :class:`~.spectrogram_model.SpectrogramDclsForAudioClassification` (defined here: no
transformers import)."""
GROUPS = ("positional", "depthwise", "feature_encoder", "conv_stem")

_POS = ("*encoder.pos_conv_embed.conv",)
_POS_STACK = ("*encoder.pos_conv_embed.layers.*.conv",)
_FEATURES = ("*feature_extractor.conv_layers.*.conv",)
_CONFORMER_DW = ("*conv_module.depthwise_conv",)


@dataclass(frozen=True)
class Family:
    """One transformers model family.

    Attributes:
        name: Human-readable name (``"Wav2Vec2-BERT"``).
        groups: Target group -> module-name patterns.
        default: Groups replaced when no targets are given.
        causal: Groups whose convolutions the model pads causally (``kernel_size - 1`` frames on the left).
    """

    name: str
    groups: Mapping[str, tuple[str, ...]]
    default: tuple[str, ...]
    causal: tuple[str, ...] = field(default=())


_W2V2_LIKE = {"positional": _POS, "feature_encoder": _FEATURES}

FAMILIES: dict[str, Family] = {
    "wav2vec2": Family("Wav2Vec2", _W2V2_LIKE, ("positional",)),
    "hubert": Family("HuBERT", _W2V2_LIKE, ("positional",)),
    "wavlm": Family("WavLM", _W2V2_LIKE, ("positional",)),
    "unispeech": Family("UniSpeech", _W2V2_LIKE, ("positional",)),
    "unispeech-sat": Family("UniSpeech-SAT", _W2V2_LIKE, ("positional",)),
    "sew": Family("SEW", _W2V2_LIKE, ("positional",)),
    "sew-d": Family("SEW-D", _W2V2_LIKE, ("positional",)),
    "data2vec-audio": Family("Data2VecAudio", {"positional": _POS_STACK, "feature_encoder": _FEATURES},
                             ("positional",)),
    "wav2vec2-conformer": Family("Wav2Vec2-Conformer", dict(_W2V2_LIKE, depthwise=_CONFORMER_DW), ("depthwise",)),
    "wav2vec2-bert": Family("Wav2Vec2-BERT", {"depthwise": _CONFORMER_DW}, ("depthwise",), causal=("depthwise",)),
    "seamless_m4t": Family("SeamlessM4T (speech encoder)", {"depthwise": _CONFORMER_DW}, ("depthwise",)),
    "seamless_m4t_v2": Family("SeamlessM4T-v2 (speech encoder)", {"depthwise": _CONFORMER_DW}, ("depthwise",),
                              causal=("depthwise",)),
    "fastspeech2_conformer": Family("FastSpeech2Conformer", {"depthwise": _CONFORMER_DW}, ("depthwise",)),
    "fastspeech2_conformer_with_hifigan": Family("FastSpeech2Conformer + HiFi-GAN", {"depthwise": _CONFORMER_DW},
                                                 ("depthwise",)),
    "parakeet_ctc": Family("Parakeet (CTC)", {"depthwise": ("*.depthwise_conv",),
                                              "conv_stem": ("*subsampling.layers.*",)}, ("depthwise",)),
    "parakeet_encoder": Family("Parakeet (encoder)", {"depthwise": ("*.depthwise_conv",),
                                                      "conv_stem": ("*subsampling.layers.*",)}, ("depthwise",)),
    "whisper": Family("Whisper", {"conv_stem": ("*encoder.conv1", "*encoder.conv2")}, ()),
}


def dense_model_type(model_type: str) -> str:
    """``"wav2vec2_dcls"`` -> ``"wav2vec2"``; other names unchanged."""
    return model_type[: -len(DCLS_SUFFIX)] if model_type.endswith(DCLS_SUFFIX) else model_type


def supported_model_types() -> list[str]:
    """The dense ``model_type`` of every supported family."""
    return list(FAMILIES)


def family_for(model_type: str) -> Family | None:
    """The family of a (dense or DCLS) ``model_type``, or None if unsupported."""
    return FAMILIES.get(dense_model_type(model_type))


def matches(fqn: str, pattern: str, prefix: str = "") -> bool:
    """Whether module name ``fqn`` matches ``pattern``, with or without the base-model ``prefix``."""
    if fnmatchcase(fqn, pattern):
        return True
    return bool(prefix) and fqn.startswith(prefix + ".") and fnmatchcase(fqn[len(prefix) + 1:], pattern)
