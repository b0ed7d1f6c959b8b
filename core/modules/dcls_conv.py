"""DCLS convolution modules ``DclsConv1d/2d/3d`` (a drop-in for ``nn.ConvNd`` with learnable tap positions).

Paper: Hassani, Pellegrini, Masquelier, "Dilated convolution with learnable spacings", ICLR 2023, and
"Dilated convolution with learnable spacings: beyond bilinear interpolation", 2023.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..functional import INTERPOLATIONS, conv_with_kernel, dcls_kernel
from ._args import _check_channels, _tuple
from ._clamp import _LIVE_MODULES, _grid_bounds, _install_step_hook, _straight_through_clamp  # noqa: F401

__all__ = ["DclsConv1d", "DclsConv2d", "DclsConv3d", "DclsConvNd"]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
SIGMA_FLOOR = 1e-3


class DclsConvNd(nn.Module):
    """Base class of the DCLS convolutions; see :class:`DclsConv2d` for the arguments."""

    dclszoo_patched = True  # marks modules dclszoo.unpatch / to_dense turn back into plain torch ones
    _ndim: int = 0
    _dense_cls: type = nn.Module

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_count: int,
        span: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        interpolation: str = "gauss",
        sigma: float = 0.5,
        learn_sigma: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        n = self._ndim
        _check_channels(in_channels, out_channels, groups)
        if not isinstance(kernel_count, int) or isinstance(kernel_count, bool) or kernel_count < 1:
            raise ValueError(f"kernel_count={kernel_count!r}: expected an int >= 1 (taps per filter).")
        span = _tuple(span, n, "span")
        if any(s < 1 for s in span):
            raise ValueError(f"span={span}: every axis must be >= 1 (the size of the dense kernel).")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation={interpolation!r}: expected one of {INTERPOLATIONS}.")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode={padding_mode!r}: expected one of {PADDING_MODES}.")
        stride = _tuple(stride, n, "stride")
        dilation = _tuple(dilation, n, "dilation")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding={padding!r}: expected 'same', 'valid', an int or a tuple of {n} ints.")
            if padding == "same" and any(s != 1 for s in stride):
                raise ValueError(f"padding='same' needs stride=1, got stride={stride}; pass explicit padding.")
        else:
            padding = _tuple(padding, n, "padding")
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma={sigma!r}: expected a positive finite float (Gaussian std in pixels).")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_count, self.span, self.stride, self.dilation = kernel_count, span, stride, dilation
        self.padding, self.padding_mode, self.interpolation = padding, padding_mode, interpolation
        self.learn_sigma, self.sigma_init = learn_sigma, float(sigma)
        factory = {"device": device, "dtype": dtype}
        shape = (out_channels, in_channels // groups, kernel_count)
        self.weight = nn.Parameter(torch.empty(shape, **factory))
        self.positions = nn.Parameter(torch.empty((n,) + shape, **factory))
        if interpolation == "gauss":
            init_sigma = torch.full((n,) + shape, float(sigma), **factory)
            if learn_sigma:
                self.sigma = nn.Parameter(init_sigma)
            else:
                self.register_buffer("sigma", init_sigma)
        else:
            self.sigma = None
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()
        _LIVE_MODULES.add(self)
        _install_step_hook()

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_kernel_cache", None)  # a copy builds its own
        return state

    def __setstate__(self, state) -> None:
        # copy.deepcopy and pickle rebuild the module without __init__: register it for the step clamp too.
        super().__setstate__(state)
        _LIVE_MODULES.add(self)
        _install_step_hook()

    # ----------------------------------------------------------------- geometry
    @property
    def position_bounds(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Lowest and highest kernel-centred position per axis.

        By default the span's grid (centre ``span // 2``): ``[-(s // 2), s - 1 - s // 2]``. It can be widened
        per instance by assigning ``(lo, hi)`` (as :func:`dclszoo.convert.from_dcls` does for reference
        checkpoints whose taps sit outside the grid); assign ``None`` to restore the default. A custom range is
        an attribute, not part of ``state_dict``: set it again on a freshly built module before loading.
        """
        custom = self.__dict__.get("_position_bounds")
        if custom is not None:
            return custom
        return _grid_bounds(self.span)

    @position_bounds.setter
    def position_bounds(self, bounds) -> None:
        if bounds is None:
            self.__dict__["_position_bounds"] = None
            return
        n = self._ndim
        try:
            lo, hi = (tuple(float(v) for v in side) for side in bounds)
        except (TypeError, ValueError):
            raise TypeError(f"position_bounds={bounds!r}: expected (lo, hi), two sequences of {n} floats.") from None
        if len(lo) != n or len(hi) != n or not all(math.isfinite(v) for v in lo + hi):
            raise ValueError(f"position_bounds={bounds!r}: expected (lo, hi), two sequences of {n} finite floats.")
        if any(a > b for a, b in zip(lo, hi)):
            raise ValueError(f"position_bounds={bounds!r}: every lo must be <= its hi.")
        self.__dict__["_position_bounds"] = (lo, hi)

    def reset_parameters(self) -> None:
        """Kaiming-uniform tap weights (fan-in = in/groups * taps), positions ~ N(0, 0.5) inside the span,
        sigma back to its initial value. A no-op on the meta device (call it after ``to_empty``)."""
        if self.weight.is_meta:
            return
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        with torch.no_grad():
            self.positions.normal_(0.0, 0.5)
            self.clamp_parameters()
            if self.sigma is not None:
                self.sigma.fill_(self.sigma_init)
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.weight.shape[2]
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    @torch.no_grad()
    def clamp_parameters(self) -> None:
        """Clamp stored positions into the span (done automatically after every optimizer step).

        Under FSDP the stored tensor is, between steps, a flat shard of any length (possibly empty): it is clamped
        element-wise when every axis has the same bounds, and left to the forward's straight-through clamp
        otherwise (which keeps the values used in range).
        """
        lo, hi = self.position_bounds
        p = self.positions
        if p.dim() != 4:  # [ndim, O, I/g, K], or a flattened (FSDP) shard: the axis of an element is unknown here
            if len(set(lo)) == 1 and len(set(hi)) == 1 and p.numel():
                p.clamp_(lo[0], hi[0])
            return
        for d in range(self._ndim):
            p[d].clamp_(lo[d], hi[d])

    def effective_positions(self) -> torch.Tensor:
        """Positions used by the forward: clamped into the span, with an identity gradient."""
        lo, hi = self.position_bounds
        return _straight_through_clamp(self.positions, lo, hi)

    def effective_sigma(self) -> torch.Tensor | None:
        """Gaussian std used by the forward (``|sigma|`` floored at 1e-3); None for bilinear."""
        if self.sigma is None:
            return None
        return self.sigma.abs().clamp_min(SIGMA_FLOOR)

    def kernel(self) -> torch.Tensor:
        """The dense kernel ``[O, I/g, *span]`` this module convolves with.

        In ``eval()`` mode without gradients the kernel is built once and reused until a parameter changes: the
        cache is keyed on the parameters' storages and version counters (bumped by optimizer steps,
        ``load_state_dict``, ``.to()`` and any in-place update), and dropped by ``train()``. Writing through
        ``param.data`` bypasses version counters: call :meth:`clear_kernel_cache` after such edits.
        """
        if self.training or torch.is_grad_enabled() or torch.compiler.is_compiling():
            self.__dict__.pop("_kernel_cache", None)
            return self._build_kernel()
        key = self._kernel_key()
        cached = self.__dict__.get("_kernel_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        kernel = self._build_kernel()
        self.__dict__["_kernel_cache"] = (key, kernel)
        return kernel

    def _kernel_key(self) -> tuple:
        tensors = (self.weight, self.positions, self.sigma)
        state = tuple((t.data_ptr(), t._version, t.device, t.dtype, tuple(t.shape)) for t in tensors if t is not None)
        return state + (self.position_bounds, self.interpolation, self.span)

    def clear_kernel_cache(self) -> None:
        """Drop the cached inference kernel (needed only after writing parameters through ``.data``)."""
        self.__dict__.pop("_kernel_cache", None)

    def train(self, mode: bool = True) -> "DclsConvNd":
        self.__dict__.pop("_kernel_cache", None)
        return super().train(mode)

    def _build_kernel(self) -> torch.Tensor:
        # The clamp and the |sigma| floor are fused into the op (same values and gradients as
        # effective_positions() / effective_sigma(), without their parameter-sized temporaries).
        return dcls_kernel(
            self.weight, self.positions, self.sigma, self.span, self.interpolation,
            position_bounds=self.position_bounds, sigma_floor=SIGMA_FLOOR if self.sigma is not None else None,
        )

    # ----------------------------------------------------------------- forward
    def _check_input(self, x: torch.Tensor) -> None:
        n = self._ndim
        if x.dim() not in (n + 1, n + 2):
            raise ValueError(
                f"{type(self).__name__}: input of shape {tuple(x.shape)} has {x.dim()} dims; expected a {n + 2}-D "
                f"input [N, C, {', '.join(('L', 'H, W', 'D, H, W')[n - 1:n])}] or {n + 1}-D unbatched [C, ...]."
            )
        if x.shape[-n - 1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__}: input has {x.shape[-n - 1]} channels at dim {x.dim() - n - 1}, "
                f"expected in_channels={self.in_channels} (shape {tuple(x.shape)})."
            )

    def _explicit_padding(self) -> tuple[int, ...]:
        """F.pad amounts (last axis first) for a non-zero padding mode."""
        pads = []
        for d in reversed(range(self._ndim)):
            if self.padding == "valid":
                left = right = 0
            elif self.padding == "same":
                total = self.dilation[d] * (self.span[d] - 1)
                left, right = total // 2, total - total // 2
            else:
                left = right = self.padding[d]
            pads += [left, right]
        return tuple(pads)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input(input)
        kernel = self.kernel()
        if self.padding_mode != "zeros":
            conv = (F.conv1d, F.conv2d, F.conv3d)[self._ndim - 1]
            input = F.pad(input, self._explicit_padding(), mode=self.padding_mode)
            bias = None if self.bias is None else self.bias.to(input.dtype)
            return conv(input, kernel.to(input.dtype), bias, self.stride, 0, self.dilation, self.groups)
        return conv_with_kernel(input, kernel, self.bias, self.stride, self.padding, self.dilation, self.groups)

    # ----------------------------------------------------------------- checks and export
    def validate(self) -> None:
        """Raise ``ValueError`` if weights, positions or sigma hold NaN/inf (costs a device sync)."""
        for name in ("weight", "positions", "sigma", "bias"):
            t = getattr(self, name)
            if t is None or t.is_meta:
                continue
            bad = (~torch.isfinite(t)).sum().item()
            if bad:
                raise ValueError(
                    f"{type(self).__name__}.{name} has {bad} non-finite value(s) of {t.numel()}; "
                    f"lower the learning rate of {name!r} or reload a finite checkpoint."
                )

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        """Saving (``state_dict``, hence ``torch.save`` / safetensors / Hub pushes) warns about non-finite values:
        a diverged checkpoint may be worth keeping for debugging, but never silently."""
        super()._save_to_state_dict(destination, prefix, keep_vars)
        try:
            self.validate()
        except ValueError as exc:
            where = repr(prefix.rstrip(".")) if prefix else "the module"
            warnings.warn(f"saving {where}: {exc}", RuntimeWarning, stacklevel=3)

    @torch.no_grad()
    def to_dense(self) -> nn.Module:
        """A plain ``nn.ConvNd`` with the dense kernel of this module and identical output."""
        self.validate()
        dense = self._dense_cls(
            self.in_channels, self.out_channels, self.span, stride=self.stride, padding=self.padding,
            dilation=self.dilation, groups=self.groups, bias=self.bias is not None,
            padding_mode=self.padding_mode, device=self.weight.device, dtype=self.weight.dtype,
        )
        return self._fill_dense(dense)

    @torch.no_grad()
    def _fill_dense(self, dense: nn.Module) -> nn.Module:
        """Copy this module's dense kernel and bias into ``dense`` (a convolution of kernel size ``span``)."""
        dense.weight.copy_(self.kernel())
        if self.bias is not None:
            dense.bias.copy_(self.bias)
        return dense

    @classmethod
    def from_dense(
        cls,
        conv: nn.Module,
        kernel_count: int | None = None,
        span: int | Sequence[int] | None = None,
        interpolation: str = "bilinear",
        sigma: float = 0.5,
        learn_sigma: bool = True,
    ) -> "DclsConvNd":
        """Function-preserving conversion of a trained ``nn.ConvNd`` (see :mod:`dclszoo.modules.from_dense`)."""
        from .from_dense import dcls_from_dense

        return dcls_from_dense(cls, conv, kernel_count, span, interpolation, sigma, learn_sigma)

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_count={self.kernel_count}, span={self.span}, "
            f"stride={self.stride}, padding={self.padding}, interpolation={self.interpolation!r}"
        )
        if self.dilation != (1,) * self._ndim:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        if self.__dict__.get("_position_bounds") is not None:
            s += f", position_bounds={self.position_bounds}"
        return s


