"""Export learned delays: plain integer tensors, and NIR graphs (``nir.Delay`` + ``nir.Linear``/``nir.Affine``).

NIR's ``Delay`` node delays each *channel* by one amount, while a delay synapse layer delays each *synapse*
``(o, i)``. :func:`to_nir` therefore splits the synapses into groups by integer delay ``d``: per group, one
``Delay`` node (every input channel delayed by ``d``) feeds one ``Linear`` holding the weights of that group's
synapses (zero elsewhere); all groups feed the output, which sums its incoming edges. The graph has at most
``max_delay`` groups. :func:`from_nir` reads such a graph back (compacting the groups into taps). Only
:class:`~dclszoo.DelayedLinear` exports to NIR; convolutions export to tensors.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .modules._delay_base import DelayedSynapse
from .modules.delay import DelayedLinear

__all__ = ["export_delays", "load_delays", "to_nir", "from_nir"]


def export_delays(module: DelayedSynapse) -> dict:
    """Integer delays and weights of a delay synapse layer as plain tensors.

    Returns:
        ``{"delays": int64 [O, I] , "weight": [O, I, *kernel], "bias": [O] or None, "max_delay": int}`` for
        ``kernel_count == 1`` (``[O, I, kc]`` / ``[O, I, kc, *kernel]`` otherwise). ``y[t, o] = bias[o] +
        sum_i weight[o, i] * x[t - delays[o, i], i]``.

    Raises:
        ValueError: The delays are not integers (call ``round_delays()`` or train with a hard phase first).
    """
    if not isinstance(module, DelayedSynapse):
        raise TypeError(f"module={type(module).__name__}: expected a DelayedLinear or DelayedConv1d/2d.")
    delays = module.integer_delays()
    weight = module.weight.detach().clone()
    if module.kernel_count == 1:
        delays, weight = delays[:, :, 0], weight[:, :, 0]
    bias = None if module.bias is None else module.bias.detach().clone()
    return {"delays": delays, "weight": weight, "bias": bias, "max_delay": module.max_delay}


def load_delays(exported: dict, **kwargs) -> DelayedLinear:
    """A :class:`~dclszoo.DelayedLinear` in integer mode from :func:`export_delays` output (linear layers).

    ``kwargs`` go to the constructor (``batch_first``, ``step_mode``, ``path``).
    """
    delays, weight = exported["delays"], exported["weight"]
    if delays.is_floating_point():
        raise TypeError(f"delays has dtype {delays.dtype}: expected integer delays (int64 time steps).")
    if delays.dim() == 2:
        delays, weight = delays.unsqueeze(-1), weight.unsqueeze(-1)
    if delays.shape != weight.shape:
        raise ValueError(f"delays {tuple(delays.shape)} and weight {tuple(weight.shape)} must have the same shape.")
    max_delay = int(exported.get("max_delay") or int(delays.max()) + 1)
    if int(delays.min()) < 0 or int(delays.max()) >= max_delay:
        raise ValueError(f"delays range {int(delays.min())}..{int(delays.max())} is outside 0..max_delay-1={max_delay - 1}.")
    out_f, in_f, kc = weight.shape
    bias = exported.get("bias")
    mod = DelayedLinear(in_f, out_f, max_delay, kernel_count=kc, bias=bias is not None, sigma=0.0,
                        delay_init="zeros", dtype=weight.dtype, **kwargs)
    with torch.no_grad():
        mod.weight.copy_(weight)
        mod.delays.copy_(delays.to(weight.dtype))
        if bias is not None:
            mod.bias.copy_(bias)
    return mod


def to_nir(module: DelayedLinear):
    """A ``nir.NIRGraph`` computing ``module`` with integer delays (see the module docstring for the layout)."""
    import nir
    import numpy as np

    if not isinstance(module, DelayedLinear):
        raise TypeError(f"module={type(module).__name__}: only DelayedLinear exports to NIR (convolutions: export_delays).")
    exp = export_delays(module)
    delays = exp["delays"].reshape(module.out_features, module.in_features, -1)
    weight = exp["weight"].reshape(delays.shape).float()
    nodes = {"input": nir.Input(np.array([module.in_features])), "output": nir.Output(np.array([module.out_features]))}
    edges = []
    values = sorted(torch.unique(delays).tolist())
    for n, d in enumerate(values):
        w = (weight * (delays == d)).sum(-1).numpy()
        name = f"linear_d{d}"
        if n == 0 and exp["bias"] is not None:
            nodes[name] = nir.Affine(weight=w, bias=exp["bias"].float().numpy())
        else:
            nodes[name] = nir.Linear(weight=w)
        if d == 0:
            edges.append(("input", name))
        else:
            nodes[f"delay_d{d}"] = nir.Delay(delay=np.full(module.in_features, float(d), dtype=np.float32))
            edges += [("input", f"delay_d{d}"), (f"delay_d{d}", name)]
        edges.append((name, "output"))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"producer": "dclszoo", "max_delay": module.max_delay})


def from_nir(graph, max_delay: int | None = None) -> DelayedLinear:
    """Rebuild a :class:`~dclszoo.DelayedLinear` (integer mode) from a graph written by :func:`to_nir`.

    Raises:
        ValueError: The graph is not an ``input -> [Delay] -> Linear/Affine -> output`` fan of that form, or
            a ``Delay`` node delays its channels by different amounts.
    """
    import nir

    preds: dict[str, list[str]] = {}
    for src, dst in graph.edges:
        preds.setdefault(dst, []).append(src)
    groups, bias = [], None
    for name in preds.get("output", []):
        node = graph.nodes[name]
        if not isinstance(node, (nir.Linear, nir.Affine)) or len(preds.get(name, [])) != 1:
            raise ValueError(f"from_nir: node {name!r} feeding 'output' must be a Linear/Affine with one input.")
        src = preds[name][0]
        if src == "input":
            d = 0
        else:
            dn = graph.nodes[src]
            if not isinstance(dn, nir.Delay) or preds.get(src) != ["input"]:
                raise ValueError(f"from_nir: {name!r} must be fed by 'input' or by a Delay node fed by 'input'.")
            dv = torch.as_tensor(dn.delay).flatten()
            if not bool((dv == dv[0]).all()) or float(dv[0]) != round(float(dv[0])):
                raise ValueError(f"from_nir: Delay node {src!r} must delay every channel by one integer amount.")
            d = int(round(float(dv[0])))
        groups.append((d, torch.as_tensor(node.weight, dtype=torch.float32)))
        if isinstance(node, nir.Affine):
            b = torch.as_tensor(node.bias, dtype=torch.float32)
            bias = b if bias is None else bias + b
    if not groups:
        raise ValueError("from_nir: no Linear/Affine node feeds 'output'.")
    d_vals = torch.tensor([d for d, _ in groups])
    w_all = torch.stack([w for _, w in groups])  # [G, O, I]
    nz = w_all != 0
    kc = max(1, int(nz.sum(0).max()))
    order = torch.argsort((~nz).to(torch.int8), dim=0, stable=True)[:kc]  # non-zero groups first
    weight = w_all.gather(0, order).permute(1, 2, 0)
    delays = torch.where(weight != 0, d_vals[order].permute(1, 2, 0), torch.zeros_like(weight, dtype=torch.long))
    md = max_delay or int((graph.metadata or {}).get("max_delay", int(d_vals.max()) + 1))
    return load_delays({"delays": delays, "weight": weight, "bias": bias, "max_delay": md})
