"""``dclszoo_config.json``: what a saved dclszoo checkpoint is and how to rebuild it (:class:`CheckpointConfig`).

The file is written by :func:`dclszoo.save_pretrained` next to the weights and read first by
:func:`dclszoo.from_pretrained`. It is plain JSON (never code, never a pickle): which plugin rebuilds the
model, the architecture or registered builder, the patch config, the weights file and its SHA-256, and the
package versions that wrote it. Like the other configs it carries a ``version``: a file written by a newer
dclszoo warns and drops the keys this version does not know (see :class:`dclszoo.config.DclsConfig`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .config import _JsonConfig

__all__ = ["CheckpointConfig", "CONFIG_NAME", "FULL_WEIGHTS", "ADAPTER_WEIGHTS", "MODES", "first_non_json"]

CONFIG_NAME = "dclszoo_config.json"
FULL_WEIGHTS = "model.safetensors"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MODES = ("full", "adapter")
BASE_FORMATS = ("native", "dclszoo")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _check_str(name: str, value: Any, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        expected = "a non-empty string" + (" or None" if optional else "")
        raise ValueError(f"CheckpointConfig.{name}={value!r}: expected {expected}.")


def _check_dict(name: str, value: Any, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, dict):
        raise ValueError(f"CheckpointConfig.{name}={value!r}: expected a JSON object (dict).")


@dataclass
class CheckpointConfig(_JsonConfig):
    """Contents of ``dclszoo_config.json`` (one saved model)."""

    CURRENT_VERSION: ClassVar[int] = 1

    mode: str = field(default="full", metadata={"help": (
        "'full': every tensor of the model's state_dict is in `weights`. 'adapter': only the dclszoo modules' "
        "tensors (and `extra_modules`); the rest comes from the base model."
    )})
    weights: str = field(default=FULL_WEIGHTS, metadata={"help": "Safetensors file name inside the checkpoint."})
    weights_sha256: str | None = field(default=None, metadata={"help": "SHA-256 of the weights (corruption check)."})
    plugin: str | None = field(default=None, metadata={"help": (
        "dclszoo plugin that rebuilds the model (None: a plain torch model, rebuilt from `builder` or model=)."
    )})
    plugin_version: str | None = field(default=None, metadata={"help": "Version of that plugin when saved."})
    pip: str | None = field(default=None, metadata={"help": "What to pip-install to load it (error messages)."})
    architecture: str | None = field(default=None, metadata={"help": "The zoo's architecture name (unpatched)."})
    model_args: dict = field(default_factory=dict, metadata={"help": "Keyword arguments rebuilding the architecture."})
    builder: dict | None = field(default=None, metadata={"help": (
        "A registered builder that rebuilds the model: {'name', 'kwargs', 'module'} (dclszoo.hub.register_builder)."
    )})
    model_class: str | None = field(default=None, metadata={"help": "Class of the saved model (information only)."})
    patch_config: dict | None = field(default=None, metadata={"help": (
        "The DclsConfig / DelayConfig the model was patched with (to_dict()), or None."
    )})
    module_attributes: dict = field(default_factory=dict, metadata={"help": (
        "Settings of dclszoo modules that are not tensors: {fqn: {attribute: value}} (custom position_bounds, "
        "a forced delay path)."
    )})
    base_model: str | None = field(default=None, metadata={"help": "Base checkpoint (repo id or path) of an adapter."})
    base_revision: str | None = field(default=None, metadata={"help": "Revision of the base checkpoint."})
    base_format: str | None = field(default=None, metadata={"help": (
        "'native': the zoo's own pretrained weights, loaded by the plugin; 'dclszoo': a checkpoint loaded with "
        "dclszoo.from_pretrained. Adapters only."
    )})
    extra_modules: list = field(default_factory=list, metadata={"help": (
        "Module name prefixes whose tensors an adapter stores besides the dclszoo modules' (a new head)."
    )})
    base_fingerprint: dict | None = field(default=None, metadata={"help": (
        "Adapters: SHA-256 prefix of every tensor taken from the base, to detect a base that changed."
    )})
    native_files: list = field(default_factory=list, metadata={"help": "Zoo-native files written alongside."})
    dclszoo_version: str | None = field(default=None, metadata={"help": "dclszoo version that wrote the file."})
    torch_version: str | None = field(default=None, metadata={"help": "torch version that wrote the file."})
    version: int = field(default=1, metadata={"help": "Schema version of dclszoo_config.json."})

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"CheckpointConfig.mode={self.mode!r}: expected one of {MODES}.")
        if not isinstance(self.weights, str) or not _FILE_NAME.match(self.weights) or ".." in self.weights:
            raise ValueError(
                f"CheckpointConfig.weights={self.weights!r}: expected a plain file name inside the checkpoint "
                f"directory (letters, digits, '.', '_', '-'; no path), e.g. {FULL_WEIGHTS!r}."
            )
        if self.weights_sha256 is not None and (not isinstance(self.weights_sha256, str)
                                                or not _SHA256.match(self.weights_sha256)):
            raise ValueError(f"CheckpointConfig.weights_sha256={self.weights_sha256!r}: expected 64 lowercase hex "
                             f"digits.")
        for name in ("plugin", "plugin_version", "pip", "architecture", "model_class", "base_model", "base_revision",
                     "dclszoo_version", "torch_version"):
            _check_str(name, getattr(self, name))
        _check_dict("model_args", self.model_args)
        _check_dict("module_attributes", self.module_attributes)
        _check_dict("builder", self.builder, optional=True)
        _check_dict("patch_config", self.patch_config, optional=True)
        _check_dict("base_fingerprint", self.base_fingerprint, optional=True)
        if self.builder is not None and not isinstance(self.builder.get("name"), str):
            raise ValueError(f"CheckpointConfig.builder={self.builder!r}: expected a dict with a string 'name'.")
        for name in ("extra_modules", "native_files"):
            value = getattr(self, name)
            if isinstance(value, tuple):
                value = list(value)
                setattr(self, name, value)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"CheckpointConfig.{name}={value!r}: expected a list of strings.")
        if self.mode == "adapter":
            if self.base_format not in BASE_FORMATS:
                raise ValueError(
                    f"CheckpointConfig.base_format={self.base_format!r}: an adapter needs one of {BASE_FORMATS}."
                )
            if self.base_model is None:
                raise ValueError("CheckpointConfig.base_model=None: an adapter needs the base checkpoint it applies "
                                 "to.")
        self._check_version()


def first_non_json(values: dict[str, Any]) -> tuple[str, Any] | None:
    """The first ``(key, value)`` of ``values`` whose value ``json.dumps`` rejects, or None (all are JSON)."""
    for key, value in values.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            return key, value
    return None
