"""The melody world's programmatic rewards: the judge's prompt adherence and the simulated tastes.

Each is a function of ``(prompt, audio bytes of the candidates)`` returning one float per candidate, higher
is better; ``SPEC.rewards`` offers them by name. They measure the audio (:mod:`.judge`), never the tokens a
clip was made from, so they score MusicGen's clips and imported recordings too. The tastes come in opposing
pairs, each the negative of the other:

- stepwise / leaping: the mean size of the steps between consecutive notes (semitones);
- consonant / tense: the share of out-of-key notes and dissonant leaps;
- staccato / legato: how much of each note's time it sounds;
- bright / dark: the spectral centroid (log Hz).
"""
from __future__ import annotations

import math
from typing import Sequence

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
