"""Configuration dataclasses: :class:`DclsConfig` (dense conv -> DCLS conv) and :class:`DelayConfig` (delays).

Both validate in ``__post_init__`` and round-trip through plain dicts and JSON. ``to_dict`` writes a
``config_type`` key so a stored config says what it is. Reading a dict with keys this version does not know
warns and drops them when the dict was written by a newer config ``version``, and raises otherwise (a typo).
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from .functional import INTERPOLATIONS

__all__ = ["DclsConfig", "DelayConfig", "config_from_dict", "DCLS_TARGETS", "DELAY_TARGETS"]

DCLS_TARGETS = ("depthwise", "dense", "all")
DELAY_TARGETS = ("linear", "conv")

C = TypeVar("C", bound="_JsonConfig")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(owner: str, name: str, value: Any, minimum: int, fix: str = "") -> None:
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{owner}.{name}={value!r}: expected an int >= {minimum}.{' ' + fix if fix else ''}")


def _check_bool(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{owner}.{name}={value!r}: expected True or False.")


class _JsonConfig:
    """Dict/JSON round trip shared by the config dataclasses."""

    CURRENT_VERSION: ClassVar[int] = 1

    def _check_version(self) -> None:
        name = type(self).__name__
        _check_int(name, "version", self.version, 1)
        if self.version > self.CURRENT_VERSION:
            raise ValueError(
                f"{name}.version={self.version}: this dclszoo understands {name} up to version "
                f"{self.CURRENT_VERSION}; upgrade dclszoo, or load it with {name}.from_dict (which drops unknown keys)."
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict (tuples become lists) with a ``config_type`` key."""
        out: dict[str, Any] = {"config_type": type(self).__name__}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Build a config from :meth:`to_dict` output.

        Raises:
            TypeError: ``data`` is not a dict, or has an unknown key while claiming this version or an older one.
            ValueError: ``config_type`` names another config class, or a value is invalid.
        """
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}.from_dict: expected a dict, got {type(data).__name__}.")
        data = dict(data)
        kind = data.pop("config_type", cls.__name__)
        if kind != cls.__name__:
            raise ValueError(
                f"{cls.__name__}.from_dict: config_type={kind!r}; use {kind}.from_dict or dclszoo.config_from_dict."
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        version = data.get("version", 1)
        newer = _is_int(version) and version > cls.CURRENT_VERSION
        if unknown and not newer:
            raise TypeError(
                f"{cls.__name__}.from_dict: unknown key(s) {unknown} in a version-{version} config; "
                f"valid keys are {sorted(names)}."
            )
        if newer:
            dropped = f"ignoring key(s) {unknown}" if unknown else "no unknown keys"
            warnings.warn(
                f"{cls.__name__}.from_dict: config version {version} is newer than this dclszoo's "
                f"{cls.CURRENT_VERSION} ({dropped}); upgrade dclszoo to use the newer settings.",
                stacklevel=2,
            )
            data["version"] = cls.CURRENT_VERSION
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_json(self, **kwargs: Any) -> str:
        """JSON string of :meth:`to_dict` (``kwargs`` go to ``json.dumps``, e.g. ``indent=2``)."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> help text."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


