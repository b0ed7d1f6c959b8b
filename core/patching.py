"""Module replacement shared by every plugin, and the generic fallback for plain torch convolutions.

Plugins call :func:`replace_modules` with a ``make(module, fqn)`` callback so that all patch reports look the
same. The generic fallback (:func:`patch_generic`) replaces plain ``nn.Conv1d/2d/3d`` by
:class:`~dclszoo.modules.DclsConvNd` via ``from_dense`` (function-preserving). It does not implement
``share_positions``: which convolutions should share positions depends on the architecture, so that is left
to plugins that know it (the generic fallback rejects the option).
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from .config import DclsConfig
from .modules import DclsConv1d, DclsConv2d, DclsConv3d, DclsConvNd
from .report import PatchReport, ReplacedModule

__all__ = ["replace_modules", "is_target_conv", "resolve_span", "conv_to_dcls", "patch_generic",
           "is_transformers_model", "is_plain_conv"]

_DENSE = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_DCLS = (DclsConv1d, DclsConv2d, DclsConv3d)

MakeFn = Callable[[nn.Module, str], "nn.Module | None"]
FilterFn = Callable[[nn.Module, str], bool]


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def replace_modules(model: nn.Module, make: MakeFn, filter_fn: FilterFn | None = None,
                    plugin: str = "generic") -> PatchReport:
    """Replace submodules of ``model`` in place by whatever ``make`` returns for them.

    Walks the children of ``model`` depth first. For each submodule ``m`` at ``fqn`` for which ``filter_fn(m,
    fqn)`` is True (or no filter is given), ``make(m, fqn)`` is called: a module result takes ``m``'s place in
    its parent (``setattr``, so it works inside ``nn.Sequential``/``ModuleList``/``ModuleDict``) and ``m``'s
    children are not visited; None keeps ``m`` and visits its children. A module reachable from several
    parents is converted once and the result shared. Every ``make`` call happens before the first
    replacement, so an exception leaves the model untouched. The root module itself is never replaced.

    Args:
        model: The model to patch.
        make: ``make(module, fqn) -> nn.Module | None``.
        filter_fn: ``filter_fn(module, fqn) -> bool``; a False result only skips that module (its children are
            still visited).
        plugin: Name recorded in the report.

    Returns:
        A :class:`PatchReport` listing the replacements.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model={type(model).__name__}: expected a torch.nn.Module.")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"filter_fn={filter_fn!r}: expected a callable (module, fqn) -> bool, or None.")
    report = PatchReport(plugin)
    done: dict[int, nn.Module] = {}
    todo: list[tuple[nn.Module, str, nn.Module]] = []

    def visit(parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent._modules.items()):  # not named_children(): it hides shared children
            if child is None:
                continue
            fqn = f"{prefix}.{name}" if prefix else name
            if id(child) in done:
                todo.append((parent, name, done[id(child)]))
                continue
            new = make(child, fqn) if filter_fn is None or filter_fn(child, fqn) else None
            if new is None:
                visit(child, fqn)
                continue
            if not isinstance(new, nn.Module):
                raise TypeError(f"make({fqn!r}) returned {type(new).__name__}; expected an nn.Module or None.")
            done[id(child)] = new
            todo.append((parent, name, new))
            report.replaced.append(ReplacedModule(fqn, type(child).__name__, type(new).__name__,
                                                  _count(child), _count(new)))

    visit(model, "")
    for parent, name, new in todo:
        setattr(parent, name, new)
    return report


def is_target_conv(conv: nn.Module, config: DclsConfig) -> bool:
    """Whether a (non-transposed) ``nn.ConvNd`` matches ``config.targets`` and ``config.min_kernel_size``.

    'depthwise' means ``groups == in_channels > 1`` (``out_channels`` a multiple: channel multipliers count);
    'dense' means ``groups == 1``; 'all' any grouping. Kernels smaller than ``min_kernel_size`` on every axis
    are skipped. Only the geometry is checked, not the class (see :func:`patch_generic`).
    """
    if not isinstance(conv, _DENSE) or getattr(conv, "transposed", False):
        return False
    if all(k < config.min_kernel_size for k in conv.kernel_size):
        return False
    if config.targets == "depthwise":
        return conv.groups == conv.in_channels > 1 and conv.out_channels % conv.in_channels == 0
    if config.targets == "dense":
        return conv.groups == 1
    return True


