"""Synthetic tasks: learnable delays (:class:`TimingTask`) and audio classification (:class:`AudioEventTask`)."""

from .audio import AUDIO_EVENT_CLASSES, AudioEventTask
from .timing import TimingTask

__all__ = ["TimingTask", "AudioEventTask", "AUDIO_EVENT_CLASSES"]
