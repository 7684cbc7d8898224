"""The default model's training script: stops, resumes exactly, and exports a loadable pipeline."""
from __future__ import annotations

import subprocess
import sys

import pytest
from safetensors.torch import load_file

from tests.conftest import ROOT

ARGS = ["--steps", "4", "--batch-size", "2", "--warmup", "2", "--checkpoint-every", "100", "--threads", "1"]


def _train(run_dir, out, *extra):
    return subprocess.run(
        [sys.executable, "scripts/train_image_default.py", "--run-dir", str(run_dir), "--out", str(out), *ARGS, *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )


@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path):
    a = _train(tmp_path / "a", tmp_path / "a-out")
    assert a.returncode == 0, a.stderr
    b1 = _train(tmp_path / "b", tmp_path / "b-out", "--stop-after", "2")
    assert b1.returncode == 130 and "run the same command again to resume" in b1.stdout
    assert not (tmp_path / "b-out").exists()
    b2 = _train(tmp_path / "b", tmp_path / "b-out")
    assert b2.returncode == 0, b2.stderr
    assert "resumed from step 2" in b2.stdout
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        wa, wb = load_file(tmp_path / "a-out" / part), load_file(tmp_path / "b-out" / part)
        assert wa.keys() == wb.keys()
        assert all((wa[k] == wb[k]).all() for k in wa), part
    # a changed setting is refused instead of silently mixing runs
    c = _train(tmp_path / "b", tmp_path / "c-out", "--lr", "0.5")
    assert c.returncode != 0 and "other settings" in (c.stdout + c.stderr)

    from modalities.image.adapter import ImageAdapter
    from modalities.protocol import GenerationRequest, ModelRef

    adapter = ImageAdapter.load(ModelRef(str(tmp_path / "a-out")))
    (s,) = adapter.generate(GenerationRequest("a small red circle on a blue background", n=1, seeds=(0,),
                                              params={"steps": 2}))
    assert s.mime == "image/png"


def test_a_planted_checkpoint_is_refused_without_running(tmp_path):
    from tests.test_trainer import plant_pickle

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    marker = tmp_path / "pwned"
    plant_pickle(run_dir / "checkpoint.pt", marker)
    proc = _train(run_dir, tmp_path / "out")
    assert proc.returncode != 0 and not marker.exists()
    assert "holds objects other than tensors and plain values" in proc.stdout + proc.stderr and "not loaded" in proc.stderr
