"""Training runs as subprocesses: create, queue, start, cancel, resume, reconcile.

Every run is ``python -m alignment.train RUN_DIR`` (``--resume`` when the run
directory holds a checkpoint) -- the same command as the CLI's ``train``. The
trainer itself records its progress (status, step, metrics) in the store; this
module only decides *when* a run starts and watches the process:

- ``create_run`` writes ``RUN_DIR/config.json`` and the run record (status
  ``queued``); the CLI starts it at once, the app hands it to the queue.
- :class:`RunQueue` (the app) runs one queued run at a time, oldest first. A
  run it owns has the marker file ``RUN_DIR/queued-by-app`` until it starts,
  so runs the CLI created are never started twice.
- Cancel sends SIGTERM: the trainer checkpoints and marks the run cancelled;
  resume queues it again and it continues exactly from its checkpoint.
- A process that dies without reporting (killed, out of memory, a crash in
  native code) is marked failed with the end of its log as the error.
- ``reconcile`` (on app start): a run recorded as running whose process is gone
  is marked failed (resumable); a live one is watched until it ends.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from storage import Run, Store

QUEUE_MARKER = "queued-by-app"
LOG_FILE = "train.log"
KILL_AFTER_S = 30.0  # a second Cancel this long after the first kills a trainer that did not stop
CHECKPOINT = "checkpoint.pt"  # alignment.train.CHECKPOINT (not imported: that pulls in torch)
SETTINGS = ("steps", "lr", "beta", "batch_size", "grad_accum", "lora_rank", "lora_alpha", "seed", "derivation",
            "device", "init_adapter", "mixed_precision", "optimizer", "cache_reference", "model", "warmup",
            "validation_count", "checkpoint_every")


def create_run(store: Store, *, modality: str, method: str, settings: dict[str, Any]) -> tuple[Run, Path]:
    """Write a run directory and its record (status ``queued``) from training settings.

    ``settings``: any TrainConfig fields (None values are left to the defaults);
    ``init_adapter`` may be an adapter id of the store (its base model becomes
    the default model) or a folder.
    """
    from alignment.config import TrainConfig

    overrides = {k: v for k, v in settings.items() if v is not None}
    init, parent = overrides.get("init_adapter"), None
    if init is not None and str(init).isdigit():  # an adapter id of the store: its base model by default
        parent = store.get_adapter(int(init))
        overrides["init_adapter"] = parent.path
        overrides.setdefault("model", parent.base_model)
    elif init is not None:
        overrides["init_adapter"] = str(Path(init).expanduser().resolve())
    if "model" not in overrides:
        from app.generation import default_model

        overrides["model"] = default_model(modality)  # a clear error where there is none yet
    from modalities import registry

    source = registry.source(modality)  # a plugin modality: the trainer imports it from here
    if source is not None:
        overrides.setdefault("modality_source", source)
    if overrides.get("reward_model"):  # a learned reward model is pinned to its version now: a resume judges alike
        from alignment.rewards import service

        overrides["reward_model"] = service.pinned(store, overrides["reward_model"], modality)
    cfg = TrainConfig.from_dict({"modality": modality, "method": method, "data_dir": str(store.data_dir), **overrides})
    if modality in registry.with_spec():
        registry.spec(modality).check_dimension(cfg.dimension)
    check_online(store, cfg)
    run = store.create_run(modality=cfg.modality, method=cfg.method, base_model=cfg.model, config=cfg.to_dict(),
                           parent_adapter_id=parent.id if parent else None)
    run_dir = store.data_dir / "runs" / f"run-{run.id:04d}"
    cfg = TrainConfig.from_dict({**cfg.to_dict(), "run_id": run.id})
    cfg.save(run_dir)
    run = store.update_run(run.id, run_dir=str(run_dir), config=cfg.to_dict())
    return run, run_dir


def check_online(store: Store, cfg: Any) -> None:
    """Before an online method's run is queued: its reward model exists for the modality, and it has
    prompts to sample (clear errors now rather than a failed run later)."""
    from alignment.methods import LOSSES

    spec = LOSSES[cfg.method]
    if spec.needs_reward:
        from alignment.rewards import service

        service.check_name(store, cfg.reward_model, cfg.modality)
    if spec.online and not cfg.prompts:
        from alignment.spo import stored_prompts

        if not stored_prompts(store, cfg.modality, cfg.data_model or cfg.model):
            raise ValueError(f"{cfg.method} samples its own candidates for your prompts, and there are none for "
                             f"{cfg.data_model or cfg.model} yet: generate candidates for a few prompts first, or give "
                             "a prompt list")


def create_reward_run(store: Store, settings: dict[str, Any]) -> tuple[Run, Path]:
    """A queued run that trains a reward model (``alignment.rewards.run``) from ``settings``: name,
    modality, model (default: the modality's built-in), folds, noise_level, hidden, epochs, seed,
    dimensions, backbone, noise_aware, summary, device. What can be checked before it starts is checked here."""
    from alignment.rewards.run import METHOD, RewardRunConfig
    from modalities import registry
    from storage.catalog import check_reward_name

    settings = {k: v for k, v in settings.items() if v is not None}
    modality = settings.get("modality")
    if modality not in registry.with_spec():
        raise ValueError(f"unknown modality {modality!r}; use one of {', '.join(registry.with_spec())}")
    name = str(settings.get("name") or "").strip()
    if not name:
        raise ValueError("name the reward model first (e.g. my-taste)")
    if "+" in name or "@" in name:
        raise ValueError(f"reward model names cannot hold '+' or '@' (they join ensembles and versions); got {name!r}")
    check_reward_name(name)
    spec = registry.spec(modality)
    for d in settings.get("dimensions") or ():
        spec.check_dimension(d)
    if settings.get("model") is None:
        from app.generation import default_model

        settings["model"] = default_model(modality)
    from alignment.rewards import programmatic

    if name in programmatic(modality):
        raise ValueError(f"{name!r} is a built-in reward of {modality}; give the learned one another name")
    folds = int(settings.get("folds", 5))
    if folds < 2:
        raise ValueError(f"folds must be 2 or more, got {folds}")
    decided = {(min(v.x, v.y), max(v.x, v.y), d) for d in settings.get("dimensions") or spec.dimensions
               for v in store.votes(modality=modality, model=settings["model"], dimension=d) if abs(v.p - 0.5) > 1e-9}
    if not store.votes(modality=modality, model=settings["model"], dimension=None):
        raise ValueError(f"no votes on {settings['model']}'s {modality} candidates yet: judge some first")
    if len(decided) < folds:
        raise ValueError(f"{len(decided)} decided pair(s) (ties aside) are fewer than the {folds} folds of the "
                         "held-out accuracy: cast more votes, or use fewer folds")
    cfg = RewardRunConfig(data_dir=str(store.data_dir), modality_source=registry.source(modality),
                          **{k: v for k, v in settings.items() if k != "name"}, name=name)
    run = store.create_run(modality=modality, method=METHOD, base_model=cfg.model, config=asdict(cfg), name=name)
    run_dir = store.data_dir / "runs" / f"run-{run.id:04d}"
    cfg.run_id = run.id
    cfg.save(run_dir)
    run = store.update_run(run.id, run_dir=str(run_dir), config=asdict(cfg))
    return run, run_dir


def train_command(run_dir: Path) -> list[str]:
    from alignment.rewards.run import SPEC

    if (Path(run_dir) / SPEC).exists():  # a reward model's run: it resumes by itself (features kept)
        return [sys.executable, "-m", "alignment.rewards.run", str(run_dir)]
    cmd = [sys.executable, "-m", "alignment.train", str(run_dir)]
    if (Path(run_dir) / CHECKPOINT).exists():
        cmd.append("--resume")
    return cmd


def record_trainer_exit(store: Store, run_id: int, code: int | None, last_output: str = "") -> str | None:
    """After a trainer process ended: if it could not record why (killed, crashed hard), mark its run
    failed with the reason and return that reason; None when the run's record already says how it ended."""
    run = store.get_run(run_id)
    if run.status not in ("running", "queued"):
        return None
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = (f"the trainer was killed by {name}" + (" (out of memory, or killed by hand)" if name == "SIGKILL" else "")
               + " before it could report")
    else:
        why = (f"the trainer exited with status {code}" if code is not None else "the trainer process ended") + \
            " without reporting"
    last = last_output.strip().splitlines()[-1] if last_output.strip() else ""
    store.update_run(run_id, status="failed", pid=None, exit_code=code, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     error=f"{why}: {last or 'no log'}; resume continues from its last checkpoint")
    return f"run {run_id}: {why}; marked failed -- resume continues from its last checkpoint"


def pid_alive(pid: int | None) -> bool:
    """Whether ``pid`` is a live (not zombie) trainer: ``alignment.train`` (an adapter) or
    ``alignment.rewards.run`` (a reward model)."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, PermissionError, OSError):
        return False
    proc = Path(f"/proc/{int(pid)}")
    if proc.exists():  # Linux: rule out a recycled pid and a zombie
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "alignment.train" not in cmdline and "alignment.rewards.run" not in cmdline:
                return False
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            return state != "Z"
        except OSError:
            return False
    return True


def log_tail(run_dir: str | Path | None, lines: int = 20) -> str:
    if not run_dir:
        return ""
    path = Path(run_dir) / LOG_FILE
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 64_000))
        text = f.read().decode(errors="replace")
    # tqdm redraws with carriage returns: keep the last state of each line
    out = [ln.rsplit("\r", 1)[-1] for ln in text.replace("\r\n", "\n").split("\n")]
    return "\n".join([ln for ln in out if ln.strip()][-lines:])


def read_metrics(run_dir: str | Path | None) -> list[dict[str, Any]]:
    if not run_dir:
        return []
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written right now
            continue
    # a resumed run appends again from its checkpoint's step: keep each step's last record
    by_step = {r["step"]: r for r in out if "step" in r}
    return [by_step[s] for s in sorted(by_step)]


def progress(run: Run) -> dict[str, Any]:
    """Step, total, fraction and ETA (seconds, None when unknown) of a run."""
    total = run.total_steps or int(run.config.get("steps") or 0) or None
    records = read_metrics(run.run_dir)
    step = records[-1]["step"] if records else (run.step or 0)
    eta = None
    if run.status == "running" and records and total:
        done = [r for r in records if "seconds" in r]
        if len(done) >= 2 and done[-1]["seconds"] > done[0]["seconds"]:
            per_step = (done[-1]["seconds"] - done[0]["seconds"]) / max(1, done[-1]["step"] - done[0]["step"])
            eta = per_step * (total - step)
    return {"step": step, "total": total, "fraction": (step / total) if total else 0.0, "eta": eta}


class RunQueue:
    """One training process at a time, started from the queue by a watcher thread."""

    def __init__(self, data_dir: str | Path, *, poll: float = 0.5, on_change: Callable[[], None] | None = None):
        with Store.open(data_dir) as store:
            self.data_dir = store.data_dir
        self.poll = poll
        self.on_change = on_change
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._proc_run: int | None = None
        self._device: str | None = None
        self._cancelled: dict[int, float] = {}  # run id -> when cancel was asked
        self._adopted: int | None = None  # a run of an earlier app process that is still alive
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.notes: list[str] = []

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> "RunQueue":
        self.notes = self.reconcile()
        self._thread = threading.Thread(target=self._loop, name="palate-run-queue", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching; a running training process goes on (the next app start adopts it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def reconcile(self) -> list[str]:
        """Match the runs recorded as running (or started but not yet running) against live
        processes. Returns what changed, readably."""
        notes = []
        with Store.open(self.data_dir) as store:
            started = [r for r in store.list_runs(status="queued") if r.pid is not None]
            for run in store.list_runs(status="running") + started:
                if pid_alive(run.pid) and self._adopted is None:
                    self._adopted = run.id
                    self._device = run.config.get("device")
                    from app import generation

                    generation.reserve_for_training(self._device, run.id)
                    notes.append(f"run {run.id} is still training (pid {run.pid}); watching it")
                elif pid_alive(run.pid):  # cannot happen through the app (one at a time); say so
                    notes.append(f"run {run.id} is also training (pid {run.pid}); it is not watched")
                else:
                    store.update_run(run.id, status="failed", pid=None, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                     error="the training process ended while Palate was not watching (app or "
                                           "machine restart); resume continues from the last checkpoint")
                    notes.append(f"run {run.id} was interrupted: marked failed (resumable)")
        return notes

    # -- requests ------------------------------------------------------------
    def submit(self, *, modality: str, method: str, settings: dict[str, Any]) -> Run:
        with Store.open(self.data_dir) as store:
            run, run_dir = create_run(store, modality=modality, method=method, settings=settings)
        (run_dir / QUEUE_MARKER).write_text("")
        self.wake()
        return run

    def submit_reward(self, settings: dict[str, Any]) -> Run:
        """Queue a reward model's training (see :func:`create_reward_run`)."""
        with Store.open(self.data_dir) as store:
            run, run_dir = create_reward_run(store, settings)
        (run_dir / QUEUE_MARKER).write_text("")
        self.wake()
        return run

    def cancel(self, run_id: int) -> str:
        with self._lock, Store.open(self.data_dir) as store:
            run = store.get_run(run_id)
            pid = self._proc.pid if (self._proc is not None and self._proc_run == run_id) else run.pid
            if run.status in ("queued", "running") and run_id in self._cancelled:
                waited = time.time() - self._cancelled[run_id]
                if waited < KILL_AFTER_S or not pid_alive(pid):
                    # a second SIGTERM would make the trainer skip its checkpoint
                    return f"run {run_id} is already stopping"
                os.kill(int(pid), signal.SIGKILL)  # it ignored the request for KILL_AFTER_S: stop it now
                return f"run {run_id} did not stop in {KILL_AFTER_S:.0f} s: killed (resume continues from its last " \
                       "checkpoint)"
            if run.status in ("queued", "running") and pid_alive(pid):
                self._cancelled[run_id] = time.time()
                os.kill(int(pid), signal.SIGTERM)  # the trainer checkpoints, then marks the run cancelled
                return f"run {run_id}: stopping after the current step (it saves a checkpoint; resume continues it)"
            if run.status == "queued":
                if run.run_dir:
                    (Path(run.run_dir) / QUEUE_MARKER).unlink(missing_ok=True)
                store.update_run(run_id, status="cancelled", error="removed from the queue before it started")
                return f"run {run_id} removed from the queue"
            if run.status == "running":
                raise ValueError(f"run {run_id} has no live process to cancel")
            raise ValueError(f"run {run_id} is {run.status}, not running or queued: nothing to cancel")

    def resume(self, run_id: int) -> str:
        with Store.open(self.data_dir) as store:
            run = store.get_run(run_id)
            if run.status not in ("cancelled", "failed"):
                raise ValueError(f"run {run_id} is {run.status}; only a cancelled or failed run can be resumed")
            if self.running_run() == run_id or pid_alive(run.pid):
                raise ValueError(f"run {run_id} is still stopping; resume it in a moment")
            from alignment.rewards.run import SPEC

            if not run.run_dir or not any((Path(run.run_dir) / f).exists() for f in ("config.json", SPEC)):
                raise ValueError(f"run {run_id} has no run directory to resume from")
            (Path(run.run_dir) / QUEUE_MARKER).write_text("")
            store.update_run(run_id, status="queued", error=None, exit_code=None, finished_at=None, pid=None)
        self.wake()
        from alignment.rewards.run import FEATURES

        if (Path(run.run_dir) / FEATURES).exists():
            return f"run {run_id} queued again (reads its candidates' features back)"
        has_checkpoint = (Path(run.run_dir) / CHECKPOINT).exists()
        return f"run {run_id} queued again" + (" (continues from its checkpoint)" if has_checkpoint else
                                                " (no checkpoint yet: starts from step 0)")

    def wake(self) -> None:
        if self._thread is None:  # not started (tests): do one round now
            self._tick()

    def running_run(self) -> int | None:
        """The run being trained now (no lock: the status line must never wait on the watcher)."""
        proc, run = self._proc, self._proc_run
        return run if proc is not None else self._adopted

    # -- the watcher ---------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception as e:  # keep watching whatever happens; say why
                print(f"[palate] run queue: {type(e).__name__}: {e}", file=sys.stderr)
            self._stop.wait(self.poll)

    def _tick(self) -> None:
        changed = False
        nxt = None
        if self._proc is None and self._adopted is None:
            nxt = self._next_queued()
            if nxt is not None:  # CUDA: free the UI's models first (may wait for a generation): not under the lock
                from app import generation

                generation.reserve_for_training(nxt.config.get("device"), nxt.id)
        with self._lock:
            if self._proc is not None and self._proc.poll() is not None:
                self._finish(self._proc_run, self._proc.returncode)
                self._proc, self._proc_run, changed = None, None, True
            if self._adopted is not None:
                with Store.open(self.data_dir) as store:
                    run = store.get_run(self._adopted)
                if not pid_alive(run.pid):
                    self._finish(run.id, None)  # records an unreported end; always frees the GPU reservation
                    self._adopted, changed = None, True
            if self._proc is None and self._adopted is None and nxt is not None:
                changed = self._start(nxt) or changed
            elif nxt is not None:
                from app import generation

                generation.release_from_training(nxt.config.get("device"))
        if changed and self.on_change is not None:
            self.on_change()

    def _next_queued(self) -> Run | None:
        """The oldest run queued here (the CLI's own runs have no marker and are left alone)."""
        with Store.open(self.data_dir) as store:
            for run in store.list_runs(status="queued"):
                if run.run_dir and (Path(run.run_dir) / QUEUE_MARKER).exists():
                    return run
        return None

    def _start(self, run: Run) -> bool:
        """Start ``run``'s trainer (the GPU is already reserved for it)."""
        from app import generation

        run_dir = Path(run.run_dir)
        self._device = run.config.get("device")
        with Store.open(self.data_dir) as store:
            if store.get_run(run.id).status != "queued" or not (run_dir / QUEUE_MARKER).exists():
                generation.release_from_training(self._device)  # cancelled meanwhile
                return False
            with open(run_dir / LOG_FILE, "ab") as log:
                log.write(f"\n$ {' '.join(train_command(run_dir))}\n".encode())
                log.flush()
                env = {**os.environ, "PYTHONUNBUFFERED": "1"}
                try:
                    self._proc = subprocess.Popen(train_command(run_dir), stdout=log, stderr=subprocess.STDOUT,
                                                  stdin=subprocess.DEVNULL, env=env, start_new_session=True)
                except OSError as e:
                    generation.release_from_training(self._device)
                    (run_dir / QUEUE_MARKER).unlink(missing_ok=True)
                    store.update_run(run.id, status="failed", error=f"could not start the trainer: {e}")
                    return False
            self._proc_run = run.id
            self._cancelled.pop(run.id, None)
            store.update_run(run.id, pid=self._proc.pid)
            (run_dir / QUEUE_MARKER).unlink(missing_ok=True)  # started: no longer waiting
        return True

    def _finish(self, run_id: int | None, code: int | None) -> None:
        """The process ended: if the trainer could not record why, record it here."""
        if run_id is None:
            return
        from app import generation

        generation.release_from_training(self._device)
        with Store.open(self.data_dir) as store:
            run = store.get_run(run_id)
            if run.run_dir and (Path(run.run_dir) / QUEUE_MARKER).exists():
                return  # queued again (resumed) since: not this process's business any more
            if run.status in ("running", "queued") and run_id in self._cancelled:
                store.update_run(run_id, status="cancelled", pid=None, exit_code=code,
                                 finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                 error="cancelled before the trainer could checkpoint; resume starts it again")
            else:
                record_trainer_exit(store, run_id, code, log_tail(run.run_dir, 6))
