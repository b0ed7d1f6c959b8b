"""Checkpoint and module converters: the reference ``dcls`` package and SNN-delays into dclszoo."""

from ._dcls import from_dcls

__all__ = ["from_dcls"]
