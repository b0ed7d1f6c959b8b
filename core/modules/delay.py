"""``DelayedLinear``: a fully connected synapse layer with one learnable delay per synapse (and tap).

``y[t, o] = bias[o] + sum_{i, k} weight[o, i, k] * x[t - delays[o, i, k], i]``, with real-valued delays acting
through a normalised Gaussian over the integer delays while ``sigma > 0`` (see :mod:`._delay_base` for the
maths, the dense/sparse paths and the rule that picks one). It is SNN-delays' DCLS-over-time synapse
(Hammouamri, Khalfaoui-Hassani, Masquelier, "Learning delays in spiking neural networks using dilated
convolutions with learnable spacings", ICLR 2024) with output length equal to input length (strictly causal).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._delay_base import DelayedSynapse

__all__ = ["DelayedLinear"]


class DelayedLinear(DelayedSynapse):
    """Linear synapses with learnable delays, for SpikingJelly-style sequences.

    Args:
        in_features: Input features ``I``.
        out_features: Output features ``O``.
        max_delay: Delays range over ``0 .. max_delay - 1`` time steps (``max_delay=1``: a plain Linear).
        kernel_count: Taps (weight + delay) per synapse.
        bias: Learnable output bias.
        sigma: Gaussian std in time steps; None = ``max_delay // 2`` (start of the SNN-delays schedule);
            ``0`` = integer delays. Usually driven by :class:`dclszoo.delays_training.SigmaSchedule`.
        batch_first: Multi-step input/output ``[N, T, ..., C]`` instead of ``[T, N, ..., C]``.
        step_mode: ``'m'`` whole sequences, ``'s'`` one step ``[N, ..., C]`` per call (streaming; needs
            integer mode; keeps a history of the last ``max_delay`` inputs, cleared by :meth:`reset`).
        path: ``'auto'`` | ``'dense'`` | ``'sparse'`` (see :mod:`dclszoo.modules._delay_base`).
        delay_init: ``'uniform'`` (over the range, as SNN-delays) or ``'zeros'``.
        device, dtype: Factory arguments.

    Parameters: ``weight [O, I, kc]``, ``delays [O, I, kc]`` (time steps), ``bias [O]``; buffer ``sigma``.

    Shapes: multi-step ``[T, *B, I] -> [T, *B, O]`` (``T`` first, any number of batch dims, or batch-first);
    single-step ``[*B, I] -> [*B, O]``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        max_delay: int,
        kernel_count: int = 1,
        bias: bool = True,
        sigma: float | None = None,
        batch_first: bool = False,
        step_mode: str = "m",
        path: str = "auto",
        delay_init: str = "uniform",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r}: expected a positive int.")
        self.in_features, self.out_features, self.batch_first = in_features, out_features, bool(batch_first)
        self._init_delay_params(
            out_features, in_features, max_delay, kernel_count, sigma, (), bias, path, step_mode,
            {"device": device, "dtype": dtype}, delay_init,
        )
        self.reset_parameters()

    @classmethod
    def from_linear(cls, linear: nn.Linear, max_delay: int, kernel_count: int = 1, **kwargs) -> "DelayedLinear":
        """A DelayedLinear with ``linear``'s weights and all delays 0, in integer mode: the same function.

        Extra taps (``kernel_count > 1``) start with zero weight. ``kwargs`` go to the constructor
        (``step_mode``, ``batch_first``, ``path``); ``sigma`` defaults to 0 (integer mode) so the result is
        function-identical; a :class:`~dclszoo.delays_training.SigmaSchedule` turns on the Gaussian phase.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear={type(linear).__name__}: from_linear expects an nn.Linear.")
        kwargs.setdefault("sigma", 0.0)
        w = linear.weight
        mod = cls(linear.in_features, linear.out_features, max_delay, kernel_count=kernel_count,
                  bias=linear.bias is not None, delay_init="zeros", device=w.device, dtype=w.dtype, **kwargs)
        mod._copy_dense(w, linear.bias)
        return mod

    # ----------------------------------------------------------------- forward
    def _check_features(self, x: torch.Tensor, layout: str) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{type(self).__name__}: input must be a torch.Tensor, got {type(x).__name__}.")
        if x.dim() < 2 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__}(step_mode={self.step_mode!r}) expects {layout} with "
                f"C = in_features = {self.in_features} last, got shape {tuple(x.shape)}."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.step_mode == "s":
            return self._single_step(x)
        layout = "[N, T, ..., C]" if self.batch_first else "[T, N, ..., C]"
        self._check_features(x, layout)
        if self.batch_first:
            if x.dim() < 3:
                raise ValueError(f"batch_first input must be {layout}, got shape {tuple(x.shape)}.")
            x = x.transpose(0, 1)
        steps = x.shape[0]
        if steps == 0:
            raise ValueError(f"{type(self).__name__}: the input has T=0 time steps (shape {tuple(x.shape)}).")
        batch_shape = x.shape[1:-1]
        xt = x.reshape(steps, -1, self.in_features)
        y = self._sparse(xt) if self.use_sparse() else self._dense(xt)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        y = y.reshape((steps,) + tuple(batch_shape) + (self.out_features,))
        return y.transpose(0, 1) if self.batch_first else y

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        """Causal conv1d with the dense time kernel: ``[T, B, I] -> [T, B, O]``."""
        kernel = self.time_kernel(self.weight).to(x.dtype)  # [O, I, D]
        xc = F.pad(x.permute(1, 2, 0), (self.max_delay - 1, 0))
        return F.conv1d(xc, kernel).permute(2, 0, 1)

    def _sparse(self, x: torch.Tensor) -> torch.Tensor:
        """Gather of the few delay taps per synapse (:func:`dclszoo.kernels.delay.sparse_delay`)."""
        from ..kernels.delay import sparse_delay

        prof, offs = self.sparse_taps()  # [O, I, kc, J], runs of J consecutive offsets >= 0
        coeff = (self.weight.unsqueeze(-1) * prof).flatten(2).to(x.dtype)
        return sparse_delay(x.contiguous(), coeff, offs.flatten(2), check_values=False, band=offs.shape[-1])

    def _single_step(self, x: torch.Tensor) -> torch.Tensor:
        """Streaming step: ``[*B, I] -> [*B, O]`` from a history of the last ``max_delay`` inputs."""
        self._check_features(x, "one step [N, ..., C]")
        if not self.integer_mode:
            raise ValueError(
                f"{type(self).__name__}: single-step (streaming) mode needs integer delays, but sigma="
                f"{self._sigma_value:g}; call round_delays() (or dclszoo.delays_training.round_delays(model)) "
                "or use multi-step mode."
            )
        batch_shape = x.shape[:-1]
        xb = x.reshape(-1, self.in_features)
        hist = self._history
        if hist is not None and hist.shape[1:] != xb.shape:
            raise ValueError(
                f"{type(self).__name__}: batch shape changed from {tuple(hist.shape[1:-1])} to "
                f"{tuple(xb.shape[:-1])} in the middle of a stream; call functional.reset_net(net) "
                "(or module.reset()) between sequences."
            )
        if hist is None:
            hist = xb.new_zeros((self.max_delay,) + tuple(xb.shape))
        hist = torch.cat([xb.unsqueeze(0), hist[:-1]], 0)  # hist[d] = x[t - d]
        self._history = hist
        offs = self.effective_delays().long()  # [O, I, kc]
        chan = torch.arange(self.in_features, device=x.device).view(1, -1, 1)
        taps = hist.permute(0, 2, 1)[offs, chan]  # [O, I, kc, B]
        y = torch.einsum("oik,oikb->bo", self.weight.to(x.dtype), taps)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(tuple(batch_shape) + (self.out_features,))

    # ----------------------------------------------------------------- export
    @torch.no_grad()
    def to_dense(self) -> nn.Module:
        """An ``nn.Linear`` with identical output, if every synapse's delay kernel is exactly at delay 0.

        Raises:
            ValueError: If some synapse has a non-zero delay (or a Gaussian spreading beyond delay 0): a
                delayed synapse has no ``nn.Linear`` equivalent; use
                :func:`dclszoo.delays_export.export_delays` or NIR export instead.
        """
        kernel = self.time_kernel(self.weight)  # [O, I, D]; delay 0 is the last index
        if self.max_delay > 1 and bool(kernel[..., :-1].ne(0).any()):
            raise ValueError(
                f"{type(self).__name__}.to_dense(): some synapses have non-zero delays (or sigma="
                f"{self._sigma_value:g} spreads them); a delayed synapse has no nn.Linear equivalent. Export "
                "integer delays with dclszoo.delays_export.export_delays(module) or to NIR instead."
            )
        linear = self._make_dense_linear()
        linear.weight.copy_(kernel[..., -1])
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        return linear

    def _make_dense_linear(self) -> nn.Linear:
        return nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                         device=self.weight.device, dtype=self.weight.dtype)

    def extra_repr(self) -> str:
        s = f"{self.in_features}, {self.out_features}, " + self._delay_repr()
        return s + (", batch_first=True" if self.batch_first else "")
