"""dclszoo: Dilated Convolution with Learnable Spacings and learnable delays for the model zoos.

``import dclszoo`` imports none of triton, timm, transformers or spikingjelly, and loads no plugin; plugins
are loaded by :func:`enable` (called automatically by the first :func:`patch`).
"""

from . import functional
from .functional import empty_cache
from ._plugins import PluginInfo, PluginLoadError, PluginValidationError, enable, register_plugin
from .api import is_patched, patch, to_dense, unpatch
from .config import DclsConfig, DelayConfig, config_from_dict
from .hookspecs import hookimpl
from . import hub, training
from .hub import CheckpointError, from_pretrained, push_to_hub, save_pretrained
from .modules import DclsConv1d, DclsConv2d, DclsConv3d, DclsConvNd, DelayedConv1d, DelayedConv2d, DelayedLinear
from .patching import replace_modules
from .report import PatchReport, ReplacedModule
from .version import __version__

# The sub-package dclszoo.plugins is callable and *is* the API function dclszoo.plugins() (see its docstring).
from . import plugins  # noqa: E402  (must come after the imports above)

__all__ = [
    "__version__",
    "functional",
    "empty_cache",
    # modules
    "DclsConv1d",
    "DclsConv2d",
    "DclsConv3d",
    "DclsConvNd",
    "DelayedLinear",
    "DelayedConv1d",
    "DelayedConv2d",
    # configs and patching
    "DclsConfig",
    "DelayConfig",
    "config_from_dict",
    "patch",
    "unpatch",
    "to_dense",
    "is_patched",
    "PatchReport",
    "ReplacedModule",
    "replace_modules",
    # saving and loading (dclszoo.hub)
    "hub",
    "save_pretrained",
    "push_to_hub",
    "from_pretrained",
    "CheckpointError",
    "training",
    # plugins
    "enable",
    "plugins",
    "register_plugin",
    "hookimpl",
    "PluginInfo",
    "PluginLoadError",
    "PluginValidationError",
]
