"""A small synthetic audio classification task, generated offline: tones, chirps, noise bursts, double beeps.

Each sample is ``duration`` seconds of background noise with one event at a random onset, random length, random
level and (for the tonal classes) a random frequency:

- ``tone``: a steady sine;
- ``chirp_up`` / ``chirp_down``: a linear frequency sweep up / down (the same frequency range as the tones, so
  the classes differ by their time-frequency *shape*, not by the band they occupy);
- ``noise_burst``: white noise;
- ``double_beep``: two short sines separated by a silent gap (a class defined by timing).

Events get 5 ms raised-cosine fades, so no class is given away by clicks. It is meant for examples and tests of the
audio plugin (``examples/finetune_audio.py``): a few hundred samples train a small model in minutes on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["AudioEventTask", "AUDIO_EVENT_CLASSES", "tiny_wav2vec2_checkpoint"]

AUDIO_EVENT_CLASSES = ("tone", "chirp_up", "chirp_down", "noise_burst", "double_beep")


@dataclass
class AudioEventTask:
    """Generator of the task (see the module docstring).

    Attributes:
        sample_rate: Samples per second.
        duration: Clip length in seconds.
        min_event, max_event: Event length range in seconds.
        f_min, f_max: Frequency range of tones and chirps (Hz); chirps sweep at least half an octave.
        noise: Standard deviation of the background noise (events peak between 0.3 and 1.0).
        classes: Number of classes, the first ``classes`` of :data:`AUDIO_EVENT_CLASSES` (2 to 5).
    """

    sample_rate: int = 16000
    duration: float = 0.5
    min_event: float = 0.12
    max_event: float = 0.3
    f_min: float = 300.0
    f_max: float = 3000.0
    noise: float = 0.05
    classes: int = 5

    def __post_init__(self) -> None:
        if not isinstance(self.sample_rate, int) or isinstance(self.sample_rate, bool) or self.sample_rate < 1000:
            raise ValueError(f"AudioEventTask.sample_rate={self.sample_rate!r}: expected an int >= 1000 (Hz).")
        if not 0 < self.min_event <= self.max_event <= self.duration:
            raise ValueError(
                f"AudioEventTask: min_event={self.min_event}, max_event={self.max_event}, duration={self.duration}; "
                f"expected 0 < min_event <= max_event <= duration."
            )
        if not 0 < self.f_min < self.f_max / math.sqrt(2) or self.f_max >= self.sample_rate / 2:
            raise ValueError(
                f"AudioEventTask: f_min={self.f_min}, f_max={self.f_max}; expected 0 < f_min < f_max / sqrt(2) and "
                f"f_max < sample_rate / 2 = {self.sample_rate / 2}."
            )
        if not 0 <= self.noise < 1:
            raise ValueError(f"AudioEventTask.noise={self.noise!r}: expected a standard deviation in [0, 1).")
        if not isinstance(self.classes, int) or not 2 <= self.classes <= len(AUDIO_EVENT_CLASSES):
            raise ValueError(
                f"AudioEventTask.classes={self.classes!r}: expected an int in [2, {len(AUDIO_EVENT_CLASSES)}].")

    @property
    def num_samples(self) -> int:
        """Samples per clip."""
        return int(round(self.duration * self.sample_rate))

    @property
    def id2label(self) -> dict[int, str]:
        """Class index -> name (for ``config.id2label``)."""
        return dict(enumerate(AUDIO_EVENT_CLASSES[: self.classes]))

    @property
    def label2id(self) -> dict[str, int]:
        """Class name -> index (for ``config.label2id``)."""
        return {name: i for i, name in self.id2label.items()}

    def sample(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` clips.

        Returns:
            ``(waveforms [n, num_samples] float32, labels [n] int64)``; labels balanced up to rounding, shuffled.
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r}: expected a positive int.")
        g = torch.Generator().manual_seed(seed)
        sr, length = self.sample_rate, self.num_samples
        labels = torch.arange(n) % self.classes
        labels = labels[torch.randperm(n, generator=g)]

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(n, 1, generator=g, dtype=torch.float64)

        event = uniform(self.min_event, self.max_event)
        onset = uniform(0.0, 1.0) * (self.duration - event)
        level = uniform(0.3, 1.0)
        log_lo, log_hi = math.log(self.f_min), math.log(self.f_max)
        f0 = torch.exp(uniform(log_lo, log_hi))
        # chirp end frequency: at least half an octave away, inside [f_min, f_max]
        up_room = torch.clamp(torch.log(self.f_max / f0) / math.log(2), min=0.5)
        f_up = torch.minimum(f0 * 2 ** (0.5 + (up_room - 0.5) * torch.rand(n, 1, generator=g, dtype=torch.float64)),
                             torch.full_like(f0, self.f_max))
        f_start_up = torch.minimum(f0, f_up / math.sqrt(2))
        t = torch.arange(length, dtype=torch.float64)[None] / sr  # [1, L]
        local = t - onset  # time since the onset
        inside = (local >= 0) & (local < event)

        tone = torch.sin(2 * math.pi * f0 * local)
        sweep = (f_up - f_start_up) / event  # Hz per second
        chirp_up = torch.sin(2 * math.pi * (f_start_up * local + 0.5 * sweep * local ** 2))
        chirp_down = torch.sin(2 * math.pi * (f_up * local - 0.5 * sweep * local ** 2))
        burst = torch.randn(n, length, generator=g, dtype=torch.float64).clamp(-3, 3) * math.sqrt(0.5)  # sine RMS
        third = event / 3
        beeps = (local < third) | (local >= 2 * third)
        waves = torch.stack([tone, chirp_up, chirp_down, burst, tone * beeps])[: self.classes]  # [C, n, L]
        signal = waves[labels, torch.arange(n)]

        fade = 0.005
        envelope = torch.clamp(torch.minimum(local, event - local) / fade, 0, 1)
        is_beep = labels[:, None] == AUDIO_EVENT_CLASSES.index("double_beep")
        gap_edge = torch.clamp(torch.minimum((local - third).abs(), (local - 2 * third).abs()) / fade, 0, 1)
        envelope = torch.where(is_beep, envelope * gap_edge, envelope)
        envelope = 0.5 - 0.5 * torch.cos(math.pi * envelope)  # raised-cosine fades
        clip = level * signal * envelope * inside
        clip = clip + self.noise * torch.randn(n, length, generator=g, dtype=torch.float64)
        return clip.float(), labels


def tiny_wav2vec2_checkpoint(directory: str | Path, task: AudioEventTask) -> Path:
    """A small dense Wav2Vec2 classifier for ``task``, saved with ``save_pretrained`` into ``directory``: what a
    downloaded pretrained model looks like, for offline examples and recipes (freshly initialised from torch's
    global random state; seed it first for a reproducible checkpoint).

    Raises:
        ImportError: transformers is not installed (``pip install "dclszoo[audio]"``).
    """
    try:
        from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification
    except ImportError as exc:
        raise ImportError(f'tiny_wav2vec2_checkpoint needs transformers ({exc}); pip install "dclszoo[audio]"'
                          ) from None
    config = Wav2Vec2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        conv_dim=(32, 32, 32, 32), conv_stride=(5, 4, 4, 2), conv_kernel=(10, 8, 8, 4), conv_bias=True,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="layer",
        do_stable_layer_norm=True, mask_time_prob=0.0, num_labels=task.classes, id2label=task.id2label,
        label2id=task.label2id, classifier_proj_size=64)
    Wav2Vec2ForSequenceClassification(config).save_pretrained(directory)
    return Path(directory)
