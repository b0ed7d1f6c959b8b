"""DCLS and delay modules."""

from .dcls_conv import DclsConv1d, DclsConv2d, DclsConv3d, DclsConvNd

__all__ = ["DclsConv1d", "DclsConv2d", "DclsConv3d", "DclsConvNd"]