class DclsConv1d(DclsConvNd):
    """1-D DCLS convolution. Same arguments as :class:`DclsConv2d`."""

    _ndim = 1
    _dense_cls = nn.Conv1d


class DclsConv2d(DclsConvNd):
    """2-D DCLS convolution: ``kernel_count`` taps per filter at learnable positions inside ``span``.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_count: Taps per (out, in/groups) pair.
        span: Size of the dense kernel the taps live in (int or per-axis tuple).
        stride, padding, dilation, groups, bias, padding_mode: As in ``nn.Conv2d`` (``padding`` may be
            ``'same'`` or ``'valid'``).
        interpolation: ``'gauss'`` (normalised Gaussian taps) or ``'bilinear'`` (floor-form bilinear).
        sigma: Initial Gaussian std in pixels (gauss only).
        learn_sigma: Whether sigma is a parameter (else a buffer).
        device, dtype: Factory arguments.

    Parameters: ``weight [O, I/g, kc]``, ``positions [2, O, I/g, kc]`` (kernel-centred, axis 0 = height),
    ``sigma [2, O, I/g, kc]`` (gauss), ``bias [O]``.
    """

    _ndim = 2
    _dense_cls = nn.Conv2d


class DclsConv3d(DclsConvNd):
    """3-D DCLS convolution. Same arguments as :class:`DclsConv2d`."""

    _ndim = 3
    _dense_cls = nn.Conv3d
