"""Text modality: any Hugging Face causal language model (reasoning answers to prompts).

``SPEC`` is what the rest of Palate knows about text answers (imported without torch); the model
code is ``modalities.text.adapter.TextAdapter``.
"""
from typing import Any, Mapping

from ..spec import ModalitySpec, Reward, Setting


def _tokens(params: Mapping[str, Any]) -> str:
    n = params.get("response_tokens")
    return f"{n} tokens" if n is not None else ""


SPEC = ModalitySpec(
    name="text",
    adapter="modalities.text.adapter:TextAdapter",
    label="Text answers",
    media="text/",
    display="text",
    score_kinds=("autoregressive",),
    export_formats=("peft", "merged"),
    default_model="arith-reasoner",
    prompt_placeholder="Tom has 3 apples and buys 4 more. How many apples does he have?",
    caption=_tokens,
    settings=(
        Setting("temperature", float, "sampling temperature (0 = greedy; default: the model's, else 0.7)",
                min=0.0, max=10.0),
        Setting("top_p", float, "nucleus sampling mass (default: the model's, else 0.95)", min=0.0, max=1.0),
        Setting("max_tokens", int, "longest answer in tokens (default: the model's generation_config.json, else 256)",
                min=1, max=4096),
    ),
    load_options=(Setting("trust_remote_code", bool, "run code a model ships with (auto_map); off unless you "
                          "have read that code", default=False),),
    variations="modalities.text.prompts:variations",
    rewards=(
        Reward("arith-correct", "the arithmetic world's judge: 1 for a right final answer (expression prompts)",
               "modalities.text.rewards:correct", dimension="prompt"),
        Reward("brief", "a reader who likes short answers: minus the length in words",
               "modalities.text.rewards:brief"),
    ),
)
