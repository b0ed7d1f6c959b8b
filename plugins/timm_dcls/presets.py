"""Published DCLS recipes as :class:`dclszoo.DclsConfig` presets.

ConvNeXt-dcls (Hassani et al., ICLR 2023; ImageNet-1k, floor-form bilinear "v0" interpolation, positions
shared across the blocks of a stage; every 7x7 depthwise conv replaced):

- ``convnext_tiny``: 34 taps in 17x17, bilinear; top-1 82.1 -> 82.5.
- ``convnext_small``: 40 taps in 17x17, bilinear; top-1 83.1 -> 83.7.
- ``convnext_base``: 40 taps in 17x17, bilinear; top-1 83.8 -> 84.1.
- ``convnext_tiny_gauss``: 26 taps in 23x23, Gaussian ("beyond bilinear" ConvNeXt-T; the DCLS-Audio recipe).

These recipes were trained from scratch. Applied to a pretrained dense model they keep, per filter, the
``taps`` largest of its 49 weights (a lossy start, reported by ``module.conversion_error``); the default
``DclsConfig()`` is the exact, function-preserving conversion.
"""

from __future__ import annotations

from dclszoo.config import DclsConfig

__all__ = ["PRESETS", "get_preset", "list_presets", "paper_preset_for"]

PRESETS: dict[str, dict] = {
    "convnext_tiny": dict(kernel_count=34, span=17, interpolation="bilinear", share_positions=True),
    "convnext_small": dict(kernel_count=40, span=17, interpolation="bilinear", share_positions=True),
    "convnext_base": dict(kernel_count=40, span=17, interpolation="bilinear", share_positions=True),
    "convnext_tiny_gauss": dict(kernel_count=26, span=23, interpolation="gauss", share_positions=True),
}


def list_presets() -> list[str]:
    """Names accepted by :func:`get_preset`."""
    return sorted(PRESETS)


def get_preset(name: str) -> DclsConfig:
    """A fresh :class:`DclsConfig` for a published recipe.

    Raises:
        ValueError: unknown ``name`` (the message lists the presets).
    """
    if name not in PRESETS:
        raise ValueError(f"preset={name!r}: unknown DCLS preset; expected one of {list_presets()}.")
    return DclsConfig(**PRESETS[name])


def paper_preset_for(arch: str) -> str | None:
    """The preset of the published recipe for a timm architecture name (``convnext_tiny`` ...), if any."""
    base = arch.split(".")[0]
    return base if base in PRESETS else None
