"""The shapes world's programmatic rewards: the judge's prompt adherence and the simulated tastes.

Each is a function of ``(prompt, PNG bytes of the candidates)`` returning one float per candidate,
higher is better; ``SPEC.rewards`` offers them by name (``alignment.rewards`` wraps them next to the
reward models learned from judgments, so benchmarks and AI feedback score through the same path).
"""
from __future__ import annotations

import io
from typing import Sequence

from PIL import Image

from . import shapes


def _images(media: Sequence[bytes]) -> list[Image.Image]:
    return [Image.open(io.BytesIO(m)).convert("RGB") for m in media]


def adherence(prompt: str, media: Sequence[bytes]) -> list[float]:
    """Share of the prompt's attributes (colour, shape, count, size, background, position) the judge
    finds in each image."""
    if shapes.parse_prompt(prompt) is None:
        raise ValueError(f"the shapes judge scores shapes-world prompts only (like 'two small red circles on "
                         f"a blue background'); got {prompt!r}")
    judge = shapes.Judge()
    return [judge(img, prompt).fraction for img in _images(media)]


def _taste(name: str):
    taste = shapes.TASTES[name]

    def score(prompt: str, media: Sequence[bytes]) -> list[float]:
        return [taste.score(img) / taste.scale for img in _images(media)]

    score.__doc__ = f"The simulated user who {taste.description}, in units of a clear preference."
    return score


saturated = _taste("saturated")
centered = _taste("centered")
large = _taste("large")
clean = _taste("clean")
muted = _taste("muted")
small = _taste("small")
