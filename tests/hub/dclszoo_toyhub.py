"""A third-party plugin that joins dclszoo's Hub round trip through hooks alone (no change to dclszoo).

It serves the toy zoo of ``tests/thirdparty_plugin/toyzoo`` (``ToyNet``, whose mixers keep a raw filter
parameter): ``dclszoo_patch`` turns the mixers into DCLS convolutions, ``dclszoo_describe_model`` records the
architecture and its arguments, ``dclszoo_build_model`` rebuilds it. ``tests/hub/conftest.py`` installs it the
way pip would (a ``dclszoo-toyhub`` distribution declaring the entry point ``toyhub``).
"""

import torch
import torch.nn as nn

import dclszoo

ARGS = "toyhub_args"


def _args(model) -> dict:
    return {"channels": model.proj.out_features, "k": model.mixers[0].k, "num_classes": model.head.out_features}


@dclszoo.hookimpl
def dclszoo_plugin_info():
    return {"name": "toyhub", "version": "0.3.0", "supports": ["toyzoo: ToyNet (Hub round trip)"]}


@dclszoo.hookimpl
def dclszoo_patch(model, config, filter_fn):
    import toyzoo

    if not isinstance(model, toyzoo.ToyNet) or not isinstance(config, dclszoo.DclsConfig):
        return None
    model.__dict__[ARGS] = _args(model)  # the mixers' size is gone once they are DCLS convolutions

    def make(module, fqn):
        if not isinstance(module, toyzoo.ToyMixer):
            return None
        c, k = module.filt.shape[0], module.k
        dense = nn.Conv2d(c, c, k, padding=k // 2, groups=c, bias=False)
        with torch.no_grad():
            dense.weight.copy_(module.filt)
        return dclszoo.DclsConv2d.from_dense(dense, kernel_count=config.kernel_count, span=config.span,
                                             interpolation=config.interpolation)

    return dclszoo.replace_modules(model, make, filter_fn, plugin="toyhub")


@dclszoo.hookimpl
def dclszoo_describe_model(model):
    import toyzoo

    if not isinstance(model, toyzoo.ToyNet):
        return None
    return {"architecture": "ToyNet", "model_args": model.__dict__.get(ARGS) or _args(model), "tags": ["toy"]}


@dclszoo.hookimpl
def dclszoo_build_model(spec, pretrained):
    import toyzoo

    if spec["architecture"] != "ToyNet" or pretrained:
        return None
    return toyzoo.ToyNet(**spec["model_args"])
