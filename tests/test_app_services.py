"""The services behind the web app, without a browser: judging, data, compare, runs."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app import runs, services
from storage.store import COMPARE_CONTEXT
from tests.conftest import add_images, png_bytes


def test_pick_best_vote_rank_undo_and_the_counter(store):
    ids = [g.id for g in add_images(store, "p", 4, model="m")]
    other = [g.id for g in add_images(store, "q", 2, model="other", offset=10)]
    assert services.judgment_count(store, "image", "m") == 0
    j1 = services.pick_best(store, ids, ids[2])
    j = store.get_judgment(j1)
    assert j.kind == "ranking" and j.generation_ids[0] == ids[2] and j.ranks == (1, None, None, None)
    services.vote(store, ids[0], ids[1], "both-bad")
    services.rank(store, [ids[3], ids[1]], ids)
    services.vote(store, other[0], other[1], "a")
    assert services.judgment_count(store, "image", "m") == 3
    assert services.judgment_count(store, "image", "other") == 1
    # undo: the given judgment, else the most recent one
    assert services.undo(store, j1) == j1
    assert services.judgment_count(store, "image", "m") == 2
    last = services.undo(store)
    assert services.judgment_count(store, "image", "other") == 0 and last > j1
    with pytest.raises(ValueError, match="not one of the candidates"):
        services.pick_best(store, ids, 999)
    with pytest.raises(ValueError, match="best first"):
        services.rank(store, [], ids)
    with pytest.raises(ValueError, match="choice must be"):
        services.vote(store, ids[0], ids[1], "left")


@pytest.mark.parametrize("n", range(2, 9))
def test_pair_schedule_covers_every_pair_once(n):
    pairs = services.pair_schedule(n)
    assert sorted(pairs) == [(i, j) for i in range(n) for j in range(i + 1, n)]
    if n >= 4:  # spread out: the first two pairs share no candidate
        assert not set(pairs[0]) & set(pairs[1])


def test_wilson_interval():
    lo, hi = services.wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert services.wilson(0, 0) == (0.0, 1.0)
    lo, hi = services.wilson(5, 5)
    assert hi == 1.0 and 0.5 < lo < 0.6


def _adapter(store, tmp_path, name="a1"):
    run = store.create_run(modality="image", method="diffusion-dpo", base_model="m", config={})
    return store.add_adapter(name=name, modality="image", base_model="m", path=str(tmp_path / name), run_id=run.id)


def test_blind_votes_give_a_win_rate_and_never_train(store, tmp_path):
    adapter = _adapter(store, tmp_path)
    rows = []
    for k in range(4):
        base = add_images(store, f"prompt {k}", 1, model="m", offset=10 * k)[0]
        tuned = store.add_generation(prompt=f"prompt {k}", modality="image", model="m", adapter_id=adapter.id,
                                     media=png_bytes((k, 1, 200)), mime="image/png", seed=0)
        rows.append({"prompt": f"prompt {k}", "seed": 0, "base": base, "adapters": {adapter.id: tuned}})
    trials = services.blind_trials(rows, adapter.id, seed=3)
    assert {t.tuned_side for t in trials} == {"left", "right"}  # shuffled sides (seed 3)
    for t, pick in zip(trials, ["tuned", "tuned", "tie", "base"]):
        choice = "tie" if pick == "tie" else (t.tuned_side if pick == "tuned" else
                                               ("right" if t.tuned_side == "left" else "left"))
        services.blind_vote(store, t, choice)
    w = services.win_rate(store, adapter.id)
    assert (w["wins"], w["ties"], w["losses"], w["n"]) == (2, 1, 1, 4)
    assert w["win_rate"] == pytest.approx(2.5 / 4)
    assert w["ci95"] == pytest.approx(services.wilson(2.5, 4))
    # the same candidates judged outside the blind mode do not count in the win rate ...
    store.vote(rows[0]["base"].id, rows[0]["adapters"][adapter.id].id, "a")
    assert services.win_rate(store, adapter.id)["n"] == 4
    # ... and blind choices are never training data
    contexts = {r["context"] for r in store.query("SELECT context FROM judgments")}
    assert contexts == {COMPARE_CONTEXT, "collect"}
    pairs = store.preference_pairs(modality="image", model="m")
    assert len(pairs) == 1 and pairs[0].winner_id == rows[0]["base"].id
    assert len(store.preference_pairs(modality="image", model="m", contexts=[COMPARE_CONTEXT])) == 3


def test_browse_filters_and_judgment_listing(store):
    a = add_images(store, "red circle", 3, model="m")
    b = add_images(store, "blue square", 2, model="n", offset=5)
    store.rank([a[1].id, a[0].id], unranked=[a[2].id])
    store.vote(b[0].id, b[1].id, "tie")
    assert [r["id"] for r in services.browse(store, text="circle")] == [g.id for g in reversed(a)]
    assert [r["id"] for r in services.browse(store, model="n")] == [g.id for g in reversed(b)]
    rows = services.browse(store)
    assert {r["id"]: r["judgments"] for r in rows}[a[0].id] == 1
    js = services.judgments(store)
    assert js[0]["kind"] == "pairwise" and js[0]["candidates"] == f"A={b[0].id} B={b[1].id}"
    assert js[1]["candidates"] == f"{a[1].id} > {a[0].id} (unranked {a[2].id})"
    assert [j["kind"] for j in services.judgments(store, model="m")] == ["ranking"]


def test_delete_generation_takes_its_judgments_and_unshared_media(store):
    a = add_images(store, "p", 3)
    store.vote(a[0].id, a[1].id, "a")
    store.vote(a[1].id, a[2].id, "b")
    keep = store.vote(a[0].id, a[2].id, "a")
    path = store.media_file(a[1])
    assert store.delete_generation(a[1].id) == 2
    assert path.exists() is False
    assert [r["id"] for r in store.query("SELECT id FROM judgments")] == [keep]
    # a media file another candidate uses stays
    twin = store.add_generation(prompt="p2", modality="image", model="tiny", media=store.media_bytes(a[0]),
                                mime="image/png")
    store.delete_generation(twin.id)
    assert store.media_file(a[0]).exists()


def test_export_formats_come_from_the_modality():
    assert services.export_formats("text") == ["peft", "merged"]
    assert services.export_formats("image") == ["diffusers", "peft", "kohya"]


# -- runs ---------------------------------------------------------------------------------


def _queued_run(store, steps: int = 3):
    return runs.create_run(store, modality="image", method="diffusion-dpo", settings={"model": "m", "steps": steps})


def _wait(pred, timeout: float = 600.0) -> None:
    t0 = time.time()
    while not pred():
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.1)


def test_reconcile_marks_a_vanished_trainer_failed(store, data_dir):
    run, _ = _queued_run(store)
    store.update_run(run.id, status="running", pid=2**22 + 12345)  # no such process
    q = runs.RunQueue(data_dir)
    notes = q.reconcile()
    assert notes == [f"run {run.id} was interrupted: marked failed (resumable)"]
    r = store.get_run(run.id)
    assert r.status == "failed" and "resume continues" in r.error
    # and it can be queued again
    assert "queued again" in q.resume(run.id)
    assert store.get_run(run.id).status == "queued"


def test_queue_runs_one_at_a_time_and_records_a_silent_crash(store, data_dir, monkeypatch):
    # a "trainer" that dies without reporting (as a kill -9 or a native crash would)
    monkeypatch.setattr(runs, "train_command", lambda run_dir: [sys.executable, "-c", "import sys, time; "
                                                                "time.sleep(0.5); sys.exit(3)", "alignment.train"])
    q = runs.RunQueue(data_dir, poll=0.05).start()
    try:
        a = q.submit(modality="image", method="diffusion-dpo", settings={"model": "m", "steps": 2})
        b = q.submit(modality="image", method="diffusion-dpo", settings={"model": "m", "steps": 2})
        _wait(lambda: q.running_run() == a.id)
        assert store.get_run(b.id).status == "queued" and store.get_run(b.id).pid is None  # b waits for a
        _wait(lambda: store.get_run(a.id).status == "failed")
        _wait(lambda: store.get_run(b.id).status == "failed")
        for rid in (a.id, b.id):
            r = store.get_run(rid)
            assert "exited with status 3 without reporting" in r.error and r.exit_code == 3
            assert "$ " in runs.log_tail(r.run_dir)  # the command is logged
    finally:
        q.stop()


def test_cancel_a_queued_run_and_a_started_one(store, data_dir, monkeypatch):
    # a stand-in trainer that takes a second to "checkpoint" on SIGTERM, then exits without recording anything
    code = ("import pathlib, signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(1), sys.exit(130)))\n"
            "pathlib.Path(sys.argv[2], 'ready').touch()\ntime.sleep(60)")  # ready: its handler is in place
    monkeypatch.setattr(runs, "train_command", lambda run_dir: [sys.executable, "-c", code, "alignment.train",
                                                                str(run_dir)])
    ready = lambda run: (Path(store.get_run(run.id).run_dir) / "ready").exists()  # noqa: E731
    q = runs.RunQueue(data_dir, poll=0.05).start()
    try:
        a = q.submit(modality="image", method="diffusion-dpo", settings={"model": "m", "steps": 2})
        b = q.submit(modality="image", method="diffusion-dpo", settings={"model": "m", "steps": 2})
        _wait(lambda: q.running_run() == a.id and runs.pid_alive(store.get_run(a.id).pid) and ready(a))
        assert q.cancel(b.id) == f"run {b.id} removed from the queue"
        assert store.get_run(b.id).status == "cancelled"
        assert "stopping" in q.cancel(a.id)
        assert q.cancel(a.id) == f"run {a.id} is already stopping"  # a second SIGTERM would skip the checkpoint
        _wait(lambda: store.get_run(a.id).status == "cancelled")
        assert "before the trainer could checkpoint" in store.get_run(a.id).error
        with pytest.raises(ValueError, match="nothing to cancel"):
            q.cancel(a.id)
        # a trainer marks its run cancelled a moment before its process exits: resume waits for the exit
        c = q.submit(modality="image", method="diffusion-dpo", settings={"model": "m", "steps": 2})
        _wait(lambda: q.running_run() == c.id and runs.pid_alive(store.get_run(c.id).pid) and ready(c))
        q.cancel(c.id)
        store.update_run(c.id, status="cancelled", error="stopped at step 0; resume with --resume")
        with pytest.raises(ValueError, match="still stopping"):
            q.resume(c.id)
        _wait(lambda: q.running_run() is None)
        assert "queued again" in q.resume(c.id)
    finally:
        q.stop()
        for r in store.list_runs():  # leave no stand-in behind
            if runs.pid_alive(r.pid):
                os.kill(r.pid, 9)


def test_a_cli_run_is_never_started_by_the_app(store, data_dir):
    run, run_dir = _queued_run(store)  # created the CLI's way: no queue marker
    q = runs.RunQueue(data_dir)
    q.wake()
    assert store.get_run(run.id).status == "queued" and store.get_run(run.id).pid is None


def test_progress_and_metrics(tmp_path, store):
    run, run_dir = _queued_run(store, steps=10)
    (run_dir / "metrics.jsonl").write_text(
        "".join(f'{{"step": {s}, "loss": 0.5, "seconds": {2.0 * s}}}\n' for s in (1, 2, 3, 4))
        + '{"step": 3, "loss": 0.4, "seconds": 6.5}\n'  # a resumed run rewrites step 3 ...
        + '{"step": 4, "loss": 0.3, "seconds": 8.5}\n{"step": 5, "lo')  # ... and a line being written
    recs = runs.read_metrics(run_dir)
    assert [r["step"] for r in recs] == [1, 2, 3, 4] and recs[2]["loss"] == 0.4
    store.update_run(run.id, status="running")
    p = runs.progress(store.get_run(run.id))
    assert p["step"] == 4 and p["total"] == 10 and p["fraction"] == 0.4
    assert p["eta"] == pytest.approx((8.5 - 2.0) / 3 * 6)


def test_a_run_still_training_after_an_app_restart_is_adopted(store, data_dir):
    import subprocess

    run, _ = _queued_run(store)
    # a trainer left running by an earlier app process (here: a stand-in that lives 1.5 s)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)", "alignment.train"])
    try:
        store.update_run(run.id, status="running", pid=proc.pid)
        q = runs.RunQueue(data_dir, poll=0.05)
        assert q.reconcile() == [f"run {run.id} is still training (pid {proc.pid}); watching it"]
        assert q.running_run() == run.id and store.get_run(run.id).status == "running"
        q._thread = None
        proc.wait()
        q.wake()  # the process ended without recording an end: the queue records it
        r = store.get_run(run.id)
        assert r.status == "failed" and "the trainer process ended without reporting" in r.error
        assert q.running_run() is None
    finally:
        proc.kill()


def test_blind_choices_stay_out_of_exports_and_vote_counts(store, tmp_path):
    from storage.exchange import export_dataset

    a, b = add_images(store, "p", 2, model="m")
    store.vote(a.id, b.id, "a", context=COMPARE_CONTEXT)
    assert store.stats()[0]["pairwise_votes"] == 0 and store.stats()[0]["training_pairs"] == 0
    assert export_dataset(store, tmp_path / "x.parquet", fmt="pickapic", modality="image").rows == 0
    store.vote(a.id, b.id, "b")
    assert store.stats()[0]["pairwise_votes"] == 1
    assert export_dataset(store, tmp_path / "y.parquet", fmt="pickapic", modality="image").rows == 1


def test_prompts_listing_counts_candidates_and_judgments(store):
    a = add_images(store, "red circle", 3, model="m")
    b = add_images(store, "blue square", 2, model="n", offset=5)
    store.vote(a[0].id, a[1].id, "a")
    store.rank([a[2].id, a[1].id])
    rows = services.prompts(store)
    assert [(r["prompt"], r["candidates"], r["judgments"]) for r in rows] == [("blue square", 2, 0),
                                                                             ("red circle", 3, 2)]
    assert [r["prompt"] for r in services.prompts(store, model="m")] == ["red circle"]
    assert [r["prompt"] for r in services.prompts(store, text="square")] == ["blue square"]
    assert b and services.prompts(store, modality="text") == []


def test_an_adopted_run_frees_the_gpu_when_it_completes(store, data_dir):
    import subprocess

    from app import generation

    run, _ = runs.create_run(store, modality="image", method="diffusion-dpo",
                             settings={"model": "m", "steps": 2, "device": "cuda"})
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)", "alignment.train"])
    try:
        store.update_run(run.id, status="running", pid=proc.pid)
        q = runs.RunQueue(data_dir)
        q.reconcile()
        assert generation._training_on.get("cuda") == run.id  # generation on that GPU is refused meanwhile
        with pytest.raises(RuntimeError, match=f"training run {run.id} is using the GPU"):
            generation.get_adapter(store, "image", "m", device="cuda")
        proc.wait()
        store.update_run(run.id, status="completed", pid=None)  # what the trainer records at its end
        q.wake()
        assert "cuda" not in generation._training_on and store.get_run(run.id).status == "completed"
    finally:
        proc.kill()
        generation.release_from_training("cuda")


def test_a_trainer_that_ignores_cancel_is_killed_by_a_second_one_later(store, data_dir, monkeypatch):
    code = ("import pathlib, signal, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "pathlib.Path(sys.argv[2], 'ready').touch()\ntime.sleep(60)")
    monkeypatch.setattr(runs, "train_command", lambda run_dir: [sys.executable, "-c", code, "alignment.train",
                                                                str(run_dir)])
    monkeypatch.setattr(runs, "KILL_AFTER_S", 0.5)
    q = runs.RunQueue(data_dir, poll=0.05).start()
    try:
        a = q.submit(modality="image", method="diffusion-dpo", settings={"model": "m", "steps": 2})
        _wait(lambda: q.running_run() == a.id and runs.pid_alive(store.get_run(a.id).pid)
              and (Path(store.get_run(a.id).run_dir) / "ready").exists())  # its handler is in place
        assert "stopping" in q.cancel(a.id)
        assert q.cancel(a.id) == f"run {a.id} is already stopping"
        time.sleep(0.6)
        assert "killed" in q.cancel(a.id)
        _wait(lambda: store.get_run(a.id).status == "cancelled")
    finally:
        q.stop()


def test_pid_alive_knows_both_trainers():
    """A reward model's run (alignment.rewards.run) is watched, cancelled and reconciled like an adapter's."""
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", name])
             for name in ("alignment.train", "alignment.rewards.run", "something.else")]
    try:
        deadline = time.time() + 600
        while not all(b"time.sleep(60)" in Path(f"/proc/{p.pid}/cmdline").read_bytes() for p in procs):  # exec'd
            assert time.time() < deadline
            time.sleep(0.05)
        assert [runs.pid_alive(p.pid) for p in procs] == [True, True, False]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert not runs.pid_alive(procs[0].pid)
