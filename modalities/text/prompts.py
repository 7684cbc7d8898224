"""The prompt a text model saw, for exports: tokenizers only, loaded once per model."""
from __future__ import annotations

import random
import re
from typing import Any, Sequence

from .adapter import ModelLoadError, render_prompt, resolve_model


class TokenizerPrompts:
    """Renders stored prompts with each answering model's own chat template (the
    :class:`storage.trl.PromptRenderer` a TRL export asks for). Loads tokenizers only."""

    def __init__(self) -> None:
        self._tokenizers: dict[str, Any] = {}

    def _tokenizer(self, model: str):
        if model not in self._tokenizers:
            from transformers import AutoTokenizer

            _, folder = resolve_model(model)
            try:
                self._tokenizers[model] = AutoTokenizer.from_pretrained(str(folder) if folder else model)
            except Exception as e:
                raise ModelLoadError(
                    f"cannot load the tokenizer of {model!r} to write its prompts as it saw them "
                    f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); export with "
                    "--prompt-style conversational instead (TRL then applies the chat template itself)"
                ) from None
        return self._tokenizers[model]

    def has_chat_template(self, model: str) -> bool:
        return bool(getattr(self._tokenizer(model), "chat_template", None))

    def render(self, model: str, prompt: str) -> str:
        return render_prompt(self._tokenizer(model), prompt)


def variations(prompts: Sequence[str], n: int, seed: int = 0) -> list[str]:
    """``n`` new prompts for each prompt of ``prompts`` that holds numbers: the same words with every number
    replaced by another of as many digits (an arithmetic question stays one, with other values); none of
    them already in ``prompts``. Prompts without numbers have none."""
    rng = random.Random(seed)
    seen, out = set(prompts), []
    number = re.compile(r"\d+")
    for prompt in prompts:
        if not number.search(prompt):
            continue
        made = 0
        for _ in range(50 * n):
            if made == n:
                break
            text = number.sub(lambda m: str(rng.randrange(10 ** (len(m[0]) - 1) if len(m[0]) > 1 else 0,
                                                          10 ** len(m[0]))), prompt)
            if text not in seen:
                seen.add(text)
                out.append(text)
                made += 1
    return out
