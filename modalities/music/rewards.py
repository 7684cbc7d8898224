"""The melody world's programmatic rewards: the judge's prompt adherence and the simulated tastes.

Each is a function of ``(prompt, audio bytes of the candidates)`` returning one float per candidate, higher
is better; ``SPEC.rewards`` offers them by name. They measure the audio (:mod:`.judge`), never the tokens a
clip was made from, so they score MusicGen's clips and imported recordings too. The tastes come in opposing
pairs, each the negative of the other:

- stepwise / leaping: the mean size of the steps between consecutive notes (semitones);
- consonant / tense: the share of out-of-key notes and dissonant leaps;
- staccato / legato: how much of each note's time it sounds;
- bright / dark: the spectral centroid (log Hz).

``quality`` is not the world's: a signal-level quality measure of any clip (silence, clipping, noise), the
designed stand-in for MusicRL's learned quality model.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from . import judge, wav


def _analyses(media: Sequence[bytes]) -> list[judge.Analysis]:
    out = []
    for m in media:
        audio, rate = wav.decode(m, allow_silent=True)  # a model may write an empty melody: the worst score
        out.append(judge.analyze(audio, rate))
    return out


def adherence(prompt: str, media: Sequence[bytes]) -> list[float]:
    """Share of the prompt's stated attributes (key, tempo, instrument, register, contour) the judge hears."""
    if judge.world.parse_prompt(prompt) is None:
        raise ValueError("the melody judge scores melody-world prompts only (like 'a slow sad melody in A minor on "
                         f"a harp, descending'); got {prompt!r}")
    return [float(judge.adherence(prompt, a)) for a in _analyses(media)]


def _feature(media: Sequence[bytes], name: str, sign: float, missing: float) -> list[float]:
    values = []
    for a in _analyses(media):
        v = getattr(a, name)
        values.append(sign * (v if v is not None else missing))
    return values


def stepwise(prompt: str, media: Sequence[bytes]) -> list[float]:
    return _feature(media, "mean_interval", -1.0, 12.0)


def leaping(prompt: str, media: Sequence[bytes]) -> list[float]:
    return _feature(media, "mean_interval", 1.0, 0.0)


def consonant(prompt: str, media: Sequence[bytes]) -> list[float]:
    return _feature(media, "tension", -1.0, 1.0)


def tense(prompt: str, media: Sequence[bytes]) -> list[float]:
    return _feature(media, "tension", 1.0, 0.0)


def staccato(prompt: str, media: Sequence[bytes]) -> list[float]:
    return _feature(media, "sounding", -1.0, 1.0)


def legato(prompt: str, media: Sequence[bytes]) -> list[float]:
    return _feature(media, "sounding", 1.0, 0.0)


def bright(prompt: str, media: Sequence[bytes]) -> list[float]:
    return [math.log(max(a.centroid_hz, 1.0)) for a in _analyses(media)]


def dark(prompt: str, media: Sequence[bytes]) -> list[float]:
    return [-math.log(a.centroid_hz) if a.centroid_hz > 1.0 else -20.0 for a in _analyses(media)]  # silence: worst


SILENT_DB = -50.0  # a frame quieter than this (RMS, dBFS) is silence


def clip_quality(audio: np.ndarray, rate: int) -> float:
    """Signal quality of a mono clip in [0, 1]: 1 minus penalties for silence (0.35, for the share of silent
    frames beyond the 20% that rests and a tail take), clipping (0.25, full at 1% of samples clipped) and
    noise (0.4, the mean spectral flatness of the sounding frames, full at 0.5: about 0 for tones, 0.5 and
    more for broadband noise). Silence scores 0."""
    import librosa

    a = np.asarray(audio, dtype=np.float32)
    if a.size < 2048 or float(np.max(np.abs(a))) < 1e-4:
        return 0.0
    frame, hop = 2048, 512
    rms = librosa.feature.rms(y=a, frame_length=frame, hop_length=hop)[0]
    sounding = 20 * np.log10(np.maximum(rms, 1e-10)) > SILENT_DB
    silent_share = 1.0 - float(sounding.mean())
    clipped_share = float(np.mean(np.abs(a) >= 0.999))
    flat = librosa.feature.spectral_flatness(y=a, n_fft=frame, hop_length=hop)[0]
    noise = float(np.mean(flat[sounding[: len(flat)]])) if sounding.any() else 1.0
    score = (1.0 - 0.35 * max(0.0, silent_share - 0.2) / 0.8 - 0.25 * min(1.0, clipped_share * 100)
             - 0.4 * min(1.0, 2 * noise))
    return float(max(0.0, score))


def quality(prompt: str, media: Sequence[bytes]) -> list[float]:
    """:func:`clip_quality` of each candidate (any audio; the prompt is not read)."""
    out = []
    for m in media:
        audio, rate = wav.decode(m, allow_silent=True)
        out.append(clip_quality(audio, rate))
    return out
