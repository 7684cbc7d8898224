"""Exports of a language-model adapter, each loaded back by the tool people use and checked.

A trained text adapter is a PEFT folder. From it:

- ``peft``: the folder, with ``base_model_name_or_path`` set to the base model (so
  ``AutoPeftModelForCausalLM.from_pretrained(folder)`` finds it) and Palate's metadata in
  ``palate_adapter.json``; checked with plain ``PeftModel.from_pretrained(base, folder)``;
- ``merged``: the base model with the LoRA merged into its weights, saved with ``save_pretrained``
  (safetensors) together with its tokenizer and generation config -- a model folder any
  transformers-based tool loads with no peft at all; checked with ``AutoModelForCausalLM``.

The check compares next-token logits on a fixed probe against Palate's own model with the adapter
(``verify_export``), on the CPU in float32.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from .. import loading, lora

FORMATS = ("peft", "merged")
PROBE = "Q: Ann has 12 apples and buys 7 more. How many apples does she have?\nA:"


def export_adapter(adapter_dir: str | Path, out: str | Path, fmt: str, *, base_model: str,
                   metadata: dict[str, Any], adapter_cls: Any = None) -> Path:
    """Write the PEFT folder ``adapter_dir`` to ``out`` as ``fmt``; returns the folder. ``adapter_cls``: the
    adapter class that loads ``base_model`` (a subclass of TextAdapter with its own built-in models)."""
    from .adapter import TextAdapter

    adapter_cls = adapter_cls or TextAdapter

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} for a language-model adapter; use one of {', '.join(FORMATS)}")
    src, out = Path(adapter_dir), Path(out)
    if not (src / lora.PEFT_CONFIG).is_file() or not (src / lora.PEFT_WEIGHTS).is_file():
        raise ValueError(f"{src} is not a PEFT adapter folder ({lora.PEFT_CONFIG} + {lora.PEFT_WEIGHTS})")
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        raise ValueError(f"{out} already exists and is not empty; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "peft":
        for name in (lora.PEFT_WEIGHTS, "palate.json"):
            if (src / name).is_file():
                shutil.copy2(src / name, out / name)
        config = json.loads((src / lora.PEFT_CONFIG).read_text())
        _, folder = loading.resolve_model(base_model, adapter_cls.BUILTIN_MODELS)
        config["base_model_name_or_path"] = str(folder) if folder is not None else base_model
        (out / lora.PEFT_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    else:
        from modalities.protocol import ModelRef

        merged = adapter_cls.load(ModelRef(base_model, adapter=str(src)), device="cpu", dtype=torch.float32)
        merged.model.save_pretrained(out, safe_serialization=True)
        merged.tokenizer.save_pretrained(out)
    (out / "palate_adapter.json").write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str) + "\n")
    return out


@torch.no_grad()
def verify_export(base_model: str, adapter_dir: str | Path, exported: str | Path, fmt: str, *,
                  atol: float = 1e-4, adapter_cls: Any = None) -> float:
    """Load ``exported`` as a user would and compare its logits on :data:`PROBE` with Palate's model
    + adapter; raises when they differ by more than ``atol``. Returns the largest difference."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modalities.protocol import ModelRef

    from .adapter import TextAdapter

    adapter_cls = adapter_cls or TextAdapter
    probe = getattr(adapter_cls, "PROBE", PROBE)
    ours = adapter_cls.load(ModelRef(base_model, adapter=str(adapter_dir)), device="cpu", dtype=torch.float32)
    ids = ours.tokenizer(probe, return_tensors="pt")["input_ids"]
    want = ours.model(ids).logits.float()
    if fmt == "peft":
        from peft import PeftModel

        _, folder = loading.resolve_model(base_model, adapter_cls.BUILTIN_MODELS)
        base = AutoModelForCausalLM.from_pretrained(str(folder) if folder else base_model, dtype=torch.float32,
                                                    use_safetensors=True)
        model = PeftModel.from_pretrained(base, str(exported))
    elif fmt == "merged":
        model = AutoModelForCausalLM.from_pretrained(str(exported), dtype=torch.float32, use_safetensors=True)
        if AutoTokenizer.from_pretrained(str(exported))(probe)["input_ids"] != ids[0].tolist():
            raise ValueError("the merged export's tokenizer does not tokenize like the base model's")
    else:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    got = model.eval()(ids).logits.float()
    diff = (got - want).abs().max().item()
    if diff > atol:
        raise ValueError(f"the {fmt} export does not reproduce the adapter: max logit difference {diff:.2e}")
    return diff
