"""Import layers and checkpoints of the reference ``dcls`` 0.1.1 package (``DCLS.construct.modules``).

What the reference computes (read from its ``ConstructKernel{1,2,3}d``), in our terms:

- Its position ``P[j]`` (kernel-centred with offset ``span[j] // 2``) moves along spatial axis ``n - 1 - j`` for
  versions ``'gauss'``, ``'v1'`` (and ``'max'``): on non-square spans the offset and the clamp range of an axis
  belong to another axis. Version ``'v0'`` uses axis ``j`` in 1-D/2-D and axes ``(0, 2, 1)`` in 3-D. So our
  ``positions[a_j] = P[j] + span[j] // 2 - span[a_j] // 2``.
- ``'gauss'``: Gaussian of std ``|SIG| + 0.27`` normalised by (its sum over the grid + 1e-7): our ``sigma``.
  Its clamp allows taps outside our grid (even spans: up to ``+span // 2``; non-square spans: the other axis'
  range); such a Gaussian, normalised over the grid, has no in-grid equivalent, so the converted module gets
  wider ``position_bounds``.
- ``'v1'``: ``relu(1 - |x - p|)`` normalised like gauss. Inside the grid that is our floor-form bilinear divided by
  ``1 + 1e-7``; a tap partly off the grid is renormalised onto its edge, one entirely off contributes nothing.
  Both are mapped exactly: positions clamped onto the grid, weights scaled by ``M / (M + 1e-7)`` with ``M`` the
  tap's in-grid mass.
- ``'v0'``: unnormalised floor-form bilinear, off-grid mass lost: clamped positions, weights scaled by ``M``.
- Padding and stride are plain per-spatial-axis ``F.conv`` arguments, dilation is 1.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from ..modules._clamp import _grid_bounds
from ..modules.dcls_conv import DclsConv1d, DclsConv2d, DclsConv3d, DclsConvNd

__all__ = ["from_dcls", "REFERENCE_VERSIONS"]

REFERENCE_VERSIONS = {"gauss": "gauss", "v1": "bilinear", "v0": "bilinear"}
"""Reference versions that map exactly, and the interpolation they become."""

_SIGMA_OFFSET = 0.27  # the reference's effective std is |SIG| + 0.27
_EPS = 1e-7  # the reference's normaliser epsilon
_CLASSES = (DclsConv1d, DclsConv2d, DclsConv3d)
_LAYER_NAMES = ("Dcls1d", "Dcls2d", "Dcls3d")


def reference_axes(ndim: int, version: str) -> tuple[int, ...]:
    """Spatial axis along which the reference's ``P[j]`` moves, for each ``j``."""
    if version == "v0":
        return {1: (0,), 2: (0, 1), 3: (0, 2, 1)}[ndim]
    return tuple(ndim - 1 - j for j in range(ndim))


