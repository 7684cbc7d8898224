"""`python -m app generate`: real pipelines (a tiny one from a config, and the shipped default)."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from storage import Store
from tests import tiny_pipelines
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return tiny_pipelines.save(tiny_pipelines.tiny_sd(), tmp_path_factory.mktemp("tiny") / "sd")


def test_generate_stores_candidates_with_provenance(tmp_path, tiny_folder):
    d = tmp_path / "data"
    out = run_cli("generate", "--model", str(tiny_folder), "--prompt", "a small red circle on a blue background",
                  "-n", "3", "--seed", "10", "--steps", "2", "--width", "32", "--height", "32", "--json",
                  data_dir=d, check=True)
    rows = json.loads(out.stdout)
    assert [r["seed"] for r in rows] == [10, 11, 12]
    for r in rows:
        img = Image.open(r["path"])
        assert img.size == (32, 32) and "Seed: " in img.text["parameters"]
        assert r["params"]["steps"] == 2 and r["model"] == str(tiny_folder)
    listing = json.loads(run_cli("list", "--json", data_dir=d, check=True).stdout)
    assert len(listing) == 3 and listing[0]["model_revision"]
    # the same seeds again give the same files (content-addressed: same hashes)
    again = json.loads(run_cli("generate", "--model", str(tiny_folder), "--prompt", "a small red circle on a blue background",
                               "-n", "3", "--seed", "10", "--steps", "2", "--width", "32", "--height", "32", "--json",
                               data_dir=d, check=True).stdout)
    assert [r["path"] for r in again] == [r["path"] for r in rows]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt", "  "], "prompt is empty"),
        (["--prompt", "p", "-n", "0"], "between 1 and 64"),
        (["--prompt", "p", "-n", "65"], "between 1 and 64"),
        (["--prompt", "p", "--width", "31", "--steps", "2"], "width 31 is impossible"),
        (["--prompt", "p", "--scheduler", "warp-drive", "--steps", "2"], "unknown scheduler"),
    ],
)
def test_generate_bad_input(tmp_path, tiny_folder, args, message):
    d = tmp_path / "data"
    proc = run_cli("generate", "--model", str(tiny_folder), *args, data_dir=d)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert "no generations stored yet" in run_cli("list", data_dir=d).stdout


def test_generate_unknown_models(tmp_path):
    d = tmp_path / "data"
    proc = run_cli("generate", "--model", str(tmp_path / "missing"), "--prompt", "p", data_dir=d)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = run_cli("generate", "--model", "no-such-org/no-such-model", "--prompt", "p", data_dir=d)
    assert proc.returncode == 2 and "cannot load model 'no-such-org/no-such-model'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_generate_with_the_default_model(tmp_path):
    d = tmp_path / "data"
    out = run_cli("generate", "--prompt", "two large green squares on a white background", "-n", "2", "--seed", "1",
                  "--json", data_dir=d, check=True)
    rows = json.loads(out.stdout)
    assert len(rows) == 2 and rows[0]["model"] == "shapes-diffusion"
    assert Image.open(rows[0]["path"]).size == (32, 32)


def test_train_from_the_cli(tmp_path):
    """generate -> vote -> train -> export, as a user would, on a tiny pixel model."""
    model = tiny_pipelines.save(tiny_pipelines.tiny_pixel(), tmp_path / "pixel")
    d = tmp_path / "data"
    rows = json.loads(run_cli("generate", "--model", str(model), "--prompt", "a small red circle on a blue background",
                              "-n", "4", "--seed", "0", "--steps", "2", "--json", data_dir=d, check=True).stdout)
    ids = [str(r["id"]) for r in rows]
    run_cli("vote", ids[0], ids[1], "--choice", "a", data_dir=d, check=True)
    run_cli("vote", "--ranking", ids[2], ids[3], ids[1], data_dir=d, check=True)
    proc = run_cli("train", "--model", str(model), "--method", "diffusion-dpo", "--steps", "2", "--batch-size", "2",
                   "--lr", "0.001", data_dir=d)
    assert proc.returncode == 0, proc.stderr
    assert "run 1:" in proc.stdout and "adapter in" in proc.stderr
    info = json.loads(run_cli("db", "info", "--json", data_dir=d, check=True).stdout)
    assert info["counts"]["runs"] == 1 and info["counts"]["adapters"] == 1
    adapter_dir = d / "runs" / "run-0001" / "adapter"
    for fmt, target in (("kohya", tmp_path / "k.safetensors"), ("peft", tmp_path / "peft")):  # verified exports
        out = json.loads(run_cli("export", "adapter", "1", str(target), "--format", fmt, "--json", data_dir=d,
                                 check=True).stdout)
        assert out["max_difference"] <= 1e-5 and out["format"] == fmt
    missing = run_cli("export", "adapter", "9", str(tmp_path / "x"), data_dir=d)
    assert missing.returncode == 2 and "adapter 9 does not exist" in missing.stderr
    tuned = json.loads(run_cli("generate", "--model", str(model), "--adapter", str(adapter_dir), "--prompt",
                               "a small red circle on a blue background", "-n", "1", "--seed", "0", "--steps", "2",
                               "--json", data_dir=d, check=True).stdout)
    assert tuned[0]["params"]["adapter"] == str(adapter_dir)
    bad = run_cli("train", "--model", str(model), "--method", "no-such-method", data_dir=d)
    assert bad.returncode == 2 and "unknown method" in bad.stderr
    # continue from the stored adapter (by its id), with the 8-bit-free CPU defaults spelled out
    more = run_cli("train", "--model", str(model), "--method", "diffusion-dpo", "--steps", "1", "--batch-size", "2",
                   "--init-adapter", "1", "--mixed-precision", "no", "--optimizer", "adamw", data_dir=d)
    assert more.returncode == 0, more.stderr
    assert f"continuing from {adapter_dir}" in more.stderr
    config = json.loads((d / "runs" / "run-0002" / "config.json").read_text())
    assert config["init_adapter"] == str(adapter_dir) and config["optimizer"] == "adamw"
    with Store.open(d) as store:
        assert store.get_run(2).parent_adapter_id == 1
    # an adapter made on another base model is refused with a clear message
    other = tiny_pipelines.save(tiny_pipelines.tiny_pixel(seed=1), tmp_path / "other")
    wrong = run_cli("generate", "--model", str(other), "--adapter", str(adapter_dir), "--prompt", "a small red circle "
                    "on a blue background", "-n", "1", "--steps", "2", data_dir=d)
    assert wrong.returncode == 2 and "was trained on" in wrong.stderr


def test_ctrl_c_during_train_checkpoints_and_resumes(tmp_path):
    """Ctrl-C reaches `python -m app train` and its trainer together (one process group): the CLI
    waits while the trainer finishes its step, checkpoints and marks the run cancelled."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    model = tiny_pipelines.save(tiny_pipelines.tiny_pixel(), tmp_path / "pixel")
    d = tmp_path / "data"
    rows = json.loads(run_cli("generate", "--model", str(model), "--prompt", "a small red circle on a blue background",
                              "-n", "4", "--seed", "0", "--steps", "2", "--json", data_dir=d, check=True).stdout)
    ids = [str(r["id"]) for r in rows]
    run_cli("vote", "--ranking", *ids, data_dir=d, check=True)
    env = {k: v for k, v in os.environ.items() if k != "PALATE_DATA_DIR"}
    proc = subprocess.Popen([sys.executable, "-m", "app", "--data-dir", str(d), "train", "--model", str(model),
                             "--method", "diffusion-dpo", "--steps", "100000", "--batch-size", "2"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    metrics = d / "runs" / "run-0001" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in err
    assert (d / "runs" / "run-0001" / "checkpoint.pt").exists()
    with Store.open(d) as store:
        run = store.get_run(1)
        assert run.status == "cancelled" and run.exit_code == 130 and run.step >= 2
