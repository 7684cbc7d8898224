"""Adapter export in every format, each loaded back and compared with the in-training model."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from alignment.config import TrainConfig
from modalities.image.export import FORMATS, export_adapter, verify_export
from alignment.train import add_lora, save_adapter
from modalities.image.adapter import ImageAdapter
from modalities.protocol import ModelRef
from tests import tiny_pipelines


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny pixel model with a LoRA whose alpha differs from its rank (the easy thing to lose)."""
    root = tmp_path_factory.mktemp("export")
    model = tiny_pipelines.save(tiny_pipelines.tiny_pixel(), root / "model")
    adapter = ImageAdapter.load(ModelRef(str(model)))
    cfg = TrainConfig(modality="image", method="diffusion-dpo", model=str(model), data_dir=str(root), lora_rank=4,
                      lora_alpha=8.0)
    with torch.no_grad():
        for p in add_lora(adapter.trainable_module(), cfg, adapter.lora_target_modules()):
            p.normal_(0, 0.3)
    out = save_adapter(adapter, adapter.trainable_module(), root / "adapter")
    in_training = adapter.pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                               output_type="pt")
    return model, out, in_training


def test_saved_adapter_reproduces_the_in_training_model(trained):
    model, out, in_training = trained
    reloaded = ImageAdapter.load(ModelRef(str(model), adapter=str(out)))
    got = reloaded.pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                        output_type="pt")
    assert torch.allclose(got, in_training, atol=1e-6)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_loads_back_identically(trained, tmp_path, fmt):
    model, out, _ = trained
    meta = {"base_model": str(model), "method": "diffusion-dpo", "run_id": 7, "data_hash": "abc123",
            "hyperparameters": {"beta": 2000.0}}
    exported = export_adapter(out, tmp_path / f"x-{fmt}", fmt, metadata=meta)
    assert verify_export(str(model), out, exported, fmt, prompt="a red circle") <= 1e-5
    if fmt == "kohya":
        with safe_open(str(exported), "pt") as f:
            keys, m = list(f.keys()), f.metadata()
            alphas = {f.get_tensor(k).item() for k in keys if k.endswith(".alpha")}
        assert all(k.startswith("lora_unet_") for k in keys)
        assert alphas == {8.0} and m["ss_network_dim"] == "4" and m["palate_data_hash"] == "abc123"
    elif fmt == "peft":
        assert json.loads((exported / "adapter_config.json").read_text())["lora_alpha"] == 8
        assert json.loads((exported / "palate_adapter.json").read_text())["run_id"] == 7
    else:
        with safe_open(str(exported / "pytorch_lora_weights.safetensors"), "pt") as f:
            assert f.metadata()["palate_method"] == "diffusion-dpo"


def test_a_wrong_export_is_caught(trained, tmp_path):
    model, out, _ = trained
    from safetensors.torch import load_file, save_file

    exported = export_adapter(out, tmp_path / "bad", "diffusers", metadata={})
    weights = load_file(exported / "pytorch_lora_weights.safetensors")
    with safe_open(str(exported / "pytorch_lora_weights.safetensors"), "pt") as f:
        meta = f.metadata()
    save_file({k: v * 2 for k, v in weights.items()}, exported / "pytorch_lora_weights.safetensors", metadata=meta)
    with pytest.raises(ValueError, match="does not reproduce the adapter"):
        verify_export(str(model), out, exported, "diffusers", prompt="a red circle")
    with pytest.raises(ValueError, match="unknown adapter format"):
        export_adapter(out, tmp_path / "y", "ckpt", metadata={})
    with pytest.raises(ValueError, match="holds no pytorch_lora_weights"):
        export_adapter(tmp_path, tmp_path / "z", "peft", metadata={})
