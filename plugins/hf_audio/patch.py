"""Patching transformers audio models: which convolutions become DCLS, and how.

Selection: the model's family (:mod:`.families`, from ``config.model_type``) turns target groups into module-name
patterns; a spec (:class:`.spec.AudioPatchSpec`) resolves to a set of module names, filtered by ``filter_fn`` and
each target's ``DclsConfig.min_kernel_size``. Candidates are plain ``nn.Conv1d`` / ``nn.Conv2d`` (weight-normed
ones included); convolution subclasses with their own ``forward`` are left alone.

Conversion is function-preserving (``DclsConvNd.from_dense``):

- a weight-normed convolution (``nn.utils.parametrizations.weight_norm`` or the older hook-based
  ``nn.utils.weight_norm``; the wav2vec2 family's positional conv) is folded first: the DCLS taps get the effective
  weight ``g * v / ||v||``. The norm dimension is remembered on the model (``dclszoo_weight_norm``) so that
  ``dclszoo.unpatch`` / ``to_dense`` put a weight-normed dense conv back;
- a causally padded depthwise conv (Wav2Vec2-BERT, SeamlessM4T-v2) becomes a :class:`.causal.CausalDclsConv1d`;
- on the **meta device** (transformers builds a model there before loading a checkpoint) no values exist: the
  DCLS module is built with the geometry ``from_dense`` would give (span, taps, padding), still on meta, and the
  checkpoint fills it.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from dclszoo.config import DclsConfig
from dclszoo.modules import DclsConv1d, DclsConv2d, DclsConvNd
from dclszoo.modules.from_dense import _placement
from dclszoo.patching import conv_to_dcls, is_plain_conv, is_transformers_model, replace_modules, resolve_span
from dclszoo.report import PatchReport

from .causal import CausalDclsConv1d
from .families import FAMILIES, GROUPS, Family, family_for, matches
from .spec import AudioPatchSpec

__all__ = ["PLUGIN", "is_transformers_model", "is_audio_model", "model_family", "conv_modules", "resolve",
           "convert_conv", "geometry_twin", "patch_with_spec", "restore_weight_norm", "WEIGHT_NORM_ATTR"]

PLUGIN = "hf_audio"
WEIGHT_NORM_ATTR = "dclszoo_weight_norm"  # {module name: weight-norm dim} of the convs folded at patch time
KERNELS_ATTR = "dclszoo_dense_kernels"  # {module name: kernel size} of the convs replaced, as the config builds them
_DENSE = {nn.Conv1d: DclsConv1d, nn.Conv2d: DclsConv2d}
FilterFn = Callable[[nn.Module, str], bool]


def _model_type(model: nn.Module) -> str:
    return str(getattr(getattr(model, "config", None), "model_type", "") or "")


def is_audio_model(model: nn.Module) -> bool:
    """A transformers model of a supported family, or one that declares audio input."""
    if family_for(_model_type(model)) is not None:
        return True
    modalities = getattr(type(model), "input_modalities", ())
    modalities = (modalities,) if isinstance(modalities, str) else tuple(modalities or ())
    return "audio" in modalities or getattr(model, "main_input_name", None) in ("input_values", "input_features")


def model_family(model: nn.Module) -> Family:
    """The :class:`.families.Family` of a transformers model.

    Raises:
        ValueError: unsupported family (the message lists the supported ones).
    """
    model_type = _model_type(model)
    family = family_for(model_type)
    if family is None:
        supported = ", ".join(f"{f.name} ({t})" for t, f in FAMILIES.items())
        raise ValueError(
            f"{type(model).__name__} (model_type={model_type!r}) is not a transformers audio family the dclszoo "
            f"hf_audio plugin supports. Supported: {supported}. For another model, convert single convolutions with "
            f"dclszoo.DclsConv1d.from_dense / DclsConv2d.from_dense."
        )
    return family


def _is_plain_conv(module: nn.Module) -> bool:
    """A plain 1-D or 2-D convolution (:func:`dclszoo.patching.is_plain_conv`; this plugin converts no 3-D one)."""
    return isinstance(module, tuple(_DENSE)) and is_plain_conv(module)


def conv_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, conv)`` of every plain convolution of ``model`` (the candidates)."""
    return [(fqn, m) for fqn, m in model.named_modules() if _is_plain_conv(m)]


def _describe(convs: list[tuple[str, nn.Module]]) -> str:
    rows = [f"  {fqn}: {type(m).__name__}(kernel={tuple(m.kernel_size)}, groups={m.groups})" for fqn, m in convs]
    return "\n".join(rows) if rows else "  (none)"


def _short(fqn: str, prefix: str) -> str:
    return fqn[len(prefix) + 1:] if prefix and fqn.startswith(prefix + ".") else fqn


