"""MusicGen-Melody's melody conditioning: the dominant pitch class of each frame of a reference tune.

transformers' ``MusicgenMelodyFeatureExtractor`` computes it with torchaudio, which has no usable CPU build
here; this is the same computation in torch: the power spectrogram (Hann window of ``n_fft``, centred,
normalised by the window's energy, as ``torchaudio.transforms.Spectrogram(normalized=True)``), transformers'
own chroma filter bank, each frame's chroma scaled to its maximum, then one-hot at its argmax. Settings
(``sampling_rate``, ``n_fft``, ``hop_length``, ``chunk_length``) come from the checkpoint's
``preprocessor_config.json``. Resampling uses librosa's (soxr) instead of torchaudio's sinc filter, and no
Demucs stem separation runs (the extractor skips it too for plain audio): the model hears the whole mix.

A melody is stored as its argmax indices (one small int per frame); :func:`frames` lays them out over
``chroma_length`` frames exactly as the model's forward and ``generate`` would pad (repeat) or cut them, and
:func:`one_hot` makes the ``input_features``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import wav


@dataclass(frozen=True)
class ChromaSettings:
    sampling_rate: int = 32000
    n_fft: int = 16384
    hop_length: int = 4096
    chunk_length: int = 30  # seconds of the tune that are read
    num_chroma: int = 12

    @classmethod
    def of(cls, saved: dict[str, Any] | None, num_chroma: int) -> "ChromaSettings":
        saved = saved or {}
        keys = ("sampling_rate", "n_fft", "hop_length", "chunk_length")
        return cls(**{k: int(saved[k]) for k in keys if isinstance(saved.get(k), (int, float))}, num_chroma=num_chroma)


def melody_indices(data: bytes, settings: ChromaSettings) -> list[int]:
    """The dominant chroma bin of each frame of an audio file (its first ``chunk_length`` seconds).
    Raises ValueError for a file that is not audio or is silent."""
    try:
        audio, rate = wav.decode(data)
    except ValueError as e:
        raise ValueError(f"the melody file is not usable audio: {e}") from None
    audio = audio[: settings.chunk_length * rate]  # the part that is read, before resampling
    if rate != settings.sampling_rate:
        import librosa

        audio = librosa.resample(audio, orig_sr=rate, target_sr=settings.sampling_rate)
    x = torch.from_numpy(np.ascontiguousarray(audio[: settings.chunk_length * settings.sampling_rate], np.float32))
    if x.numel() < settings.n_fft:  # as the extractor: pad a short tune to one window, centred
        pad = settings.n_fft - x.numel()
        x = torch.nn.functional.pad(x, (pad // 2, pad - pad // 2))
    window = torch.hann_window(settings.n_fft)
    spec = torch.stft(x, settings.n_fft, hop_length=settings.hop_length, window=window, center=True,
                      pad_mode="reflect", return_complex=True).abs().pow(2) / window.pow(2).sum()
    from transformers.audio_utils import chroma_filter_bank

    bank = torch.from_numpy(chroma_filter_bank(num_frequency_bins=settings.n_fft, num_chroma=settings.num_chroma,
                                               sampling_rate=settings.sampling_rate, tuning=0)).float()
    chroma = bank @ spec  # [chroma, frames]
    chroma = chroma / chroma.abs().amax(dim=0, keepdim=True).clamp_min(1e-6)
    return chroma.argmax(dim=0).tolist()


def frames(indices: list[int] | None, chroma_length: int) -> torch.Tensor:
    """A stored melody's bins [chroma_length], repeated or cut to the model's chroma length as it does;
    None (no melody) is the model's own null melody, bin 0."""
    idx = torch.tensor(indices if indices else [0], dtype=torch.long)
    return idx.repeat(-(-chroma_length // idx.numel()))[:chroma_length]


def one_hot(bins: torch.Tensor, num_chroma: int) -> torch.Tensor:
    """``input_features`` [..., frames, num_chroma] of chroma bins."""
    return torch.nn.functional.one_hot(bins.long(), num_chroma).float()
