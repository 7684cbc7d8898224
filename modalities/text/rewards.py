"""The arithmetic world's programmatic rewards: a right final answer, and brevity.

Each is a function of ``(prompt, UTF-8 answers)`` returning one float per answer, higher is better.
"""
from __future__ import annotations

import re
from typing import Sequence

from . import arithmetic

_EXPRESSION = re.compile(r"(?:Q:\s*)?What is (.+?)\?\s*(?:A:)?\s*", re.S)


def _answer_of(prompt: str) -> int:
    m = _EXPRESSION.fullmatch(prompt.strip())
    value = arithmetic.evaluate(m.group(1).strip()) if m else None
    if value is None:
        raise ValueError(f"the arithmetic judge knows the answer of expression prompts only (like 'What is "
                         f"12 + 7 * 4?'); got {prompt!r}")
    return value


def correct(prompt: str, media: Sequence[bytes]) -> list[float]:
    """1 for an answer whose last "Answer: N" line is right, else 0."""
    expected = _answer_of(prompt)
    return [float(arithmetic.parse_answer(m.decode("utf-8", errors="replace")) == expected) for m in media]


def brief(prompt: str, media: Sequence[bytes]) -> list[float]:
    """Minus the answer's length in words (a reader who likes short reasoning)."""
    return [-float(arithmetic.count_tokens(m.decode("utf-8", errors="replace"))) for m in media]
