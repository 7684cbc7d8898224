"""The built-in reasoning model's training script: stops, resumes exactly, exports a loadable model."""
from __future__ import annotations

import subprocess
import sys

from safetensors.torch import load_file

from tests.conftest import ROOT

ARGS = ["--steps", "4", "--batch-size", "2", "--warmup", "2", "--checkpoint-every", "100", "--threads", "1",
        "--hidden", "32", "--layers", "1", "--heads", "2", "--difficulty", "easy"]


def _train(run_dir, out, *extra):
    return subprocess.run(
        [sys.executable, "scripts/train_text_default.py", "--run-dir", str(run_dir), "--out", str(out), *ARGS, *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )


def test_resume_equals_uninterrupted_and_the_model_loads(tmp_path):
    a = _train(tmp_path / "a", tmp_path / "a-out")
    assert a.returncode == 0, a.stderr
    b1 = _train(tmp_path / "b", tmp_path / "b-out", "--stop-after", "2")
    assert b1.returncode == 130 and "run the same command again to resume" in b1.stdout
    b2 = _train(tmp_path / "b", tmp_path / "b-out")
    assert b2.returncode == 0 and "resumed from step 2" in b2.stdout, b2.stderr
    wa, wb = load_file(tmp_path / "a-out" / "model.safetensors"), load_file(tmp_path / "b-out" / "model.safetensors")
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    c = _train(tmp_path / "b", tmp_path / "c-out", "--lr", "0.5")
    assert c.returncode != 0 and "other settings" in (c.stdout + c.stderr)

    from modalities.protocol import GenerationRequest, ModelRef
    from modalities.text.adapter import TextAdapter

    model = TextAdapter.load(ModelRef(str(tmp_path / "a-out")), device="cpu")
    assert model.format_prompt("What is 3 + 4?") == "<bos>Q: What is 3 + 4?\nA:"  # its chat template
    (s,) = model.generate(GenerationRequest("What is 3 + 4?", n=1, seeds=(0,), params={"max_tokens": 8}))
    assert s.provenance.params["response_tokens"] >= 1
    # the shipped default sampling settings travel with the model
    assert model.default_params() == {"temperature": 0.7, "top_p": 0.95, "max_tokens": 384}


def test_a_planted_checkpoint_is_refused_without_running(tmp_path):
    from tests.test_trainer import plant_pickle

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    marker = tmp_path / "pwned"
    plant_pickle(run_dir / "checkpoint.pt", marker)
    proc = _train(run_dir, tmp_path / "out")
    assert proc.returncode != 0 and not marker.exists()
    assert "holds objects other than tensors and plain values" in proc.stdout + proc.stderr and "not loaded" in proc.stderr
