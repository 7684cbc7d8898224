"""How a prompt that is a whole conversation is stored as prompt text.

Most prompts are one user message and are stored as its plain text. A prompt
imported from a chat dataset may be more: a system message, earlier turns. Such
a prompt is stored as the JSON list of its messages, ``[{"role": ..., "content":
...}, ...]`` (content as text), so the text modality can give the model exactly
that conversation through its chat template, and exports can write it back.

This module is the one place that knows the encoding: :func:`encode` writes it,
:func:`messages` reads any prompt text as messages (a plain prompt is one user
message).
"""
from __future__ import annotations

import json
from typing import Any

ROLES = ("system", "user", "assistant", "tool", "developer")


def encode(msgs: list[dict[str, str]]) -> str:
    """Prompt text for ``msgs``: the plain text of a lone user message, else their JSON list."""
    msgs = [_check_message(m, i) for i, m in enumerate(msgs)]
    if not msgs:
        raise ValueError("a conversation prompt needs at least one message")
    if len(msgs) == 1 and msgs[0]["role"] == "user":
        return msgs[0]["content"]
    return json.dumps(msgs, ensure_ascii=False)


def decode(text: str) -> list[dict[str, str]] | None:
    """The messages of a conversation prompt, or None for a plain prompt."""
    if not text.startswith("[{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, list) or not value:
        return None
    try:
        return [_check_message(m, i) for i, m in enumerate(value)]
    except ValueError:
        return None


def messages(text: str) -> list[dict[str, str]]:
    """Any prompt text as chat messages (a plain prompt is one user message)."""
    return decode(text) or [{"role": "user", "content": text}]


def is_conversation(text: str) -> bool:
    return decode(text) is not None


def _check_message(m: Any, i: int) -> dict[str, str]:
    if not isinstance(m, dict) or set(m) - {"role", "content"} or not isinstance(m.get("role"), str):
        raise ValueError(f"message {i} must be {{'role': ..., 'content': ...}}, got {m!r:.80}")
    if m["role"] not in ROLES:
        raise ValueError(f"message {i} has role {m['role']!r}; roles are {', '.join(ROLES)}")
    if not isinstance(m.get("content"), str):
        raise ValueError(f"message {i}: content must be text")
    return {"role": m["role"], "content": m["content"]}
