"""DCLS settings of published audio recipes.

- :data:`DCLS_AUDIO`: DCLS-Audio (AudioSet-2M; ConvNeXt-T 44.83 -> 45.52 mAP, FastViT-SA24 43.82 -> 44.40,
  ConvFormer-S18 43.14 -> 43.68): Gaussian interpolation, 26 taps in a 23x23 span, every depthwise convolution of
  the spectrogram backbone replaced, positions shared across the blocks of a stage (the ConvNeXt-dcls recipe);
  trained from scratch, positions with 5x the base learning rate and no weight decay. It is the default of
  :class:`~.spectrogram_model.SpectrogramDclsConfig` and the timm plugin's ``convnext_tiny_gauss`` preset.

For the transformers families the default is the exact conversion (``DclsConfig()``: span = kernel size), which
keeps a pretrained model's function; widen the span (``DclsConfig(span=...)``, per target group if their kernel
sizes differ in parity) to give the taps room to move.
"""

from __future__ import annotations

from dclszoo.config import DclsConfig
from dclszoo.training import POSITION_LR_SCALE  # DCLS-Audio: positions at 5x the base learning rate, as DCLS

__all__ = ["DCLS_AUDIO", "PRESETS", "get_preset", "list_presets", "POSITION_LR_SCALE"]

DCLS_AUDIO = DclsConfig(kernel_count=26, span=23, interpolation="gauss", share_positions=True)

PRESETS: dict[str, dict] = {"dcls_audio": DCLS_AUDIO.to_dict()}


def list_presets() -> list[str]:
    """Names accepted by :func:`get_preset`."""
    return sorted(PRESETS)


def get_preset(name: str) -> DclsConfig:
    """A fresh :class:`dclszoo.DclsConfig` of a published audio recipe.

    Raises:
        ValueError: unknown ``name`` (the message lists the presets).
    """
    if name not in PRESETS:
        raise ValueError(f"preset={name!r}: unknown audio DCLS preset; expected one of {list_presets()}.")
    return DclsConfig.from_dict(PRESETS[name])
