"""DCLS and delay modules."""

from .dcls_conv import DclsConv1d, DclsConv2d, DclsConv3d, DclsConvNd
from .delay import DelayedLinear
from .delay_conv import DelayedConv1d, DelayedConv2d, DelayedConvNd

__all__ = ["DclsConv1d", "DclsConv2d", "DclsConv3d", "DclsConvNd", "DelayedLinear", "DelayedConv1d", "DelayedConv2d", "DelayedConvNd"]
