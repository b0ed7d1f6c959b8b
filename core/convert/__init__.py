"""Checkpoint and module converters: the reference ``dcls`` package and SNN-delays into dclszoo."""

from ._dcls import from_dcls
from ._snn_delays import from_snn_delays

__all__ = ["from_dcls", "from_snn_delays"]
