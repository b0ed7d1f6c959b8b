"""The Hugging Face transformers audio plugin of dclszoo: DCLS convolutions in transformers audio models.

* ``dclszoo.patch(model, DclsConfig(...))`` converts the family's default convolutions of a transformers audio
  model (the wav2vec2 family's positional conv, the conformers' depthwise convs), function-preserving;
  :func:`patch_audio` chooses them by target group or module-name pattern (feature encoder, Whisper's conv stem on
  request). See :mod:`.families`, :mod:`.patch`.
* After ``dclszoo.enable()`` every family has a DCLS model type (``wav2vec2_dcls``, ...; :mod:`.models`):
  ``save_pretrained`` then ``AutoModelForCTC.from_pretrained(dir)`` gives the DCLS model back, and
  ``DclsWav2Vec2ForCTC.from_pretrained(<dense checkpoint>)`` converts a dense checkpoint on load.
* :class:`SpectrogramDclsForAudioClassification` (``spectrogram_dcls``): log-mel front end + DCLS timm backbone
  (DCLS-Audio, :data:`DCLS_AUDIO`).
* ``dclszoo.save_pretrained`` / ``push_to_hub`` / ``from_pretrained`` rebuild these models (the DCLS types, the
  dense families, the spectrogram classifier) from their class and config, and the Auto classes read the same
  checkpoint (:mod:`.hub`).

Importing this package does not import transformers or timm (the transformers-based names below are loaded on
first access). The code is device-agnostic: the front end and every DCLS layer run where the model is.
"""

from __future__ import annotations

from .api import patch_audio
from .causal import CausalDclsConv1d
from .families import FAMILIES, GROUPS, Family, supported_model_types
from .mel import MelSpectrogram, mel_filterbank
from .models import register_all
from .presets import DCLS_AUDIO, get_preset, list_presets
from .spec import AudioPatchSpec

__all__ = [
    "patch_audio", "AudioPatchSpec", "CausalDclsConv1d", "FAMILIES", "GROUPS", "Family", "supported_model_types",
    "MelSpectrogram", "mel_filterbank", "DCLS_AUDIO", "get_preset", "list_presets",
    "SpectrogramDclsConfig", "SpectrogramDclsForAudioClassification", "register_all",
]

_LAZY = {  # these import transformers
    "SpectrogramDclsConfig": ".spectrogram_model",
    "SpectrogramDclsForAudioClassification": ".spectrogram_model",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
