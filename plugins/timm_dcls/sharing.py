"""Tap positions shared across the blocks of a stage (the published ConvNeXt-dcls recipe).

The convolutions that share are those at the same place in consecutive blocks: their names differ only in the
block index that follows the last block container (``blocks``, ``layers``, ``layer<n>``), e.g.
``stages.2.blocks.{0..8}.conv_dw`` or MobileNet's ``blocks.3.{0..2}.conv_dw``, and they have the same geometry.

Sharing means one ``positions`` ``nn.Parameter`` registered in every member (``parameters()`` yields it once,
optimisers update it once, gradients from all blocks add up). The first member owns it; the others leave it
out of ``state_dict`` (a state-dict hook) and take it back on load (a load pre-hook), so checkpoints hold each
shared tensor once and save with safetensors, which rejects aliased tensors. Rebuilding the same sharing before
loading (``dclszoo.patch`` with the same config) restores it.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Callable, Sequence

import torch
import torch.nn as nn

from dclszoo.modules import DclsConvNd

__all__ = ["sharing_groups", "convert_shared", "tie_positions", "is_positions_follower"]

_CONTAINER = re.compile(r"^(blocks|layers|layer\d+)$")
FOLLOWER_ATTR = "dclszoo_positions_owner"


def _group_key(fqn: str, conv: nn.Module) -> tuple:
    parts = fqn.split(".")
    containers = [i for i, p in enumerate(parts) if _CONTAINER.match(p)]
    geometry = (
        type(conv), conv.in_channels, conv.out_channels, conv.groups, tuple(conv.kernel_size), tuple(conv.stride),
        tuple(conv.dilation), str(conv.padding), conv.padding_mode,
    )
    if containers:
        i = containers[-1] + 1
        while i + 1 < len(parts) and parts[i + 1].isdigit():  # MobileNet: blocks.<stage>.<block>
            i += 1
        if i < len(parts) and parts[i].isdigit():
            return (tuple(parts[:i]), tuple(parts[i + 1:]), geometry)
    return (fqn, geometry)


def sharing_groups(named_convs: Sequence[tuple[str, nn.Module]]) -> list[list[tuple[str, nn.Module]]]:
    """Split ``(fqn, conv)`` pairs into groups that share positions (model order kept; singletons allowed)."""
    groups: dict[tuple, list[tuple[str, nn.Module]]] = {}
    for fqn, conv in named_convs:
        groups.setdefault(_group_key(fqn, conv), []).append((fqn, conv))
    return list(groups.values())


def is_positions_follower(module: nn.Module) -> bool:
    """Whether ``module`` uses positions owned by another module (and leaves them out of its state_dict)."""
    return getattr(module, FOLLOWER_ATTR, None) is not None


def _drop_positions(module, state_dict, prefix, local_metadata) -> None:
    if is_positions_follower(module):
        state_dict.pop(prefix + "positions", None)


def _fill_positions(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    # The shared tensor is loaded through its owner; hand the follower its own (identical) tensor so a strict
    # load does not report it missing. Copying a tensor into itself is a no-op whatever the load order.
    if is_positions_follower(module):
        state_dict.setdefault(prefix + "positions", module.positions.detach())


def tie_positions(owner: DclsConvNd, follower: DclsConvNd, owner_name: str = "") -> None:
    """Make ``follower`` use ``owner.positions`` (same Parameter); see the module docstring."""
    if follower.positions.shape != owner.positions.shape or follower.span != owner.span:
        raise ValueError(
            f"tie_positions: positions {tuple(follower.positions.shape)} span {follower.span} cannot share with "
            f"{tuple(owner.positions.shape)} span {owner.span}; only identical geometries share positions."
        )
    follower.positions = owner.positions
    setattr(follower, FOLLOWER_ATTR, owner_name or "<owner>")
    follower.register_state_dict_post_hook(_drop_positions)
    follower.register_load_state_dict_pre_hook(_fill_positions)


@torch.no_grad()
def convert_shared(
    convs: Sequence[tuple[str, nn.Module]], convert: Callable[[nn.Module, str], DclsConvNd]
) -> list[DclsConvNd]:
    """Convert one sharing group; the members get one positions Parameter, chosen for all of them.

    Each member is converted with ``convert(conv, fqn)``, then gets the group's tap choice. Positions: per filter, the span points
    with the largest summed ``|w|`` over the group (ties: nearest the centre), so a group whose kernels fit in
    ``kernel_count`` taps converts exactly; otherwise every member keeps its own weights at the shared points
    and its relative kernel error is in ``module.conversion_error`` (one warning for the group).
    """
    if len(convs) == 1:
        return [convert(convs[0][1], convs[0][0])]
    with warnings.catch_warnings():  # one summary warning below instead of one per member
        warnings.simplefilter("ignore")
        targets = [convert(conv, fqn) for fqn, conv in convs]
        n_span = math.prod(targets[0].span)
        # The dense kernels embedded in the span, via an exact full-grid conversion (the core's placement rules).
        bigs = [
            DclsConvNd.from_dense(conv, n_span, targets[0].span, "bilinear").kernel().flatten(2)  # [O, I/g, n_span]
            for _, conv in convs
        ]
    owner, kc, span = targets[0], targets[0].kernel_count, targets[0].span
    ndim = len(span)
    axes = [torch.arange(s, device=owner.weight.device) for s in span]
    centre = torch.tensor([s // 2 for s in span], device=owner.weight.device).view(ndim, 1)
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij")).reshape(ndim, -1) - centre  # kernel-centred
    dist = grid.abs().amax(0).to(torch.float64)
    score = torch.stack(bigs).abs().double().sum(0)  # [O, I/g, n_span]
    order = torch.argsort(dist, stable=True)  # nearest the centre first: tie-break of a stable sort
    ranked = torch.sort(score[..., order], dim=-1, descending=True, stable=True).indices
    idx = order[ranked[..., :kc]]  # [O, I/g, kc]
    owner.positions.copy_(grid[:, idx].to(owner.positions.dtype))
    worst = 0.0
    for (fqn, _), module, big in zip(convs, targets, bigs):
        module.weight.copy_(torch.gather(big, 2, idx))
        if module is not owner:
            tie_positions(owner, module, convs[0][0])
        total = big.double().norm()
        err = float((module.kernel().double().flatten(2) - big.double()).norm() / total) if total > 0 else 0.0
        module.conversion_error = err
        worst = max(worst, err)
    if worst > 1e-6:
        warnings.warn(
            f"shared positions for {len(convs)} layers like {convs[0][0]!r}: kernel_count={kc} "
            f"({owner.interpolation}) does not represent the dense kernels exactly; worst relative kernel error "
            f"{worst:.3g} (module.conversion_error).",
            stacklevel=4,
        )
    return targets