def resolve(model: nn.Module, spec: AudioPatchSpec,
            filter_fn: FilterFn | None = None) -> dict[str, tuple[nn.Module, DclsConfig, bool]]:
    """The convolutions ``spec`` selects in ``model``: name -> (conv, its DclsConfig, causal?), in model order.

    Without ``spec.modules`` the targets are matched and ``filter_fn`` / ``min_kernel_size`` applied; with it,
    exactly the recorded modules are taken. ``spec.modules`` is (re)written with the result.

    Raises:
        ValueError: a target group the family does not have, a target that matches no convolution (the message
            lists the model's convolutions), or a recorded module the model does not have.
    """
    family = model_family(model)
    prefix = getattr(model, "base_model_prefix", "") or ""
    convs = conv_modules(model)
    causal_patterns = [p for g in family.causal for p in family.groups.get(g, ())]
    chosen: dict[str, tuple[nn.Module, DclsConfig, bool]] = {}

    def take(fqn: str, conv: nn.Module, index: int) -> None:
        causal = any(matches(fqn, p, prefix) for p in causal_patterns)
        chosen[fqn] = (conv, spec.targets[index][1], causal)
        indices[_short(fqn, prefix)] = index

    indices: dict[str, int] = {}
    if spec.modules is not None:
        by_name = {}
        for fqn, conv in convs:
            by_name.setdefault(fqn, (fqn, conv))
            by_name.setdefault(_short(fqn, prefix), (fqn, conv))
        for name, index in spec.modules.items():
            if name not in by_name:
                raise ValueError(
                    f"config.dcls names the convolution {name!r}, which this {type(model).__name__} does not have "
                    f"(or which is not a plain convolution). Its convolutions:\n{_describe(convs)}"
                )
        wanted = {by_name[name][0]: index for name, index in spec.modules.items()}
        for fqn, conv in convs:
            if fqn in wanted:
                take(fqn, conv, wanted[fqn])
        spec.modules = indices
        return chosen

    hits: dict[str, int] = {}
    for index, (target, _) in enumerate(spec.targets):
        if target in family.groups:
            patterns = family.groups[target]
        elif target in GROUPS:
            raise ValueError(
                f"target group {target!r} does not exist in {family.name}; its groups are {sorted(family.groups)} "
                f"(or pass module-name patterns)."
            )
        else:
            patterns = (target,)
        found = [fqn for fqn, _ in convs if any(matches(fqn, p, prefix) for p in patterns)]
        if not found:
            raise ValueError(
                f"target {target!r} matches no convolution of this {type(model).__name__} ({family.name}; target "
                f"groups {sorted(family.groups)}). Use a group name or a pattern matching one of its convolutions:\n"
                f"{_describe(convs)}"
            )
        for fqn in found:
            hits.setdefault(fqn, index)
    for fqn, conv in convs:
        if fqn not in hits:
            continue
        config = spec.targets[hits[fqn]][1]
        if all(k < config.min_kernel_size for k in conv.kernel_size):
            continue
        if filter_fn is not None and not filter_fn(conv, fqn):
            continue
        take(fqn, conv, hits[fqn])
    spec.modules = indices
    return chosen


def _weight_norm_dim(conv: nn.Module) -> int | None:
    """The norm dimension of a weight-normed conv, None if it is not weight-normed.

    Raises:
        TypeError: another parametrization (it would not be folded correctly).
    """
    if parametrize.is_parametrized(conv):
        plist = conv.parametrizations
        kinds = {name: [type(p).__name__ for p in plist[name]] for name in plist.keys()}
        if list(kinds) != ["weight"] or kinds["weight"] != ["_WeightNorm"]:
            raise TypeError(
                f"parametrizations {kinds} on this convolution: only a single weight_norm on 'weight' is folded "
                f"before conversion; remove the others (torch.nn.utils.parametrize.remove_parametrizations)."
            )
        return int(plist["weight"][0].dim)
    for hook in conv._forward_pre_hooks.values():
        if type(hook).__name__ == "WeightNorm" and getattr(hook, "name", None) == "weight":
            return int(hook.dim)
    return None


