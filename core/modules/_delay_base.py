"""Shared machinery of the delay synapses (:class:`DelayedLinear`, :class:`DelayedConv1d/2d`).

Every synapse ``(o, i)`` has ``kernel_count`` taps, each a weight and a real-valued **delay in time steps**
in ``[0, max_delay - 1]``. A delay acts through a normalised Gaussian over the integer delays
``0 .. max_delay - 1`` with standard deviation ``sigma`` (the SNN-delays recipe, Hammouamri et al., ICLR 2024,
https://github.com/Thvnvtos/SNN-delays); ``sigma == 0`` means **integer mode**: each delay is rounded to the
nearest integer and the synapse is a pure shift (no delay gradient).

Two equivalent computations (they agree to float32 rounding):

- **dense**: build the ``[.., max_delay]`` time kernel with :func:`dclszoo.functional.dcls_kernel` and run a
  causal convolution over time (left padding ``max_delay - 1``); cost grows with ``max_delay``.
- **sparse**: only the ``J`` integer delays around each delay where the Gaussian is not negligible in float32
  (``|k - delay| < 6 sigma``, i.e. ``J = 2 * ceil(6 sigma)``; the dropped taps weigh < 1.6e-8 of the peak),
  or ``J = 1`` in integer mode; cost does not depend on ``max_delay``.

Automatic choice (``path='auto'``): sparse in integer mode and whenever ``4 * J <= max_delay``, dense
otherwise (while sigma is wide at the start of training). ``path='dense'`` / ``'sparse'`` force one.

The stored delays are clamped into range after every optimizer step by the same global step hook as
:class:`~dclszoo.modules.DclsConvNd` positions, and by a straight-through clamp in forward.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..reference import GAUSS_EPS
from .dcls_conv import _LIVE_MODULES, _install_step_hook, _straight_through_clamp

__all__ = ["DelayedSynapse", "GAUSS_TAIL", "SPARSE_RATIO", "PATHS"]

GAUSS_TAIL = 6.0
"""Half-width of the sparse Gaussian window in sigmas: ``exp(-0.5 * 6**2) = 1.5e-8`` < float32 epsilon."""
SPARSE_RATIO = 4
"""``path='auto'`` is sparse when ``SPARSE_RATIO * J <= max_delay`` (or in integer mode)."""
PATHS = ("auto", "dense", "sparse")


def _check_positive_int(name: str, value, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r}: expected an int >= {minimum}.")


class DelayedSynapse(nn.Module):
    """Base of the delay synapses: parameters ``weight`` and ``delays`` of shape ``[O, I, kernel_count]``
    (``I`` = in channels / groups), ``bias [O]``, buffer ``sigma`` (scalar, 0 = integer mode).

    Subclasses set ``weight``'s trailing shape (spatial kernel of convolutions) and implement the
    dense and sparse forwards.
    """

    dclszoo_patched = True
    _supported_step_modes: tuple[str, ...] = ("s", "m")

    def _init_delay_params(
        self, out_ch: int, in_ch: int, max_delay: int, kernel_count: int, sigma: float | None,
        weight_tail: tuple[int, ...], bias: bool, path: str, step_mode: str, factory: dict, delay_init: str,
    ) -> None:
        if delay_init not in ("uniform", "zeros"):
            raise ValueError(f"delay_init={delay_init!r}: expected 'uniform' or 'zeros'.")
        _check_positive_int("max_delay", max_delay)
        _check_positive_int("kernel_count", kernel_count)
        if path not in PATHS:
            raise ValueError(f"path={path!r}: expected one of {PATHS}.")
        if sigma is None:
            sigma = float(max_delay // 2)
        if not (isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and math.isfinite(sigma)
                and sigma >= 0):
            raise ValueError(
                f"sigma={sigma!r}: expected a finite float >= 0 (Gaussian std in time steps; 0 = integer delays)."
            )
        self.max_delay, self.kernel_count, self.path, self.delay_init = max_delay, kernel_count, path, delay_init
        self.weight = nn.Parameter(torch.empty((out_ch, in_ch, kernel_count) + weight_tail, **factory))
        self.delays = nn.Parameter(torch.empty((out_ch, in_ch, kernel_count), **factory))
        self.bias = nn.Parameter(torch.empty(out_ch, **factory)) if bias else None
        self.register_buffer("sigma", torch.tensor(float(sigma), dtype=torch.float32, device=factory["device"]))
        self._sigma_value = float(sigma)
        self.step_mode = step_mode
        self._history: torch.Tensor | None = None
        _LIVE_MODULES.add(self)
        _install_step_hook()

    def reset_parameters(self) -> None:
        """Kaiming-uniform weights and uniform bias with fan-in ``weight[0].numel()`` (in channels x taps x
        spatial kernel, as ``nn.Linear`` / ``nn.ConvNd``), delays per ``delay_init``."""
        if self.weight.is_meta:
            return
        nn.init.kaiming_uniform_(self.weight.view(self.weight.shape[0], -1), a=math.sqrt(5))
        with torch.no_grad():
            if self.delay_init == "uniform":
                self.delays.uniform_(0.0, float(self.max_delay - 1))
            else:
                self.delays.zero_()
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)

    @torch.no_grad()
    def _copy_dense(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Take a dense layer's weight (as tap 0; other taps 0) and bias: with delays 0, the same function."""
        self.weight.zero_()
        self.weight[:, :, 0].copy_(weight)
        if bias is not None:
            self.bias.copy_(bias)

    def __setstate__(self, state) -> None:
        # copy.deepcopy and pickle rebuild the module without __init__: register it for the step clamp too.
        super().__setstate__(state)
        _LIVE_MODULES.add(self)

    # ----------------------------------------------------------------- SpikingJelly step-module protocol
    def supported_step_mode(self) -> tuple[str, ...]:
        """Step modes this module runs in (SpikingJelly's ``StepModule`` protocol)."""
        return self._supported_step_modes

    @property
    def step_mode(self) -> str:
        """``'m'``: whole sequences ``[T, N, ...]``; ``'s'``: one step ``[N, ...]`` per call (streaming)."""
        return self._step_mode

    @step_mode.setter
    def step_mode(self, value: str) -> None:
        if value not in self._supported_step_modes:
            raise ValueError(
                f"step_mode={value!r}: {type(self).__name__} supports {self._supported_step_modes} "
                "('m' = multi-step [T, N, ...], 's' = single-step streaming)."
            )
        self._step_mode = value

    def reset(self) -> None:
        """Clear the streaming history (called by ``spikingjelly...functional.reset_net``)."""
        self._history = None

    def detach(self) -> None:
        """Cut the streaming history from the autograd graph (truncated BPTT, ``functional.detach_net``)."""
        if self._history is not None:
            self._history = self._history.detach()

    # ----------------------------------------------------------------- sigma and integer mode
    @property
    def integer_mode(self) -> bool:
        """True when ``sigma == 0``: delays are rounded to integers and act as pure shifts."""
        return self._sigma_value == 0.0

    def set_sigma(self, sigma: float) -> None:
        """Set the Gaussian std in time steps (``0`` switches to integer mode)."""
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma={sigma!r}: expected a finite float >= 0 (0 = integer delays).")
        self._sigma_value = float(sigma)
        self.sigma.fill_(float(sigma))

    @torch.no_grad()
    def round_delays(self) -> None:
        """Round the stored delays to integers in place and switch to integer mode (inference, hard phase)."""
        self.clamp_parameters()
        self.delays.round_()
        self.set_sigma(0.0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._sigma_value = float(self.sigma)

    @torch.no_grad()
    def clamp_parameters(self) -> None:
        """Clamp stored delays into ``[0, max_delay - 1]`` (done after every optimizer step automatically)."""
        self.delays.clamp_(0.0, float(self.max_delay - 1))

    def effective_delays(self) -> torch.Tensor:
        """Delays used by the forward: clamped (straight-through), rounded in integer mode."""
        d = _straight_through_clamp(self.delays.unsqueeze(0), (0.0,), (float(self.max_delay - 1),))[0]
        return torch.round(d.detach()) if self.integer_mode else d

    def integer_delays(self) -> torch.Tensor:
        """The delays as int64 ``[O, I, kernel_count]``; ValueError unless they are integers already."""
        d = self.delays.detach().clamp(0, self.max_delay - 1)
        if not self.integer_mode and not bool(torch.equal(d, torch.round(d))):
            raise ValueError(
                f"{type(self).__name__}: the delays are not integers (sigma={self._sigma_value}); call "
                "round_delays() first (or train with a final hard phase) to get integer delays."
            )
        return torch.round(d).long()

    # ----------------------------------------------------------------- the two paths
    def taps_per_delay(self) -> int:
        """``J``: integer delays per tap used by the sparse path (1 in integer mode)."""
        return 1 if self.integer_mode else 2 * max(1, math.ceil(GAUSS_TAIL * self._sigma_value))

    def use_sparse(self) -> bool:
        """The path the next forward takes (see the module docstring for the rule)."""
        if self.path != "auto":
            return self.path == "sparse"
        return self.integer_mode or SPARSE_RATIO * self.taps_per_delay() <= self.max_delay

    def time_kernel(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Dense delay kernel over ``max_delay`` steps, kernel index ``j`` <-> delay ``max_delay - 1 - j``.

        Args:
            weight: ``[O, I, kc]`` tap weights to fold in (summed over taps) -> ``[O, I, max_delay]``;
                None -> the unweighted per-tap profiles ``[O, I, kc, max_delay]``.
        """
        from ..functional import dcls_kernel

        d = self.effective_delays()
        o, i, k = d.shape
        centre = self.max_delay - 1 - self.max_delay // 2
        if weight is None:
            pos, w = (centre - d).reshape(1, o * i * k, 1, 1), torch.ones(o * i * k, 1, 1, device=d.device, dtype=d.dtype)
        else:
            pos, w = (centre - d).unsqueeze(0), weight
        if self.integer_mode:
            kern = dcls_kernel(w, pos, None, (self.max_delay,), "bilinear")
        else:
            kern = dcls_kernel(w, pos, self.sigma.to(d.dtype), (self.max_delay,), "gauss")
        return kern if weight is not None else kern.view(o, i, k, self.max_delay)

    def sparse_taps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(profile [O, I, kc, J], offsets [O, I, kc, J] int64)``: delay taps of the sparse path.

        A tap's Gaussian lives on the window ``floor(d) - J/2 + 1 .. floor(d) + J/2`` around its delay ``d``, cut
        to ``[0, max_delay - 1]`` and normalised over what is left. The ``J = min(taps_per_delay(), max_delay)``
        offsets returned are consecutive, ``start + j``, the window shifted inside ``[0, max_delay - 1]`` near
        the ends; the offsets the shift adds (outside the window) get weight 0. Consecutive runs let the kernels
        load each input step once per run (``sparse_delay(..., band=J)``).
        """
        d = self.effective_delays()
        if self.integer_mode:
            return torch.ones_like(d).unsqueeze(-1), d.long().unsqueeze(-1)
        width = self.taps_per_delay()
        taps = min(width, self.max_delay)
        low = (torch.floor(d.detach()) + 1 - width // 2).unsqueeze(-1)  # the window's first delay
        start = low.clamp(0, self.max_delay - taps)
        offs = start + torch.arange(taps, device=d.device, dtype=d.dtype)
        window = (offs >= low) & (offs < low + width)
        u = (offs - d.unsqueeze(-1)) / self.sigma.to(d.dtype)
        g = torch.exp(-0.5 * u * u) * window
        g = g / (g.sum(-1, keepdim=True) + GAUSS_EPS)
        return g, offs.long()

    # ----------------------------------------------------------------- misc
    def _delay_repr(self) -> str:
        s = f"max_delay={self.max_delay}, kernel_count={self.kernel_count}, sigma={self._sigma_value:g}"
        if self.path != "auto":
            s += f", path={self.path!r}"
        if self.bias is None:
            s += ", bias=False"
        return s + f", step_mode={self.step_mode!r}"
