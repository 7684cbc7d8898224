"""The moving-shapes world's programmatic rewards: the judge per dimension and the simulated tastes.

Each is a function of ``(prompt, MP4 bytes of the candidates)`` returning one float per candidate, higher
is better; ``SPEC.rewards`` offers them by name. They read the decoded pixels (:mod:`.moving`), so they
score any model's clips. The tastes come in opposing pairs, each the negative of the other: smooth /
jerky (how much the steps of the shapes' track vary), slow / fast (the median step), centred / roaming
(how far from the middle the shapes travel).
"""
from __future__ import annotations

from typing import Sequence

from . import moving, mp4


def _clips(media: Sequence[bytes]):
    return [mp4.decode(m)[0] for m in media]


def _judge(prompt: str, media: Sequence[bytes], dimension: str) -> list[float]:
    if moving.parse_prompt(prompt) is None:
        raise ValueError("the moving-shapes judge scores its world's prompts only (like 'a red circle moving quickly "
                         f"to the left on a white background'); got {prompt!r}")
    return [moving.judge(prompt, c)[dimension] for c in _clips(media)]


def visual(prompt: str, media: Sequence[bytes]) -> list[float]:
    return _judge(prompt, media, "visual")


def motion(prompt: str, media: Sequence[bytes]) -> list[float]:
    return _judge(prompt, media, "motion")


def text(prompt: str, media: Sequence[bytes]) -> list[float]:
    return _judge(prompt, media, "text")


def _taste(name: str):
    def score(prompt: str, media: Sequence[bytes]) -> list[float]:
        return moving.taste(name, _clips(media))

    score.__name__ = name
    return score


smooth, jerky, slow, fast, centred, roaming = (_taste(n) for n in ("smooth", "jerky", "slow", "fast", "centred",
                                                                     "roaming"))
