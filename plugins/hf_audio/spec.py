"""``AudioPatchSpec``: which convolutions of a transformers audio model become DCLS, with which settings.

It is what a DCLS model type stores in its config (``config.dcls``, a plain dict in config.json), so that a saved
model is rebuilt with the same DCLS geometry before its weights are loaded. A spec is an ordered list of
``(target, DclsConfig)`` pairs; a target is a target group of the model's family (``"positional"``,
``"depthwise"``, ``"feature_encoder"``, ``"conv_stem"``, see :mod:`.families`) or a module-name pattern
(``"*.layers.0.conv_module.depthwise_conv"``). A convolution matched by several targets takes the settings of
the first.

Once applied to a model, the spec also records the **resolved** module names (``modules``: name without the base
model prefix -> index of its target). A model rebuilt from a resolved spec converts exactly those modules, whatever
``filter_fn`` or ``min_kernel_size`` chose at the time, so the DCLS geometry always matches the saved weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from dclszoo.config import DclsConfig

__all__ = ["AudioPatchSpec", "SPEC_VERSION"]

SPEC_VERSION = 1


def _check_dcls_config(config: DclsConfig, where: str) -> DclsConfig:
    if not isinstance(config, DclsConfig):
        raise TypeError(f"{where}={config!r}: expected a dclszoo.DclsConfig (or its to_dict() dict).")
    if config.targets != "depthwise":
        raise ValueError(
            f"{where}.targets={config.targets!r}: for transformers audio models the convolutions are chosen by name; "
            f"keep DclsConfig.targets at its default and pass targets=[...] (target groups or module-name patterns) "
            f"to dclszoo.plugins.hf_audio.patch_audio."
        )
    if config.share_positions:
        raise ValueError(
            f"{where}.share_positions=True: transformers audio models have no stages to share positions across; "
            f"use share_positions=False."
        )
    return config


def _as_config(value: Any, default: DclsConfig, where: str) -> DclsConfig:
    if value is None:
        return default
    if isinstance(value, dict):
        value = DclsConfig.from_dict(value)
    return _check_dcls_config(value, where)


@dataclass
class AudioPatchSpec:
    """Ordered ``(target, DclsConfig)`` pairs (see the module docstring)."""

    targets: list[tuple[str, DclsConfig]] = field(default_factory=list)
    modules: dict[str, int] | None = None

    @classmethod
    def build(cls, config: DclsConfig | None, targets: Any, default_groups: Sequence[str]) -> "AudioPatchSpec":
        """A spec from the user-facing arguments.

        Args:
            config: Settings for every target without its own (None = ``DclsConfig()``, the exact conversion).
            targets: None (the family's default groups), one target, a sequence of targets, or a mapping
                target -> ``DclsConfig`` / dict / None (None = ``config``).
            default_groups: The family's default groups.
        """
        base = _as_config(config, DclsConfig(), "config")
        if targets is None:
            targets = list(default_groups)
        if isinstance(targets, str):
            targets = [targets]
        if isinstance(targets, Mapping):
            pairs = [(t, _as_config(c, base, f"targets[{t!r}]")) for t, c in targets.items()]
        elif isinstance(targets, Sequence):
            pairs = [(t, base) for t in targets]
        else:
            raise TypeError(
                f"targets={targets!r}: expected None, a target name or pattern, a list of them, or a dict target -> "
                f"DclsConfig."
            )
        for t, _ in pairs:
            if not isinstance(t, str) or not t:
                raise TypeError(f"targets: {t!r} is not a target group name or a module-name pattern (a str).")
        return cls(pairs)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form stored as ``config.dcls``."""
        out: dict[str, Any] = {
            "version": SPEC_VERSION, "targets": [{"target": t, "config": c.to_dict()} for t, c in self.targets]
        }
        if self.modules is not None:
            out["modules"] = dict(self.modules)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> "AudioPatchSpec":
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: not a spec dict, or written by a newer dclszoo.
        """
        if not isinstance(data, dict) or not isinstance(data.get("targets"), list):
            raise ValueError(
                f"config.dcls={data!r}: expected a dclszoo audio patch spec ({{'version': 1, 'targets': [...]}})."
            )
        version = data.get("version", 1)
        if not isinstance(version, int) or version > SPEC_VERSION:
            raise ValueError(
                f"config.dcls version {version!r} was written by a newer dclszoo (this one reads up to "
                f"{SPEC_VERSION}); upgrade dclszoo."
            )
        pairs = []
        for i, entry in enumerate(data["targets"]):
            if not isinstance(entry, dict) or "target" not in entry or "config" not in entry:
                raise ValueError(
                    f"config.dcls['targets'][{i}]={entry!r}: expected {{'target': ..., 'config': {{...}}}}.")
            pairs.append((entry["target"], _check_dcls_config(DclsConfig.from_dict(entry["config"]),
                                                              f"config.dcls['targets'][{i}]")))
        modules = data.get("modules")
        if modules is not None:
            ok = isinstance(modules, dict) and all(
                isinstance(k, str) and isinstance(v, int) and 0 <= v < len(pairs) for k, v in modules.items())
            if not ok:
                raise ValueError(f"config.dcls['modules']={modules!r}: expected module name -> index into 'targets'.")
            modules = dict(modules)
        return cls(pairs, modules)