@dataclass
class DclsConfig(_JsonConfig):
    """How :func:`dclszoo.patch` turns dense convolutions into DCLS convolutions (function-preserving)."""

    kernel_count: int | None = field(default=None, metadata={"help": (
        "Taps per (out, in/groups) filter. None = every grid point of the original kernel (exact conversion); "
        "fewer keeps the largest-magnitude weights (approximate, reported)."
    )})
    span: int | tuple[int, ...] | None = field(default=None, metadata={"help": (
        "Size of the window the taps may move in. None = the dense kernel size. An int applies to every axis "
        "whose kernel size is > 1; a tuple gives one size per axis. Must be >= the kernel size, and differ from "
        "it by an even amount with numeric padding."
    )})
    interpolation: str = field(default="bilinear", metadata={"help": (
        f"Tap interpolation, one of {INTERPOLATIONS}. 'bilinear' converts exactly; 'gauss' blurs each tap."
    )})
    sigma: float = field(default=0.5, metadata={"help": "Initial Gaussian std in pixels (gauss only)."})
    learn_sigma: bool = field(default=True, metadata={"help": "Train sigma (else a buffer). Gauss only."})
    targets: str = field(default="depthwise", metadata={"help": (
        "Which convolutions to replace: 'depthwise' (groups == in_channels > 1, channel multipliers allowed), "
        "'dense' (groups == 1) or 'all'."
    )})
    min_kernel_size: int = field(default=3, metadata={"help": (
        "Skip convolutions whose kernel is smaller than this on every axis (1x1 convs by default)."
    )})
    share_positions: bool = field(default=False, metadata={"help": (
        "Share tap positions across the blocks of a stage (published ConvNeXt-dcls recipe). Needs a plugin "
        "that knows the model's stages; the generic fallback rejects it."
    )})
    version: int = field(default=1, metadata={"help": "Config schema version."})

    def __post_init__(self) -> None:
        n = "DclsConfig"
        if self.kernel_count is not None:
            _check_int(n, "kernel_count", self.kernel_count, 1, "Use None for an exact conversion.")
        if isinstance(self.span, list):
            self.span = tuple(self.span)
        if self.span is not None:
            ok = _is_int(self.span) and self.span >= 1
            ok |= isinstance(self.span, tuple) and len(self.span) > 0 and all(_is_int(s) and s >= 1 for s in self.span)
            if not ok:
                raise ValueError(f"{n}.span={self.span!r}: expected None, an int >= 1 or a tuple of ints >= 1.")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"{n}.interpolation={self.interpolation!r}: expected one of {INTERPOLATIONS}.")
        sigma_ok = isinstance(self.sigma, (int, float)) and not isinstance(self.sigma, bool)
        if not (sigma_ok and math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"{n}.sigma={self.sigma!r}: expected a positive finite float (Gaussian std in pixels).")
        _check_bool(n, "learn_sigma", self.learn_sigma)
        if self.targets not in DCLS_TARGETS:
            raise ValueError(f"{n}.targets={self.targets!r}: expected one of {DCLS_TARGETS}.")
        _check_int(n, "min_kernel_size", self.min_kernel_size, 1)
        _check_bool(n, "share_positions", self.share_positions)
        self._check_version()


@dataclass
class DelayConfig(_JsonConfig):
    """How :func:`dclszoo.patch` adds learnable synaptic delays (needs a plugin, e.g. ``spikingjelly``)."""

    max_delay: int = field(metadata={"help": "Largest delay in time steps + 1 (the temporal span); delays run 0..max_delay-1."})
    kernel_count: int = field(default=1, metadata={"help": "Delay taps per synapse (1 = one weight, one delay)."})
    sigma: float | None = field(default=None, metadata={"help": (
        "Initial Gaussian std over time in steps; None = max_delay // 2 (the SNN-delays recipe)."
    )})
    targets: tuple[str, ...] = field(default=("linear",), metadata={"help": (
        f"Layer kinds that get delays, a subset of {DELAY_TARGETS}."
    )})
    version: int = field(default=1, metadata={"help": "Config schema version."})

    def __post_init__(self) -> None:
        n = "DelayConfig"
        _check_int(n, "max_delay", self.max_delay, 1)
        _check_int(n, "kernel_count", self.kernel_count, 1)
        if self.kernel_count > self.max_delay:
            raise ValueError(
                f"{n}.kernel_count={self.kernel_count} exceeds max_delay={self.max_delay} (the number of possible "
                f"delays); lower kernel_count or raise max_delay."
            )
        if self.sigma is not None:
            ok = isinstance(self.sigma, (int, float)) and not isinstance(self.sigma, bool)
            if not (ok and math.isfinite(self.sigma) and self.sigma > 0):
                raise ValueError(f"{n}.sigma={self.sigma!r}: expected None or a positive finite float (steps).")
        if isinstance(self.targets, str):
            raise TypeError(f"{n}.targets={self.targets!r}: expected a tuple of names, e.g. ({self.targets!r},).")
        if isinstance(self.targets, list):
            self.targets = tuple(self.targets)
        if not isinstance(self.targets, tuple) or not self.targets or any(t not in DELAY_TARGETS for t in self.targets):
            raise ValueError(f"{n}.targets={self.targets!r}: expected a non-empty tuple drawn from {DELAY_TARGETS}.")
        self._check_version()

    @property
    def initial_sigma(self) -> float:
        """``sigma``, or ``max_delay // 2`` (at least 0.5) when it is None."""
        return float(self.sigma) if self.sigma is not None else max(self.max_delay // 2, 0.5)


_CONFIG_TYPES = {"DclsConfig": DclsConfig, "DelayConfig": DelayConfig}


def config_from_dict(data: dict[str, Any]) -> DclsConfig | DelayConfig:
    """Rebuild a config of either type from :meth:`to_dict` output, using its ``config_type`` key."""
    if not isinstance(data, dict) or data.get("config_type") not in _CONFIG_TYPES:
        got = data.get("config_type") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"config_from_dict: config_type={got!r}; expected one of {sorted(_CONFIG_TYPES)}.")
    return _CONFIG_TYPES[data["config_type"]].from_dict(data)
