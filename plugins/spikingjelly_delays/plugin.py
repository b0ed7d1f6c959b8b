"""Hook implementations of the SpikingJelly delays plugin (no spikingjelly import at module level)."""

from __future__ import annotations

from dclszoo.hookspecs import hookimpl
from dclszoo.version import __version__


@hookimpl
def dclszoo_plugin_info() -> dict:
    return {
        "name": "spikingjelly",
        "version": __version__,
        "supports": [
            "spikingjelly 2.x: layer.Linear, nn.Linear in SeqToANNContainer (targets 'linear')",
            "spikingjelly 2.x: layer.Conv1d/2d, nn.Conv1d/2d in SeqToANNContainer (targets 'conv')",
        ],
    }


@hookimpl
def dclszoo_patch(model, config, filter_fn):
    """Add delays to a SpikingJelly network for a ``DelayConfig``; None for anything else."""
    from dclszoo.config import DelayConfig

    if not isinstance(config, DelayConfig):
        return None
    from .patch import is_spikingjelly_net, patch_spikingjelly

    if not is_spikingjelly_net(model):
        return None
    return patch_spikingjelly(model, config, filter_fn)


@hookimpl
def dclszoo_after_unpatch(model) -> None:
    """Restore plain ``SeqToANNContainer`` classes and drop ``reset_net``'s cached module list."""
    from .patch import after_unpatch

    after_unpatch(model)


@hookimpl
def dclszoo_describe_model(model):
    """SpikingJelly networks are user-built (no registry): recorded with this plugin, rebuilt from a builder
    (``dclszoo.hub.register_builder``) or from ``from_pretrained(..., model=net)``."""
    from .patch import is_spikingjelly_net

    if not is_spikingjelly_net(model):
        return None
    return {"architecture": None, "pip": "dclszoo[snn]", "tags": ["spikingjelly", "spiking-neural-network"]}
