"""The timm plugin of dclszoo: DCLS convolutions in timm models.

* ``dclszoo.patch(timm_model, DclsConfig(...))`` converts the depthwise convolutions (or dense ones with
  ``targets='dense'``), function-preserving, including timm's dynamic-padding ``Conv2dSame``
  (:class:`DclsConv2dSame`); see :mod:`.patch`.
* After ``dclszoo.enable()``, every supported architecture ``<arch>`` has a timm entry ``<arch>_dcls``
  (:mod:`.registry`): ``timm.create_model("convnext_tiny_dcls", pretrained=True, dcls="paper")``.
* Presets of the published recipes (:mod:`.presets`) and positions shared across the blocks of a stage
  (:mod:`.sharing`).

Importing this package does not import timm.
"""

from .presets import PRESETS, get_preset, list_presets
from .same_conv import DclsConv2dSame

__all__ = ["DclsConv2dSame", "PRESETS", "get_preset", "list_presets"]
