"""A run directory's files: its lock (one trainer per run), its checkpoint (tensors and plain values
only), its metrics log and the progress bar on stderr."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch

from modalities.loading import ADAPTER_INFO

from .config import TrainConfig
from .errors import TrainingError

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
LOCK_FILE = "trainer.lock"


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint this trainer wrote: tensors and plain values only. ``weights_only`` unpickling
    refuses anything else, so a planted pickle cannot run code when a run is resumed."""
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        why = next((line.strip() for line in str(e).splitlines() if "Unsupported global" in line), None)
        if why is None:  # not a pickle at all, or a truncated one
            raise TrainingError(f"{path} is damaged or not a checkpoint; delete it and start a new run") from None
        raise TrainingError(
            f"{path} is not a checkpoint Palate wrote: it holds objects other than tensors and plain values, "
            f"which could run code, so it was not loaded ({why[:160]}). Delete it and start a new run") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise TrainingError(f"{path} is damaged or not a checkpoint ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:160] if str(e) else ''}); delete it and start a new run") from None
    if not isinstance(state, dict) or "lora" not in state or "step" not in state:
        raise TrainingError(f"{path} is not a Palate training checkpoint; delete it and start a new run")
    return state


def lock_run(run_dir: Path):
    """Hold ``RUN_DIR/trainer.lock`` (an flock, released when this process ends, even by SIGKILL) so a
    second trainer on the same run is refused; the file names the holder's pid. Returns the open file."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no flock; one trainer per run is then on the user
        return None
    f = open(run_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise TrainingError(f"another trainer (pid {holder}) is training {run_dir}; wait for it to finish, or "
                            "cancel it (Cancel in the app, or kill -TERM " + holder + ") and resume") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def refuse_completed(store, cfg: TrainConfig, run_dir: Path) -> None:
    """A completed run is left as it is: training it again would rewrite its adapter."""
    done = (store.get_run(cfg.run_id).status == "completed" if cfg.run_id is not None
            else (run_dir / "adapter" / ADAPTER_INFO).is_file())
    if done:
        name = f"run {cfg.run_id}" if cfg.run_id is not None else str(run_dir)
        raise TrainingError(
            f"{name} is already completed (its adapter is in {run_dir / 'adapter'}); it is left as it is. To train "
            f"again, start a new run (python -m app train ...), or continue from this adapter with "
            f"--init-adapter {run_dir / 'adapter'}")


def last_record(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / METRICS
    if not path.exists():
        return None
    lines = path.read_text().splitlines()
    return json.loads(lines[-1]) if lines else None


def progress_bar(total: int, start: int):
    """A one-line progress bar on stderr (tqdm), fed with each step's metrics."""
    from tqdm import tqdm

    bar = tqdm(total=total, initial=start, desc="training", unit="step", file=sys.stderr, dynamic_ncols=True,
               disable=None)

    def update(step: int, record: dict[str, Any]) -> None:
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{record.get('loss', math.nan):.4f}", acc=f"{record.get('reward_accuracy', math.nan):.2f}")
        if step >= total:
            bar.close()

    return update
