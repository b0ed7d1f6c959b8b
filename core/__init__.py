"""dclszoo: Dilated Convolution with Learnable Spacings and learnable delays for the model zoos.

``import dclszoo`` imports none of triton, timm, transformers or spikingjelly; plugins import them when used.
"""

from . import functional
from .modules import DclsConv1d, DclsConv2d, DclsConv3d, DclsConvNd
from .version import __version__

__all__ = [
    "__version__",
    "functional",
    "DclsConv1d",
    "DclsConv2d",
    "DclsConv3d",
    "DclsConvNd",
]
