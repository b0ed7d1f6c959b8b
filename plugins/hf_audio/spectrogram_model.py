"""A spectrogram audio classifier with a DCLS timm backbone, as a transformers model type (``spectrogram_dcls``).

DCLS-Audio (Khalfaoui-Hassani, Masquelier, Pellegrini, "Audio classification with dilated convolution with
learnable spacings", 2023) put DCLS ConvNeXt / ConvFormer / FastViT backbones behind log-mel spectrograms on
AudioSet (Gaussian taps, 26 in a 23x23 span). Here the same idea is a transformers model:
:class:`SpectrogramDclsForAudioClassification` = :class:`~.mel.MelSpectrogram` (waveform -> log-mel on the
model's device) -> a timm backbone (one input channel) whose depthwise convolutions are DCLS ones
(``config.dcls``, default :data:`~.presets.DCLS_AUDIO`: positions shared across the blocks of a stage, as the
published ConvNeXt-dcls).

It takes raw waveforms (``input_values [batch, samples]``) like wav2vec2, so ``Wav2Vec2FeatureExtractor`` is its
feature extractor and ``pipeline("audio-classification", model=dir)`` works on a saved model once
``dclszoo.enable()`` registered the type. The DCLS layers are built with DCLS initialisation (a new model is
trained from scratch, as in the paper), on the meta device too when transformers loads a checkpoint; positions
shared in a stage are tied again after loading (the loader replaces the owner's tensor).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from dclszoo.config import DclsConfig
from dclszoo.modules import DclsConvNd
from dclszoo.patching import is_target_conv, replace_modules

from .families import SPECTROGRAM_TYPE
from .mel import MelSpectrogram
from .models import init_dcls_parameters, load_checked, not_loaded
from .patch import geometry_twin
from .presets import DCLS_AUDIO

try:  # transformers >= 5: init functions that skip tensors loaded from a checkpoint
    from transformers import initialization as _init
except ImportError:  # pragma: no cover
    _init = nn.init

__all__ = ["SpectrogramDclsConfig", "SpectrogramDclsForAudioClassification", "register_spectrogram",
           "build_backbone"]

MODEL_TYPE = SPECTROGRAM_TYPE


class SpectrogramDclsConfig(PreTrainedConfig):
    """Configuration of :class:`SpectrogramDclsForAudioClassification`.

    Args:
        backbone: timm architecture (``"convnext_tiny"``, ``"convformer_s18"``, ...); built with ``in_chans=1``.
        backbone_kwargs: Extra timm arguments (``depths``, ``dims``, ``drop_path_rate``, ...).
        dcls: ``DclsConfig.to_dict()`` for the backbone's depthwise convolutions (default: DCLS-Audio's
            Gaussian 26 taps in 23x23, positions shared per stage).
        sampling_rate, n_fft, hop_length, win_length, n_mels, f_min, f_max, log_offset, spec_mean, spec_std:
            The log-mel front end (:class:`~.mel.MelSpectrogram`).
        kwargs: ``PreTrainedConfig`` arguments (``num_labels``, ``id2label``, ...).
    """

    model_type = MODEL_TYPE

    def __init__(self, backbone: str = "convnext_tiny", backbone_kwargs: dict | None = None,
                 dcls: dict | None = None, sampling_rate: int = 16000, n_fft: int = 400, hop_length: int = 160,
                 win_length: int | None = None, n_mels: int = 64, f_min: float = 0.0, f_max: float | None = None,
                 log_offset: float = 1e-6, spec_mean: float = 0.0, spec_std: float = 1.0, **kwargs: Any) -> None:
        self.backbone = backbone
        self.backbone_kwargs = dict(backbone_kwargs or {})
        dcls = DclsConfig.from_dict(dcls) if isinstance(dcls, dict) else (dcls or DCLS_AUDIO)
        if not isinstance(dcls, DclsConfig):
            raise TypeError(f"SpectrogramDclsConfig.dcls={dcls!r}: expected a DclsConfig or its to_dict() dict.")
        self.dcls = dcls.to_dict()
        self.sampling_rate, self.n_fft, self.hop_length, self.win_length = sampling_rate, n_fft, hop_length, win_length
        self.n_mels, self.f_min, self.f_max = n_mels, f_min, f_max
        self.log_offset, self.spec_mean, self.spec_std = log_offset, spec_mean, spec_std
        super().__init__(**kwargs)


def _create_timm(name: str, num_classes: int, kwargs: dict) -> nn.Module:
    import timm

    if name.startswith("convformer") and ("depths" in kwargs or "dims" in kwargs):
        # timm's convformer_* entrypoints fix depths/dims; a smaller ConvFormer is the same MetaFormer
        from timm.models.metaformer import LayerNorm2dNoBias, MetaFormer, SepConv

        args = dict(token_mixers=SepConv, norm_layers=LayerNorm2dNoBias)
        args.update(kwargs)
        return MetaFormer(num_classes=num_classes, in_chans=1, **args)
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=1, **kwargs)


def build_backbone(name: str, num_classes: int, kwargs: dict, config: DclsConfig) -> nn.Module:
    """A timm backbone with DCLS depthwise convolutions of ``config``'s geometry, DCLS-initialised.

    Selection and sharing follow the timm plugin (its convertible conv classes, ``config.targets``, stage groups);
    building uses :func:`~.patch.geometry_twin`, so it also works on the meta device.
    """
    from dclszoo.plugins.timm_dcls.patch import conv_kind
    from dclszoo.plugins.timm_dcls.sharing import sharing_groups, tie_positions

    backbone = _create_timm(name, num_classes, kwargs)
    if any(callable(getattr(m, "reparameterize", None)) for m in backbone.modules()):
        raise ValueError(
            f"backbone={name!r} has re-parameterisable blocks (their branches are fused by reading conv weights); "
            f"use a backbone without them (ConvNeXt, ConvFormer, ...)."
        )
    chosen = [(fqn, m) for fqn, m in backbone.named_modules()
              if conv_kind(m) is not None and is_target_conv(m, config)]
    if not chosen:
        raise ValueError(f"backbone={name!r} has no convolution matching {config!r}; pick a depthwise-conv backbone.")
    groups = sharing_groups(chosen) if config.share_positions else [[pair] for pair in chosen]
    new: dict[str, tuple[nn.Module, DclsConvNd]] = {}
    for group in groups:
        twins = [geometry_twin(conv, config, fqn, cls=conv_kind(conv)) for fqn, conv in group]
        for (fqn, conv), twin in zip(group, twins):
            new[fqn] = (conv, twin)
            if twin is not twins[0]:
                tie_positions(twins[0], twin, group[0][0])

    def make(module: nn.Module, fqn: str) -> nn.Module | None:
        entry = new.get(fqn)
        return entry[1] if entry is not None and entry[0] is module else None

    replace_modules(backbone, make, plugin="hf_audio")
    return backbone


def retie_positions(backbone: nn.Module) -> None:
    """Point followers at their owner's positions again (after a loader replaced the owner's Parameter)."""
    from dclszoo.plugins.timm_dcls.sharing import FOLLOWER_ATTR

    for module in backbone.modules():
        owner = getattr(module, FOLLOWER_ATTR, None)  # the owner's name inside the backbone (tie_positions)
        if owner is not None:
            module.positions = backbone.get_submodule(owner).positions


class SpectrogramDclsForAudioClassification(PreTrainedModel):
    """Log-mel front end + DCLS timm backbone + classification head (see the module docstring).

    ``forward(input_values [batch, samples], labels=None)`` returns a ``SequenceClassifierOutput`` (cross-entropy
    loss when ``labels`` are given).
    """

    config_class = SpectrogramDclsConfig
    main_input_name = "input_values"
    input_modalities = "audio"
    base_model_prefix = "spectrogram_dcls"

    def __init__(self, config: SpectrogramDclsConfig) -> None:
        super().__init__(config)
        self.frontend = MelSpectrogram(
            config.sampling_rate, config.n_fft, config.hop_length, config.win_length, config.n_mels, config.f_min,
            config.f_max, config.log_offset, config.spec_mean, config.spec_std)
        self.dclszoo_config = DclsConfig.from_dict(config.dcls)
        self.backbone = build_backbone(config.backbone, config.num_labels, config.backbone_kwargs, self.dclszoo_config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, DclsConvNd):
            init_dcls_parameters(module, not_loaded(module))
        elif isinstance(module, MelSpectrogram):
            if not getattr(module.filterbank, "_is_hf_initialized", False):
                module.reset_buffers()
        elif isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):  # timm's ConvNeXt / MetaFormer init
            _init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                _init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or "LayerNorm" in type(module).__name__:
            if getattr(module, "weight", None) is not None:
                _init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                _init.zeros_(module.bias)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path=None, *model_args, **kwargs):
        """``PreTrainedModel.from_pretrained``, then shared positions tied again, DCLS tensors the checkpoint lacks
        DCLS-initialised (with a warning); a tensor of the wrong shape raises ``ValueError`` naming it."""
        return load_checked(cls, super().from_pretrained, pretrained_model_name_or_path, *model_args,
                            after=lambda model: retie_positions(model.backbone), **kwargs)

    def forward(self, input_values: torch.Tensor, labels: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, return_dict: bool | None = None,
                **kwargs: Any) -> SequenceClassifierOutput:
        # attention_mask is accepted for the feature extractor's sake; padding is zeros and the backbone pools.
        spec = self.frontend(input_values)
        dtype = next(self.backbone.parameters()).dtype
        logits = self.backbone(spec.to(dtype))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels.to(logits.device))
        return SequenceClassifierOutput(loss=loss, logits=logits)


def register_spectrogram() -> None:
    """Register ``spectrogram_dcls`` with AutoConfig, AutoModel(ForAudioClassification) and AutoFeatureExtractor."""
    from transformers import (AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForAudioClassification,
                              Wav2Vec2FeatureExtractor)

    AutoConfig.register(MODEL_TYPE, SpectrogramDclsConfig, exist_ok=True)
    AutoModel.register(SpectrogramDclsConfig, SpectrogramDclsForAudioClassification, exist_ok=True)
    AutoModelForAudioClassification.register(SpectrogramDclsConfig, SpectrogramDclsForAudioClassification,
                                             exist_ok=True)
    AutoFeatureExtractor.register(SpectrogramDclsConfig, Wav2Vec2FeatureExtractor, exist_ok=True)
