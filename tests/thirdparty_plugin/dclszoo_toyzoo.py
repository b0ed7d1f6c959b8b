"""dclszoo plugin for ``toyzoo``: replaces each ``ToyMixer`` of a ``ToyNet`` by a function-preserving DCLS conv."""

import torch
import torch.nn as nn

import dclszoo

__version__ = "0.2.0"


@dclszoo.hookimpl
def dclszoo_plugin_info():
    return {"name": "toy", "version": __version__, "supports": ["toyzoo: ToyNet"]}


@dclszoo.hookimpl
def dclszoo_register():
    import toyzoo  # the zoo is imported inside the hook, never at module import

    toyzoo.REGISTRY.append("toynet_dcls")


@dclszoo.hookimpl
def dclszoo_patch(model, config, filter_fn):
    import toyzoo

    if not isinstance(model, toyzoo.ToyNet) or not isinstance(config, dclszoo.DclsConfig):
        return None  # not mine

    def make(module, fqn):
        if not isinstance(module, toyzoo.ToyMixer):
            return None
        c, k = module.filt.shape[0], module.k
        dense = nn.Conv2d(c, c, k, padding=k // 2, groups=c, bias=False)
        with torch.no_grad():
            dense.weight.copy_(module.filt)
        return dclszoo.DclsConv2d.from_dense(dense, kernel_count=config.kernel_count, span=config.span,
                                             interpolation=config.interpolation)

    return dclszoo.replace_modules(model, make, filter_fn, plugin="toy")
