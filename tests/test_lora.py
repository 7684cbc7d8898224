"""modalities.lora: LoRA through peft's functional API, on a plain module and a tiny Llama.

The checks that matter: the adapter really changes the output once trained, ``disabled`` gives
the base model back exactly, switching adapters works, a saved folder loads in plain
``PeftModel.from_pretrained`` with the same outputs, and none of it goes through transformers'
PEFT integration (whose version check once broke every text run).
"""
from __future__ import annotations

import pytest
import torch
from peft import LoraConfig

from modalities import lora

from tests.tiny_pipelines import save_tiny_lm


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def _perturb(module: torch.nn.Module, name: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if "lora_B" in n and f".{name}." in n:
                p.copy_(torch.randn(p.shape, generator=g))


def test_add_disable_switch_and_state_round_trip():
    model = _mlp()
    x = torch.randn(5, 6)
    base = model(x)
    lora.add(model, LoraConfig(r=2, lora_alpha=2, target_modules=["0", "2"]), "default")
    assert torch.equal(model(x), base)  # lora_B starts at zero
    _perturb(model, "default", 1)
    tuned = model(x)
    assert not torch.allclose(tuned, base)
    with lora.disabled(model):
        assert torch.allclose(model(x), base, atol=1e-6)
    assert torch.allclose(model(x), tuned)
    state = lora.state_dict(model, "default")
    assert state and all(".default." not in k for k in state)

    lora.add(model, LoraConfig(r=2, lora_alpha=2, target_modules=["0", "2"]), "other")
    assert lora.has(model, "default") and lora.has(model, "other")
    assert torch.allclose(model(x), base, atol=1e-6)  # the new adapter is active and still zero
    lora.load_state_dict(model, state, "other")
    assert torch.allclose(model(x), tuned, atol=1e-6)
    with lora.active(model, "default", restore="other"):
        assert torch.allclose(model(x), tuned, atol=1e-6)
    with pytest.raises(ValueError, match="already holds"):
        lora.add(model, LoraConfig(r=2, target_modules=["0"]), "other")
    with pytest.raises(KeyError, match="no LoRA adapter named 'missing'"):
        lora.activate(model, "missing")


def test_load_state_dict_refuses_weights_of_another_shape():
    a, b = _mlp(), _mlp()
    lora.add(a, LoraConfig(r=2, target_modules=["0", "2"]), "default")
    lora.add(b, LoraConfig(r=2, target_modules=["0"]), "default")
    with pytest.raises(ValueError, match="do not fit"):
        lora.load_state_dict(b, lora.state_dict(a, "default"), "default")


def test_text_model_folder_round_trip_without_transformers_integration(tmp_path, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from transformers.integrations import peft as hf_peft
    from transformers.utils import peft_utils

    def refuse(*_a, **_k):  # what transformers 5.24 did with peft 0.21
        raise ValueError("The version of PEFT you are using is not compatible")

    monkeypatch.setattr(peft_utils, "check_peft_version", refuse)
    monkeypatch.setattr(hf_peft, "check_peft_version", refuse)
    folder = save_tiny_lm(tmp_path / "lm")
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.tensor([[1, 5, 9, 12, 3]])
    base = model(ids).logits
    lora.add(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]), "default")
    _perturb(model, "default", 2)
    tuned = model(ids).logits
    assert not torch.allclose(tuned, base)
    out = tmp_path / "adapter"
    lora.save_folder(out, lora.state_dict(model, "default"), lora.config_of(model, "default").to_dict())

    # plain peft, as a user would load the export
    fresh = AutoModelForCausalLM.from_pretrained(folder)
    peft_model = PeftModel.from_pretrained(fresh, str(out))
    assert torch.allclose(peft_model(ids).logits, tuned, atol=1e-5)

    # and back into Palate as a frozen second adapter; the active one stays active
    again = AutoModelForCausalLM.from_pretrained(folder)
    lora.add(again, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]), "default")
    lora.load_folder(again, out, "reference")
    assert torch.allclose(again(ids).logits, base, atol=1e-5)
    assert not any(p.requires_grad for n, p in again.named_parameters() if ".reference." in n)
    with lora.active(again, "reference", restore="default"):
        assert torch.allclose(again(ids).logits, tuned, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="not a PEFT adapter folder"):
        lora.load_folder(again, tmp_path, "x")
