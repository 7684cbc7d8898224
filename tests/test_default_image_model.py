"""The shipped default image model: loads offline, and still scores as its model card says."""
from __future__ import annotations

import io
import json

import pytest

from modalities.image.adapter import BUILTIN_MODELS, ImageAdapter
from modalities.protocol import GenerationRequest, ModelRef

FOLDER = BUILTIN_MODELS["shapes-diffusion"]
# Per attribute: 0.15 absolute, or 2 prompts' worth when few prompts have the attribute
# (one image flipping on another CPU's arithmetic must not fail the test).
TOLERANCE = 0.15


def test_folder_is_a_small_safetensors_pipeline():
    assert (FOLDER / "model_index.json").is_file()
    weights = list(FOLDER.rglob("*.safetensors"))
    assert weights and not list(FOLDER.rglob("*.bin")) and not list(FOLDER.rglob("*.pt"))
    assert sum(f.stat().st_size for f in FOLDER.rglob("*") if f.is_file()) < 50 * 2**20
    card = (FOLDER / "README.md").read_text()
    for word in ("Architecture", "Training", "held-out", "colour", "shape", "count", "background"):
        assert word in card


@pytest.mark.slow
def test_loads_offline_and_matches_the_card(monkeypatch):
    from PIL import Image

    from modalities.image.shapes import Judge, evaluate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    card = json.loads((FOLDER / "eval.json").read_text())
    smoke = card["smoke"]
    adapter = ImageAdapter.load(ModelRef("shapes-diffusion"))
    pairs = []
    for i, prompt in enumerate(smoke["prompts"]):
        (s,) = adapter.generate(GenerationRequest(prompt, n=1, seeds=(i,)))
        pairs.append((Image.open(io.BytesIO(s.data)), prompt))
    scores = evaluate(Judge(), pairs)
    with_position = sum(" on the " in p or " at the " in p or " in the center" in p for p in smoke["prompts"])
    for attr, expected in smoke["scores"].items():
        n = with_position if attr == "position" else len(smoke["prompts"])
        tolerance = max(TOLERANCE, 2.0 / max(1, n))
        assert abs(scores[attr] - expected) <= tolerance, (attr, scores[attr], expected)
