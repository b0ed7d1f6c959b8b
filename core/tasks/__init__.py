"""Synthetic tasks: learnable delays (:class:`TimingTask`) and audio classification (:class:`AudioEventTask`)."""

from .audio import AUDIO_EVENT_CLASSES, AudioEventTask, tiny_wav2vec2_checkpoint
from .timing import TimingTask

__all__ = ["TimingTask", "AudioEventTask", "AUDIO_EVENT_CLASSES", "tiny_wav2vec2_checkpoint"]
