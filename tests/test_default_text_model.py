"""The shipped reasoning model: loads offline, and still answers as its model card says."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from modalities.text.adapter import BUILTIN_MODELS, DEFAULT_MODEL, TextAdapter
from modalities.protocol import ModelRef

FOLDER = BUILTIN_MODELS["arith-reasoner"]
ROOT = Path(__file__).resolve().parents[1]
SMOKE = 40  # the first problems of the card's 500 held-out ones
# Per-seed sampling is deterministic, so on the machine that wrote the card the smoke set matches
# exactly; another CPU's float rounding may flip a sampled token: allow 3 problems of 40.
TOLERANCE = 3


def test_folder_is_a_small_safetensors_model_with_its_card():
    assert DEFAULT_MODEL == "arith-reasoner"
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "README.md",
                 "eval.json", "training_config.json"):
        assert (FOLDER / name).is_file(), name
    assert not list(FOLDER.rglob("*.bin")) and not list(FOLDER.rglob("*.pt"))
    assert sum(f.stat().st_size for f in FOLDER.rglob("*") if f.is_file()) < 50 * 2**20
    card = (FOLDER / "README.md").read_text()
    for word in ("Architecture", "Training", "held-out", "accuracy", "redundant", "shortest"):
        assert word in card
    ev = json.loads((FOLDER / "eval.json").read_text())
    # the bar for the built-in model: room for thinking-dynamics optimization to show itself
    assert ev["problems"] == 500 and 0.5 <= ev["accuracy"] <= 0.9
    assert ev["redundant_share"] >= 0.4 and ev["length_ratio"] >= 1.5


def test_default_sampling_settings_ship_with_the_model(monkeypatch):
    from app.generation import default_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lm = TextAdapter.load(ModelRef("arith-reasoner"))
    assert default_model("text") == "arith-reasoner"
    assert lm.has_chat_template and lm.context_length == 512
    params = lm.default_params()
    assert params == json.loads((FOLDER / "eval.json").read_text())["settings"]
    assert params["temperature"] > 0 and params["max_tokens"] >= 256


@pytest.mark.slow
def test_loads_offline_and_matches_the_card(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT / "bench"))
    from eval_text_default import evaluate_model

    card = json.loads((FOLDER / "eval.json").read_text())
    got = evaluate_model("arith-reasoner", SMOKE)
    expected = card["correct_by_problem"][:SMOKE]
    differ = sum(a != b for a, b in zip(got["correct_by_problem"], expected))
    assert differ <= TOLERANCE, (got["correct_by_problem"], expected)
    assert abs(got["accuracy"] - expected.count("1") / SMOKE) <= TOLERANCE / SMOKE
    assert got["redundant_share"] >= 0.4 and got["length_ratio"] >= 1.5
