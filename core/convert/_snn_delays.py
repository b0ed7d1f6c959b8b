"""Import SNN-delays layers and checkpoints (``dcls`` 0.1.1 ``Dcls1d(version='gauss')`` over time).

SNN-delays (https://github.com/Thvnvtos/SNN-delays, ``snn_delays.py``) permutes ``[T, N, C]`` to ``[N, C, T]``,
pads ``max_delay - 1`` steps on the left and ``(max_delay - 1) // 2`` on the right, and runs ``Dcls1d`` with
``dilated_kernel_size = max_delay``, ``kernel_count = 1``. Its output therefore has ``T + (max_delay - 1) // 2``
steps; the first ``T`` are exactly a causal delay layer with

    delay = (max_delay - 1 - max_delay // 2) - P          (= max_delay // 2 - P for the odd spans they use)
    sigma = |SIG| + 0.27                                   (dcls' effective Gaussian std)

which is what :func:`from_snn_delays` builds (:class:`dclszoo.DelayedLinear`, output length ``T``).
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn

from ..modules.delay import DelayedLinear

__all__ = ["from_snn_delays"]

_SIG_OFFSET = 0.27


def _tensors(source, max_delay: int | None) -> tuple[dict[str, torch.Tensor], int]:
    if isinstance(source, nn.Module):
        if type(source).__name__ != "Dcls1d" or not hasattr(source, "P"):
            raise TypeError(f"source={type(source).__name__}: expected a DCLS.construct.modules.Dcls1d or its state_dict.")
        if source.version != "gauss":
            raise ValueError(f"source.version={source.version!r}: SNN-delays layers use version='gauss'.")
        if source.groups != 1 or source.stride != (1,) or source.padding != (0,):
            raise ValueError(
                f"source has groups={source.groups}, stride={source.stride}, padding={source.padding}; SNN-delays "
                "layers have groups=1, stride=1 and padding=0 (the causal padding is applied outside the layer)."
            )
        span = int(source.dilated_kernel_size[0])
        if max_delay is not None and max_delay != span:
            raise ValueError(f"max_delay={max_delay} differs from the layer's dilated_kernel_size={span}; omit it.")
        return {k: v.detach() for k, v in source.state_dict().items()}, span
    if isinstance(source, Mapping):
        missing = [k for k in ("weight", "P", "SIG") if k not in source]
        if missing:
            raise ValueError(
                f"state_dict lacks {missing}; expected one Dcls1d layer's keys 'weight', 'P', 'SIG' (and 'bias'); "
                "for a whole SNN-delays checkpoint select a prefix, e.g. {k[len('model.0.'):]: v for k, v in "
                "sd.items() if k.startswith('model.0.')}."
            )
        if max_delay is None:
            raise ValueError("max_delay=None: a state_dict does not record the span; pass max_delay (their config.max_delay).")
        return dict(source), int(max_delay)
    raise TypeError(f"source={type(source).__name__}: expected a Dcls1d module or a state_dict mapping.")


def from_snn_delays(source, max_delay: int | None = None, strict: bool = True, **kwargs) -> DelayedLinear:
    """An equivalent :class:`dclszoo.DelayedLinear` from an SNN-delays synapse layer or its state_dict.

    The result gives the same outputs as SNN-delays' padded ``Dcls1d`` on their first ``T`` steps (ours keep
    ``T``; theirs add ``(max_delay - 1) // 2`` steps per layer).

    Args:
        source: A ``DCLS.construct.modules.Dcls1d(kernel_count=1, version='gauss')`` or its state_dict
            (keys ``weight [O, I, 1]``, ``P [1, O, I, 1]``, ``SIG`` like ``P``, optional ``bias``).
        max_delay: The span (``dilated_kernel_size``); required for a state_dict.
        strict: Raise if a position lies outside the span grid (possible with an even ``max_delay``, where dcls
            clamps to ``+-max_delay // 2`` but the grid ends at ``max_delay // 2 - 1``); False clamps it (the
            Gaussian is then re-centred on the border, no longer exactly equal).
        **kwargs: Passed to :class:`DelayedLinear` (``batch_first``, ``step_mode``, ``path``).

    Raises:
        ValueError: Wrong keys or shapes, a non-uniform ``SIG`` (ours is one sigma per layer), a layer that is
            not an SNN-delays one.
        TypeError: ``source`` is neither a ``Dcls1d`` nor a mapping.
    """
    sd, span = _tensors(source, max_delay)
    w, p, sig = sd["weight"], sd["P"], sd["SIG"]
    if w.dim() != 3 or p.dim() != 4 or p.shape[0] != 1 or tuple(p.shape[1:]) != tuple(w.shape):
        raise ValueError(
            f"shapes weight {tuple(w.shape)}, P {tuple(p.shape)}: expected weight [O, I, kc] and P [1, O, I, kc] "
            "(a Dcls1d layer)."
        )
    sig_eff = sig.abs() + _SIG_OFFSET
    if not bool(torch.allclose(sig_eff, sig_eff.flatten()[0].expand_as(sig_eff), rtol=0, atol=1e-6)):
        raise ValueError(
            f"SIG varies across synapses ({float(sig_eff.min()):.4g}..{float(sig_eff.max()):.4g}); SNN-delays keeps "
            "one sigma per layer, and so does DelayedLinear."
        )
    centre = span - 1 - span // 2
    delays = centre - p[0]
    outside = int(((delays < 0) | (delays > span - 1)).sum())
    if outside and strict:
        raise ValueError(
            f"{outside} position(s) lie outside the span grid (delays {float(delays.min()):g}..{float(delays.max()):g} "
            f"for max_delay={span}); an even max_delay lets dcls put positions there. SNN-delays uses odd spans; "
            "pass strict=False to clamp them into 0..max_delay-1 (outputs then differ on those synapses)."
        )
    out_f, in_f, kc = w.shape
    bias = sd.get("bias")
    mod = DelayedLinear(in_f, out_f, span, kernel_count=kc, bias=bias is not None,
                        sigma=float(sig_eff.flatten()[0]), device=w.device, dtype=w.dtype, **kwargs)
    with torch.no_grad():
        mod.weight.copy_(w)
        mod.delays.copy_(delays.clamp(0, span - 1))
        if bias is not None:
            mod.bias.copy_(bias)
    return mod
