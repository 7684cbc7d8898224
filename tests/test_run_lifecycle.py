"""A run's life: one trainer at a time, a completed run left alone, no stale progress lines, and a
trainer killed under `python -m app train` recorded and reported."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from alignment.train import lock_run, train
from storage import Store
from tests.conftest import ROOT, SLOW
from tests.test_trainer import _metrics, _run, world  # noqa: F401  (world is a fixture)


def _recorded_run(world, tmp_path, name, **overrides):
    model, data = world
    with Store.open(data) as store:
        run = store.create_run(modality="image", method="diffusion-dpo", base_model=str(model), config={})
    return run.id, _run(tmp_path, world, name, run_id=run.id, **overrides)


def test_a_second_trainer_on_a_live_run_is_refused(tmp_path, world, capsys):
    model, data = world
    run_id, run_dir = _recorded_run(world, tmp_path, "busy")
    with Store.open(data) as store:
        store.update_run(run_id, status="running", pid=os.getpid())
    held = lock_run(run_dir)  # as a live trainer holds it
    try:
        assert train(run_dir, resume=True) == 1
        assert f"another trainer (pid {os.getpid()}) is training" in capsys.readouterr().err
        assert train(run_dir) == 1
    finally:
        held.close()
    with Store.open(data) as store:
        r = store.get_run(run_id)
        assert r.status == "running" and r.pid == os.getpid() and r.error is None  # the live run's record is its own
    assert not (run_dir / "metrics.jsonl").exists()


def test_the_lock_dies_with_its_process(tmp_path, world):
    run_dir = _run(tmp_path, world, "killed-holder")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from alignment.train import lock_run; from pathlib import Path;"
         "f = lock_run(Path(sys.argv[1])); print('locked', flush=True); time.sleep(600)", str(run_dir)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=SLOW)
    finally:
        holder.kill()
    assert train(run_dir) == 0  # nobody holds it any more


def test_a_completed_run_is_left_as_it_is(tmp_path, world, capsys):
    model, data = world
    run_id, run_dir = _recorded_run(world, tmp_path, "done", steps=2)
    assert train(run_dir) == 0
    weights = (run_dir / "adapter" / "pytorch_lora_weights.safetensors").read_bytes()
    with Store.open(data) as store:
        n_gens = len(store.list_generations(modality="image"))
    capsys.readouterr()
    for resume in (False, True):
        assert train(run_dir, resume=resume) == 1
        err = capsys.readouterr().err
        assert f"run {run_id} is already completed" in err and "--init-adapter" in err
    with Store.open(data) as store:
        r = store.get_run(run_id)
        assert r.status == "completed" and r.exit_code == 0 and r.error is None
        assert len(store.list_generations(modality="image")) == n_gens  # no new validation samples
    assert (run_dir / "adapter" / "pytorch_lora_weights.safetensors").read_bytes() == weights
    # a run directory made by hand (no store record) is recognised by its adapter
    hand = _run(tmp_path, world, "hand", steps=1)
    assert train(hand) == 0 and train(hand) == 1


def test_a_restart_before_the_first_checkpoint_drops_stale_progress(tmp_path, world):
    run_dir = _run(tmp_path, world, "stale", steps=3, checkpoint_every=100)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "loss": 9.0}) + "\n" for i in (1, 2, 3, 4)))
    assert train(run_dir) == 0
    assert [r["step"] for r in _metrics(run_dir)] == [1, 2, 3]


def test_a_trainer_killed_under_the_cli_is_recorded_and_reported(tmp_path, world):
    model, data = world
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PALATE_DATA_DIR", None)
    cli = subprocess.Popen(
        [sys.executable, "-m", "app", "train", "--modality", "image", "--model", str(model), "--method",
         "diffusion-dpo", "--steps", "100000", "--batch-size", "2", "--data-dir", str(data)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + SLOW
        run = None
        while run is None or run.status != "running" or not run.step:
            assert cli.poll() is None and time.time() < deadline, cli.stderr.read() if cli.poll() is not None else ""
            time.sleep(0.5)
            with Store.open(data) as store:
                run = store.list_runs()[-1]
        os.kill(run.pid, signal.SIGKILL)
        out, err = cli.communicate(timeout=SLOW)
    finally:
        cli.kill()
    assert cli.returncode == 128 + signal.SIGKILL
    assert f"run {run.id}: the trainer was killed by SIGKILL" in err and "--resume" in err
    with Store.open(data) as store:
        r = store.get_run(run.id)
        assert r.status == "failed" and "killed by SIGKILL" in r.error and r.exit_code == -signal.SIGKILL
