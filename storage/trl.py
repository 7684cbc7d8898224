"""TRL's preference dataset shapes: writing rows, and reading every documented shape.

TRL (``trl.data_utils``, the "Dataset formats" guide) documents preference rows as

- standard, explicit prompt:       ``{"prompt": str, "chosen": str, "rejected": str}``
- standard, implicit prompt:       ``{"chosen": str, "rejected": str}`` (the prompt is their common prefix)
- conversational, explicit prompt: ``{"prompt": [messages], "chosen": [messages], "rejected": [messages]}``
- conversational, implicit prompt: ``{"chosen": [messages], "rejected": [messages]}`` (the shared leading turns)

where messages may include a system message and several turns, and a message's content may be a
string or a list of typed parts (``[{"type": "text", "text": ...}]``). Palate reads all of them:
the **last assistant turn is the answer and everything before it the prompt** (a lone user message
is stored as plain prompt text; anything longer as a conversation, see :mod:`storage.conversation`).

Palate writes, per ``prompt_style``:

- ``conversational``: prompt as messages, chosen/rejected as one assistant message each. TRL renders
  them with the model's own chat template, so a TRL run sees exactly the prompt the model saw when
  the answers were sampled;
- ``templated``: the standard shape with the prompt already rendered by the model's chat template
  (for tokenizers without one, the prompt as it is -- which is what such a model was given).
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

from . import conversation

PROMPT_STYLES: tuple[str, ...] = ("auto", "conversational", "templated")


class PromptRenderer(Protocol):
    """What a TRL export needs to know about the models whose answers it writes."""

    def has_chat_template(self, model: str) -> bool: ...

    def render(self, model: str, prompt: str) -> str: ...


def schema(style: str):
    import pyarrow as pa

    if style == "conversational":
        messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
        text_fields = [("prompt", messages), ("chosen", messages), ("rejected", messages)]
    else:
        text_fields = [("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string())]
    return pa.schema(
        text_fields
        + [
            ("label", pa.float64()),
            ("model_chosen", pa.string()),
            ("model_rejected", pa.string()),
            ("seed_chosen", pa.int64()),
            ("seed_rejected", pa.int64()),
            ("params_chosen", pa.string()),
            ("params_rejected", pa.string()),
            ("annotator", pa.string()),
            ("annotator_kind", pa.string()),
            ("created_at", pa.string()),
        ]
    )


def text_fields(style: str, prompt: str, chosen: str, rejected: str, model: str,
                render: Callable[[str, str], str] | None) -> dict[str, Any]:
    """``prompt``/``chosen``/``rejected`` of one row in ``style`` (the prompt as stored, see
    :mod:`storage.conversation`; ``model`` is the model that answered)."""
    if style == "conversational":
        return {"prompt": conversation.messages(prompt),
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}]}
    if render is None:
        raise ValueError("a templated TRL export needs the models' tokenizers to render the prompts")
    return {"prompt": render(model, prompt), "chosen": chosen, "rejected": rejected}


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for part in value:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(f"{where} holds a {kind!r} part; Palate's text modality holds text only")
        return "".join(texts)
    raise ValueError(f"{where}: content must be text or a list of text parts, got {type(value).__name__}")


def _messages(value: Any, what: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        raise ValueError(f"{what} must be a string or a non-empty list of chat messages")
    out = []
    for i, m in enumerate(value):
        role = m.get("role")
        if not isinstance(role, str) or role not in conversation.ROLES:
            raise ValueError(f"{what}, message {i}: role {role!r} is not one of {', '.join(conversation.ROLES)}")
        out.append({"role": role, "content": _content(m.get("content"), f"{what}, message {i}")})
    return out


def _common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return a[:n]


def parse(row: dict[str, Any]) -> tuple[str, str, str]:
    """(prompt text as stored, chosen answer, rejected answer) from a row of any documented shape."""
    for key in ("chosen", "rejected"):
        if key not in row or row[key] is None:
            raise ValueError(f"missing field {key!r} (TRL preference rows need chosen and rejected)")
    chosen, rejected, prompt = row["chosen"], row["rejected"], row.get("prompt")
    if isinstance(chosen, str) and isinstance(rejected, str):
        if prompt is None:  # standard, implicit prompt: the common prefix, as trl.extract_prompt does
            prefix = _common_prefix(chosen, rejected)
            if not prefix.strip():
                raise ValueError("no prompt: the row has no 'prompt' and chosen/rejected share no leading text")
            return prefix, chosen[len(prefix):], rejected[len(prefix):]
        if isinstance(prompt, str):
            return prompt, chosen, rejected
        # a conversational prompt with plain-text answers
        return _from_turns(_messages(prompt, "prompt"), [{"role": "assistant", "content": chosen}],
                           [{"role": "assistant", "content": rejected}])
    if isinstance(chosen, str) or isinstance(rejected, str):
        raise ValueError("chosen and rejected must both be text or both be chat messages")
    c, r = _messages(chosen, "chosen"), _messages(rejected, "rejected")
    if prompt is None:  # conversational, implicit prompt: the leading turns both share
        n = 0
        while n < min(len(c), len(r)) - 1 and c[n] == r[n]:
            n += 1
        return _from_turns(c[:n], c[n:], r[n:])
    p = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else _messages(prompt, "prompt")
    return _from_turns(p, c, r)


def _from_turns(prompt: list[dict[str, str]], chosen: list[dict[str, str]],
                rejected: list[dict[str, str]]) -> tuple[str, str, str]:
    """The last assistant turn of each side is its answer; everything before it (the same on both
    sides) is the prompt."""
    full_c, full_r = prompt + chosen, prompt + rejected
    for name, full in (("chosen", full_c), ("rejected", full_r)):
        if full[-1]["role"] != "assistant":
            raise ValueError(f"{name} must end with an assistant message (the answer), not {full[-1]['role']!r}")
    if full_c[:-1] != full_r[:-1]:
        raise ValueError("chosen and rejected continue different conversations; only the last assistant turn "
                         "may differ")
    context = full_c[:-1]
    if not context:
        raise ValueError("no prompt: the conversation has nothing before the answer")
    if not any(m["role"] == "user" for m in context):
        raise ValueError("the prompt has no user message")
    return conversation.encode(context), full_c[-1]["content"], full_r[-1]["content"]