def _as_tuple(value, n: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * n
    if isinstance(value, Sequence) and len(value) == n and all(isinstance(v, int) for v in value):
        return tuple(int(v) for v in value)
    raise TypeError(f"{name}={value!r}: expected an int or a tuple of {n} ints.")


def _from_module(module, overrides: dict) -> tuple[dict, dict]:
    name = type(module).__name__
    if name not in _LAYER_NAMES or not hasattr(module, "P"):
        raise TypeError(
            f"from_dcls: got a {type(module).__module__}.{name}; expected a dcls 0.1.1 Dcls1d, Dcls2d or Dcls3d "
            f"layer, or its state_dict."
        )
    hp = {
        "span": tuple(module.dilated_kernel_size), "version": module.version, "stride": tuple(module.stride),
        "padding": tuple(module.padding), "groups": module.groups, "padding_mode": module.padding_mode,
    }
    n = len(hp["span"])
    for key, value in overrides.items():
        if value is not None and _normalised(value, n) != _normalised(hp[key], n):
            raise ValueError(
                f"from_dcls: {key}={value!r} contradicts the module's {key}={hp[key]!r}; leave it out for a module."
            )
    tensors = {"weight": module.weight, "P": module.P, "SIG": module.SIG, "bias": module.bias}
    return hp, tensors


def _normalised(value, n: int):
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * n
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _from_state_dict(state: Mapping[str, torch.Tensor], overrides: dict) -> tuple[dict, dict]:
    missing = [k for k in ("weight", "P") if k not in state]
    unknown = sorted(set(state) - {"weight", "P", "SIG", "bias"})
    if missing or unknown:
        raise ValueError(
            f"from_dcls: state_dict keys {sorted(state)} are not those of one Dcls layer (expected weight, P, and "
            f"optionally SIG, bias). Pass the layer's own state_dict, with any prefix stripped."
        )
    if overrides["span"] is None:
        raise ValueError(
            "from_dcls: span=None; a state_dict does not record the reference's dilated_kernel_size. Pass span= "
            "(an int or one int per spatial axis)."
        )
    version = overrides["version"]
    if version is None:
        if "SIG" not in state:
            raise ValueError(
                "from_dcls: version=None and the state_dict has no SIG, so it may be 'v0' or 'v1'. Pass version=."
            )
        version = "gauss"
    hp = {
        "span": overrides["span"], "version": version,
        "stride": 1 if overrides["stride"] is None else overrides["stride"],
        "padding": 0 if overrides["padding"] is None else overrides["padding"],
        "groups": 1 if overrides["groups"] is None else overrides["groups"],
        "padding_mode": "zeros" if overrides["padding_mode"] is None else overrides["padding_mode"],
    }
    return hp, {k: state.get(k) for k in ("weight", "P", "SIG", "bias")}


def _check_tensors(t: dict, hp: dict) -> int:
    weight, p, sig = t["weight"], t["P"], t["SIG"]
    if not isinstance(weight, torch.Tensor) or weight.dim() != 3:
        raise ValueError(f"from_dcls: weight must be a tensor [O, I/groups, kernel_count], got {_shape(weight)}.")
    if not isinstance(p, torch.Tensor) or p.dim() != 4 or tuple(p.shape[1:]) != tuple(weight.shape) or not 1 <= p.shape[0] <= 3:
        raise ValueError(f"from_dcls: P must be [ndim (1-3), {', '.join(map(str, weight.shape))}], got {_shape(p)}.")
    version = hp["version"]
    if version not in REFERENCE_VERSIONS:
        raise ValueError(
            f"from_dcls: version={version!r} cannot be mapped exactly; supported: {sorted(REFERENCE_VERSIONS)} "
            f"('max', a triangle of learnable width, has no dclszoo equivalent)."
        )
    if version == "gauss" and (not isinstance(sig, torch.Tensor) or sig.shape != p.shape):
        raise ValueError(f"from_dcls: version='gauss' needs SIG of shape {tuple(p.shape)}, got {_shape(sig)}.")
    for name in ("weight", "P") + (("SIG",) if version == "gauss" else ()):
        if not torch.isfinite(t[name]).all():
            raise ValueError(f"from_dcls: the reference's {name} holds NaN/inf; fix the checkpoint first.")
    return p.shape[0]


def _shape(x) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else repr(type(x).__name__)


@torch.no_grad()
def from_dcls(
    source,
    *,
    span: int | Sequence[int] | None = None,
    version: str | None = None,
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] | None = None,
    groups: int | None = None,
    padding_mode: str | None = None,
    learn_sigma: bool = True,
) -> DclsConvNd:
    """Convert a ``dcls`` 0.1.1 ``Dcls1d/2d/3d`` layer (or its ``state_dict``) into a ``DclsConv1d/2d/3d``.

    The result computes the same output as the reference layer (float32 relative error ~1e-7) on any span,
    including non-square spans where the reference moves ``P[0]`` along the last axis. See the module docstring
    for the exact mapping.

    Args:
        source: A ``DCLS.construct.modules.Dcls{1,2,3}d`` (versions ``'gauss'``, ``'v1'``, ``'v0'``), or its
            ``state_dict`` (keys ``weight``, ``P``, optionally ``SIG`` and ``bias``).
        span: The reference's ``dilated_kernel_size``; required for a state_dict.
        version: ``'gauss'``, ``'v1'`` or ``'v0'``; for a state_dict ``None`` means ``'gauss'`` when ``SIG`` is
            present (required otherwise).
        stride: State_dict only (default 1, the reference's default).
        padding: State_dict only, ints (default 0).
        groups: State_dict only (default 1); ``in_channels = weight.shape[1] * groups``.
        padding_mode: State_dict only (default ``'zeros'``).
        learn_sigma: Whether the converted Gaussian std is a parameter (as ``SIG`` was) or a buffer.

    Returns:
        A new ``DclsConvNd`` on the source's device and dtype. For ``'gauss'`` layers whose taps lie outside our
        grid it carries widened ``position_bounds`` (an attribute, not in ``state_dict``).

    Raises:
        TypeError: ``source`` is neither a supported reference layer nor a mapping.
        ValueError: missing hyper-parameters, inconsistent shapes, an unsupported version or non-finite values.
    """
    overrides = {
        "span": span, "version": version, "stride": stride, "padding": padding, "groups": groups,
        "padding_mode": padding_mode,
    }
    if isinstance(source, Mapping):
        hp, t = _from_state_dict(source, overrides)
    else:
        hp, t = _from_module(source, overrides)
    ndim = _check_tensors(t, hp)
    span = _as_tuple(hp["span"], ndim, "span")
    weight, p = t["weight"].detach(), t["P"].detach()
    out_c, in_g, kc = weight.shape
    interpolation = REFERENCE_VERSIONS[hp["version"]]
    module = _CLASSES[ndim - 1](
        in_g * hp["groups"], out_c, kc, span, stride=hp["stride"], padding=hp["padding"], groups=hp["groups"],
        bias=t["bias"] is not None, padding_mode=hp["padding_mode"], interpolation=interpolation,
        learn_sigma=learn_sigma, device=weight.device, dtype=weight.dtype,
    )
    axes = reference_axes(ndim, hp["version"])
    q = torch.empty_like(p)
    for j, a in enumerate(axes):
        q[a] = p[j] + (span[j] // 2 - span[a] // 2)
    lo, hi = _grid_bounds(span)
    if interpolation == "gauss":
        sig = t["SIG"].detach()
        for j, a in enumerate(axes):
            module.sigma[a].copy_(sig[j].abs() + _SIGMA_OFFSET)
        # Cover where the reference lets P go (its clamp) and where this checkpoint's taps actually are.
        # Its clamp is P[j] in [-(span[j] // 2), span[j] // 2]: the same lower end as ours, another upper end.
        ref_hi = [0.0] * ndim
        for j, a in enumerate(axes):
            ref_hi[a] = float(2 * (span[j] // 2) - span[a] // 2)
        new_lo = tuple(min(lo[d], float(q[d].min())) for d in range(ndim))
        new_hi = tuple(max(hi[d], ref_hi[d], float(q[d].max())) for d in range(ndim))
        if (new_lo, new_hi) != (lo, hi):
            module.position_bounds = (new_lo, new_hi)
        module.weight.copy_(weight)
    else:
        # In-grid mass per axis: 1 inside the grid, 1 - distance to it within one step, 0 beyond.
        mass = torch.ones_like(weight, dtype=torch.float64)
        for d in range(ndim):
            dist = (lo[d] - q[d].double()).clamp_min(0) + (q[d].double() - hi[d]).clamp_min(0)
            mass = mass * (1 - dist).clamp_min(0)
            q[d].clamp_(lo[d], hi[d])
        scale = mass / (mass + _EPS) if hp["version"] == "v1" else mass
        module.weight.copy_(weight.double() * scale)
    module.positions.copy_(q)
    if t["bias"] is not None:
        module.bias.copy_(t["bias"])
    return module
