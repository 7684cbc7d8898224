"""``python -m alignment.rewards.run RUN_DIR``: train a reward model as a run of the queue.

The run directory holds ``reward.json`` (what to train: name, modality, model, folds, head settings,
dimensions, backbone). Like the adapter trainer, one process per run (its lock), progress in the run
record (a step per fold of the held-out accuracy, and one for the final fit) and ``metrics.jsonl``,
SIGTERM stops it between steps (cancelled), and running it again resumes: the candidates' features,
the slow part, are kept in ``features.safetensors`` and read back. When it ends the reward model's
next version is in the store and the run's last metrics hold its accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alignment.errors import TrainingError
from alignment.run_dir import LOCK_FILE, METRICS, lock_run  # noqa: F401  (LOCK_FILE: part of the interface)

SPEC = "reward.json"
FEATURES = "features.safetensors"
METHOD = "reward-model"  # the method column of a reward model's run


@dataclass
class RewardRunConfig:
    data_dir: str
    modality: str
    model: str
    name: str
    folds: int = 5
    noise_level: float | None = None
    noise_aware: bool = False  # learn every vote at several noise levels (a step-aware model for SPO)
    summary: bool = False  # read only the (predicted) clean sample's summary, not the denoiser's pooled block
    hidden: int = 64
    epochs: int = 300
    seed: int = 0
    dimensions: list[str] | None = None
    backbone: str | None = None
    device: str | None = None
    modality_source: str | None = None
    run_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / SPEC).write_text(json.dumps(asdict(self), indent=2, sort_keys=True))

    @classmethod
    def load(cls, run_dir: Path) -> "RewardRunConfig":
        return cls(**json.loads((Path(run_dir) / SPEC).read_text()))


class _Stop(Exception):
    pass


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def run(run_dir: Path, stop_after: int | None = None) -> int:
    """Train the reward model of ``run_dir``; 0 done, 1 failed, 130 stopped (cancelled)."""
    from modalities import registry
    from modalities.protocol import ModelRef
    from storage import Store

    from . import service
    from .learned import HeadConfig

    run_dir = Path(run_dir)
    cfg = RewardRunConfig.load(run_dir)
    store = Store.open(cfg.data_dir)
    stop = {"signal": None}
    old = {s: signal.signal(s, lambda signum, _f: stop.__setitem__("signal", signum))
           for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        lock = lock_run(run_dir)
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        store.close()
        return 1
    total = cfg.folds + 1
    mark = (lambda **f: store.update_run(cfg.run_id, **f)) if cfg.run_id is not None else (lambda **f: None)
    mark(status="running", pid=os.getpid(), started_at=now(), error=None, step=0, total_steps=total,
         metrics_path=str(run_dir / METRICS))
    t0 = time.monotonic()
    metrics_file = open(run_dir / METRICS, "w", encoding="utf-8")

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {msg}", flush=True)

    def on_fold(fold: int, accuracy: float | None) -> None:
        step = fold + 1
        rec = {"step": step, "phase": "final fit" if fold == cfg.folds else f"fold {fold + 1} of {cfg.folds}",
               ("train_accuracy" if fold == cfg.folds else "heldout_accuracy"): accuracy,
               "elapsed": round(time.monotonic() - t0, 2)}
        metrics_file.write(json.dumps(rec) + "\n")
        metrics_file.flush()
        mark(step=step, last_metrics=rec)
        say(f"step {step}/{total}: {rec['phase']}, accuracy " + ("n/a" if accuracy is None else f"{accuracy:.1%}"))
        if stop_after is not None and step >= stop_after:
            stop["signal"] = "stop-after"
        if stop["signal"] is not None:
            raise _Stop()

    try:
        registry.ensure(cfg.modality, cfg.modality_source)
        adapter = None
        if not cfg.backbone:
            say(f"loading {cfg.model}")
            adapter = registry.get(cfg.modality).load(ModelRef(cfg.model), device=cfg.device,
                                                      cache_dir=Path(cfg.data_dir) / "cache")
        if stop["signal"] is not None:
            raise _Stop()
        record, metrics = service.train(
            store, adapter, modality=cfg.modality, name=cfg.name, model=cfg.model, folds=cfg.folds,
            noise_level=cfg.noise_level, cfg=HeadConfig(hidden=cfg.hidden, epochs=cfg.epochs, seed=cfg.seed),
            dimensions=cfg.dimensions, backbone=cfg.backbone, device=cfg.device, progress=say,
            features_cache=run_dir / FEATURES, on_fold=on_fold, noise_aware=cfg.noise_aware, summary=cfg.summary)
        final = {k: v for k, v in metrics.items() if k != "fold_accuracies"} | {"reward_model": record.label}
        mark(status="completed", exit_code=0, pid=None, finished_at=now(), step=total, last_metrics=final,
             data_hash=record.data_hash)
        acc = metrics["heldout_accuracy"]
        say(f"done: reward model {record.label}, held-out pair accuracy "
            + ("n/a" if acc is None else f"{acc:.1%}") + f" ({cfg.folds}-fold); file {record.path}")
        return 0
    except _Stop:
        mark(status="cancelled", pid=None, exit_code=130, finished_at=now(),
             error="stopped; resume reads the features back and trains the head again")
        say("stopped (cancelled); resume reads the features back")
        return 130
    except (ValueError, TrainingError) as e:
        mark(status="failed", error=str(e), exit_code=1, pid=None, finished_at=now())
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        mark(status="failed", error=f"{type(e).__name__}: {e}", exit_code=1, pid=None, finished_at=now())
        raise
    finally:
        metrics_file.close()
        for s, h in old.items():
            signal.signal(s, h)
        store.close()
        if lock is not None:
            lock.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m alignment.rewards.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help=f"a run directory holding {SPEC}")
    ap.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)  # tests: stop as if cancelled
    args = ap.parse_args(argv)
    return run(Path(args.run_dir), stop_after=args.stop_after)


if __name__ == "__main__":
    sys.exit(main())