def _folded(conv: nn.Module, dim: int | None) -> nn.Module:
    """A plain conv of the same geometry holding the effective weight (``conv`` itself if not weight-normed)."""
    if dim is None:
        return conv
    if parametrize.is_parametrized(conv):
        weight = conv.weight  # the parametrization computes g * v / ||v||
    else:
        weight = torch._weight_norm(conv.weight_v, conv.weight_g, dim)
    base = next(b for b in _DENSE if isinstance(conv, b))
    plain = base(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                 dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                 padding_mode=conv.padding_mode, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        plain.weight.copy_(weight.detach())
        if conv.bias is not None:
            plain.bias.copy_(conv.bias.detach())
    return plain


def geometry_twin(conv: nn.Module, config: DclsConfig, fqn: str = "", causal: bool = False,
                  cls: type | None = None) -> DclsConvNd:
    """The DCLS module ``from_dense`` would build for ``conv`` (same span, taps, padding), freshly initialised --
    on ``conv``'s device, so on the meta device it has no values at all.

    Args:
        cls: The DCLS class (default by ``conv``'s class); timm's ``DclsConv2dSame`` keeps padding 0.
    """
    ksize = tuple(conv.kernel_size)
    span = resolve_span(ksize, config.span, fqn)
    kc = config.kernel_count if config.kernel_count is not None else math.prod(ksize)
    if kc > math.prod(span):
        raise ValueError(f"{fqn}: kernel_count={kc} exceeds the {math.prod(span)} grid points of span={span}.")
    common = dict(stride=tuple(conv.stride), dilation=tuple(conv.dilation), groups=conv.groups,
                  bias=conv.bias is not None, padding_mode=conv.padding_mode, interpolation=config.interpolation,
                  sigma=config.sigma, learn_sigma=config.learn_sigma, device=conv.weight.device,
                  dtype=conv.weight.dtype)
    if causal:
        return CausalDclsConv1d(conv.in_channels, conv.out_channels, kc, span, padding=0, kernel_size=ksize[0],
                                **common)
    if cls is None:
        cls = _DENSE[next(b for b in _DENSE if isinstance(conv, b))]
    if cls.__name__ == "DclsConv2dSame":  # timm plugin: TF "SAME" padding computed in forward
        padding = (0,) * len(ksize)
    else:
        try:
            padding, _ = _placement(conv, ksize, span, len(ksize))
        except ValueError as exc:
            raise ValueError(f"{fqn}: {exc}") from exc
    return cls(conv.in_channels, conv.out_channels, kc, span, padding=padding, **common)


def convert_conv(conv: nn.Module, config: DclsConfig, fqn: str = "", causal: bool = False) -> DclsConvNd:
    """Function-preserving DCLS twin of one convolution (weight norm folded; geometry only on the meta device).

    Raises:
        ValueError / TypeError: impossible conversion; the message names ``fqn``.
    """
    try:
        dense = _folded(conv, _weight_norm_dim(conv))
    except TypeError as exc:
        raise TypeError(f"{fqn or 'conv'}: {exc}") from exc
    if dense.weight.is_meta:
        return geometry_twin(dense, config, fqn, causal)
    return conv_to_dcls(dense, config, fqn, cls=CausalDclsConv1d if causal else None)


def patch_with_spec(model: nn.Module, spec: AudioPatchSpec, filter_fn: FilterFn | None = None) -> PatchReport:
    """Convert the convolutions ``spec`` selects, in place (every conversion is built before the first swap).

    Records the folded weight norms in ``model.dclszoo_weight_norm``; resolves ``spec.modules``.
    """
    chosen = resolve(model, spec, filter_fn)
    new: dict[str, tuple[nn.Module, DclsConvNd]] = {}
    folded: dict[str, int] = {}
    kernels = {fqn: tuple(conv.kernel_size) for fqn, (conv, _, _) in chosen.items()}
    for fqn, (conv, config, causal) in chosen.items():
        dim = _weight_norm_dim(conv)
        if dim is not None:
            folded[fqn] = dim
        new[fqn] = (conv, convert_conv(conv, config, fqn, causal))

    def make(module: nn.Module, fqn: str) -> nn.Module | None:
        entry = new.get(fqn)
        return entry[1] if entry is not None and entry[0] is module else None

    report = replace_modules(model, make, plugin=PLUGIN)
    if folded:
        model.__dict__[WEIGHT_NORM_ATTR] = dict(model.__dict__.get(WEIGHT_NORM_ATTR, {}), **folded)
    if report.replaced:
        model.__dict__[KERNELS_ATTR] = dict(model.__dict__.get(KERNELS_ATTR, {}), **kernels)
    return report


def restore_weight_norm(model: nn.Module) -> None:
    """After ``to_dense``: weight-norm the dense convs that were weight-normed before patching (same output), and
    warn when a dense conv is now larger than its config says (the model works, but its config cannot rebuild it)."""
    kernels = model.__dict__.pop(KERNELS_ATTR, None) or {}
    grown = []
    for fqn, kernel in kernels.items():
        try:
            conv = model.get_submodule(fqn)
        except AttributeError:
            continue
        if tuple(getattr(conv, "kernel_size", kernel)) != kernel:
            grown.append(f"{fqn}: {kernel} -> {tuple(conv.kernel_size)}")
    if grown:
        warnings.warn(
            f"to_dense: {len(grown)} convolution(s) now have the DCLS span as kernel size ({'; '.join(grown[:3])}"
            f"{' ...' if len(grown) > 3 else ''}); the output is unchanged, but the model's config still describes "
            f"the old kernel sizes, so save_pretrained / from_pretrained cannot rebuild this dense model. Patch with "
            f"span = kernel size (the default) for a dense export that reloads as the original architecture.",
            UserWarning, stacklevel=4,
        )
    folded = model.__dict__.pop(WEIGHT_NORM_ATTR, None) or {}
    for fqn, dim in folded.items():
        try:
            conv = model.get_submodule(fqn)
        except AttributeError:
            continue
        if _is_plain_conv(conv) and _weight_norm_dim(conv) is None:
            nn.utils.parametrizations.weight_norm(conv, name="weight", dim=dim)
            with torch.no_grad():  # an all-zero slice (span points no tap reaches) would give 0 / 0: g = 0, v = 1
                g, v = conv.parametrizations.weight.original0, conv.parametrizations.weight.original1
                v.masked_fill_((g == 0).expand_as(v), 1.0)

