"""``MelSpectrogram``: a log-mel front end in plain torch, computed on the model's device.

On-the-fly spectrograms on the accelerator (the argument of nnAudio, Cheuk et al. 2020) keep the data pipeline a
waveform pipeline and let the front end move with the model. This one is ``torch.stft`` (Hann window, centred,
reflect padding) -> power -> triangular mel filterbank (HTK mel scale, unnormalised filters: torchaudio's
``MelSpectrogram`` defaults) -> ``log(mel + log_offset)`` -> ``(x - mean) / std``. No torchaudio needed; the tests
compare it with torchaudio where torchaudio imports. It always computes in float32 (autocast is disabled inside).

The window and the filterbank are persistent buffers: they are saved with the model, move with ``.to()``, and a
checkpoint made for other front-end settings fails to load with the buffer's name.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["MelSpectrogram", "mel_filterbank", "hz_to_mel", "mel_to_hz"]


def hz_to_mel(freq: torch.Tensor | float) -> torch.Tensor:
    """HTK mel scale: ``2595 * log10(1 + f / 700)``."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(freq, dtype=torch.float64) / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_freqs: int, sample_rate: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """Triangular filters ``[n_freqs, n_mels]``: filter ``m`` rises from mel point ``m`` to ``m + 1`` and falls to
    ``m + 2`` (``n_mels + 2`` points evenly spaced on the mel scale between ``f_min`` and ``f_max``)."""
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"f_min={f_min}, f_max={f_max}: expected 0 <= f_min < f_max <= sample_rate / 2.")
    freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)
    points = mel_to_hz(torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2,
                                      dtype=torch.float64))
    width = points[1:] - points[:-1]  # [n_mels + 1]
    offset = points[None, :] - freqs[:, None]  # [n_freqs, n_mels + 2]
    rising = -offset[:, :-2] / width[:-1]
    falling = offset[:, 2:] / width[1:]
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


class MelSpectrogram(nn.Module):
    """Waveform ``[B, T]`` (or ``[T]``) -> normalised log-mel spectrogram ``[B, 1, n_mels, frames]``.

    Args:
        sample_rate: Sampling rate of the input in Hz.
        n_fft: FFT size.
        hop_length: Hop between frames in samples.
        win_length: Hann window length (default ``n_fft``).
        n_mels: Mel bands.
        f_min, f_max: Frequency range of the filterbank (``f_max`` default: Nyquist).
        log_offset: Added to the mel power before the log.
        mean, std: Normalisation of the log-mel values.
    """

    def __init__(self, sample_rate: int = 16000, n_fft: int = 400, hop_length: int = 160,
                 win_length: int | None = None, n_mels: int = 64, f_min: float = 0.0, f_max: float | None = None,
                 log_offset: float = 1e-6, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        win_length = n_fft if win_length is None else win_length
        for name, value in (("sample_rate", sample_rate), ("n_fft", n_fft), ("hop_length", hop_length),
                            ("win_length", win_length), ("n_mels", n_mels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"MelSpectrogram.{name}={value!r}: expected a positive int.")
        if win_length > n_fft:
            raise ValueError(f"MelSpectrogram.win_length={win_length} > n_fft={n_fft}.")
        if not (log_offset > 0 and std > 0 and math.isfinite(mean)):
            raise ValueError(f"MelSpectrogram: log_offset={log_offset}, std={std} must be > 0, mean={mean} finite.")
        self.sample_rate, self.n_fft, self.hop_length, self.win_length = sample_rate, n_fft, hop_length, win_length
        self.n_mels, self.f_min, self.f_max = n_mels, float(f_min), f_max
        self.log_offset, self.mean, self.std = float(log_offset), float(mean), float(std)
        self.register_buffer("window", torch.empty(win_length))
        self.register_buffer("filterbank", torch.empty(n_fft // 2 + 1, n_mels))
        self.reset_buffers()

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """(Re)compute the window and the filterbank (a no-op on the meta device)."""
        if self.window.is_meta:
            return
        device = self.window.device
        self.window.copy_(torch.hann_window(self.win_length, periodic=True, device=device))
        self.filterbank.copy_(mel_filterbank(self.n_fft // 2 + 1, self.sample_rate, self.n_mels, self.f_min,
                                             self.f_max).to(device))

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for ``num_samples`` samples (centred STFT)."""
        return num_samples // self.hop_length + 1

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() == 1:
            waveform = waveform[None]
        if waveform.dim() != 2:
            raise ValueError(f"MelSpectrogram: waveform of shape {tuple(waveform.shape)}; expected [batch, samples].")
        device_type = waveform.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            spec = torch.stft(waveform.float(), self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                              window=self.window.float(), center=True, pad_mode="reflect", return_complex=True)
            power = spec.real.square() + spec.imag.square()  # [B, n_freqs, frames]
            mel = torch.matmul(power.transpose(1, 2), self.filterbank.float()).transpose(1, 2)  # [B, n_mels, frames]
            out = (torch.log(mel + self.log_offset) - self.mean) / self.std
        return out[:, None]

    def extra_repr(self) -> str:
        return (f"sample_rate={self.sample_rate}, n_fft={self.n_fft}, hop_length={self.hop_length}, "
                f"win_length={self.win_length}, n_mels={self.n_mels}")
