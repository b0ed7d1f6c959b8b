"""Synthetic tasks for learnable delays."""

from .timing import TimingTask

__all__ = ["TimingTask"]