def resolve_span(kernel_size: tuple[int, ...], span: int | tuple[int, ...] | None, fqn: str = "") -> tuple[int, ...]:
    """The per-axis span for a kernel: None keeps it; an int applies to every axis of size > 1.

    Raises:
        ValueError: the span has the wrong number of axes or is smaller than the kernel.
    """
    kernel_size = tuple(kernel_size)
    where = f"{fqn or 'conv'} (kernel_size={kernel_size})"
    if span is None:
        return kernel_size
    if isinstance(span, int):
        out = tuple(span if k > 1 else k for k in kernel_size)
    else:
        out = tuple(span)
        if len(out) != len(kernel_size):
            raise ValueError(
                f"{where}: config.span={span} has {len(out)} axes, the kernel has {len(kernel_size)}; give an int "
                f"span or restrict the patch with filter_fn."
            )
    if any(s < k for s, k in zip(out, kernel_size)):
        raise ValueError(
            f"{where}: config.span={span} is smaller than the kernel; use a span >= the kernel size on every axis "
            f"(or None to keep it), or exclude this module with filter_fn / min_kernel_size."
        )
    return out


def conv_to_dcls(conv: nn.Module, config: DclsConfig, fqn: str = "", cls: type | None = None) -> DclsConvNd:
    """Function-preserving ``cls.from_dense(conv, ...)`` with the settings of ``config``.

    Args:
        cls: The ``DclsConvNd`` subclass to build; None = ``DclsConv1d/2d/3d`` by ``conv``'s class.

    Raises:
        ValueError: the conversion is impossible (span, kernel_count); the message names ``fqn``.
    """
    if cls is None:
        cls = _DCLS[_DENSE.index(next(c for c in _DENSE if isinstance(conv, c)))]
    span = resolve_span(conv.kernel_size, config.span, fqn)
    try:
        return cls.from_dense(conv, kernel_count=config.kernel_count, span=span, interpolation=config.interpolation,
                              sigma=config.sigma, learn_sigma=config.learn_sigma)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{fqn or 'conv'}: {exc}") from exc


def is_plain_conv(module: nn.Module) -> bool:
    """An ``nn.ConvNd`` (or subclass) that does not override the convolution itself (e.g. timm's Conv2dSame)."""
    for base in _DENSE:
        if isinstance(module, base):
            cls = type(module)
            return cls.forward is base.forward and cls._conv_forward is base._conv_forward
    return False


def patch_generic(model: nn.Module, config: DclsConfig, filter_fn: FilterFn | None = None) -> PatchReport:
    """Replace matching plain torch convolutions of ``model`` by DCLS convolutions (the core fallback).

    Convolution subclasses that override ``forward`` (dynamic padding and the like) are left alone: converting
    them would change the output. Plugins handle those.

    Raises:
        ValueError: ``config.share_positions`` is set (needs a plugin), or a conversion is impossible.
    """
    if config.share_positions:
        raise ValueError(
            "DclsConfig.share_positions=True needs a plugin that knows which convolutions share positions (e.g. "
            "timm's stages); no enabled plugin recognised this model. Use share_positions=False."
        )

    def make(module: nn.Module, fqn: str) -> nn.Module | None:
        if is_plain_conv(module) and is_target_conv(module, config):
            return conv_to_dcls(module, config, fqn)
        return None

    return replace_modules(model, make, filter_fn, plugin="generic")


def is_transformers_model(model: nn.Module) -> bool:
    """Whether ``model`` is a transformers ``PreTrainedModel`` (checked by class name: transformers is not imported)."""
    return any(c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers.")
               for c in type(model).__mro__)
