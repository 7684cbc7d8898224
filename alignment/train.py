"""The LoRA preference trainer: ``python -m alignment.train RUN_DIR [--resume]``.

One loop for every modality and method, through the modality protocol (``modalities.protocol``) and
the loss registry (``alignment.losses``); it names neither. A run goes through five stages:

1. **setup** -- read ``RUN_DIR/config.json`` (a :class:`~alignment.config.TrainConfig`), load the model
   through its modality adapter and wrap its trainable module with a LoRA adapter (peft); only the
   LoRA weights train;
2. **data** -- the example source (:mod:`alignment.sources`): the stored judgments, winner first (or
   ranked groups for listwise methods), streamed in a fixed, seed-determined order;
3. **resume** -- with ``--resume``, the checkpoint's LoRA, optimizer and step (only an exact resume is
   allowed: same config, processes, optimizer, precision and data);
4. **loop** -- for each micro-batch, score the policy and the reference from generators in the same
   state (so both see the same noise and t) and apply the method's loss; log every step to
   ``RUN_DIR/metrics.jsonl`` and (at most once a second) to the run record; checkpoint every
   ``checkpoint_every`` steps and on SIGTERM/Ctrl-C; stop on a non-finite loss or gradient, keeping
   the last good checkpoint;
5. **save** -- the adapter into ``RUN_DIR/adapter`` in its modality's format, with ``palate.json``,
   registered in the store.

The reference is the model the run starts from, never a second copy of it:

- a fresh run: the *base* model, i.e. the trained module with its LoRA adapter disabled;
- ``init_adapter`` (continuing from an earlier adapter): base + that adapter. It is loaded as a second,
  frozen LoRA named ``reference`` (a LoRA's worth of memory); the new adapter starts as a copy of it and
  trains, and the reference is the same module with ``reference`` active instead. The saved adapter is
  a whole adapter (base -> tuned), not a difference to the earlier one.

``cache_reference`` computes each micro-batch's reference scores once: the data order is then the same
every epoch and a micro-batch keeps its noise and t, so later epochs reuse them (for diffusion and flow
models this trades noise diversity for speed; autoregressive scores are deterministic anyway).

The same command runs under ``accelerate launch`` (``--num_processes N``, GPUs or ``--cpu``): each
process takes its share of every step's micro-batches and the LoRA gradients are averaged, so N
processes with ``grad_accum`` a give the same updates as one process with ``grad_accum`` N*a. Only the
first process writes (metrics, checkpoints, the store, the adapter).

Mixed precision (``mixed_precision``: auto = bf16 on a CUDA GPU that has it, else fp16, none on CPU)
runs the forward passes under autocast, LoRA weights stay float32 and fp16 uses a gradient scaler.
``optimizer``: auto = 8-bit AdamW (bitsandbytes) on CUDA when bitsandbytes is installed, else AdamW.

``--resume`` continues exactly: same data order, same noise, same optimizer state, so the loss curve
equals an uninterrupted run's. One trainer per run: a second one is refused while the first lives, and
a completed run is left as it is.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from modalities import lora
from modalities.loading import ADAPTER_INFO  # noqa: F401  (the file beside every saved adapter)

from .config import TrainConfig
from .errors import TrainingError
from .lora_setup import _linear_leaves, add_lora, adapter_disabled, continue_from, lora_state, reference_active, save_adapter  # noqa: F401
from .losses import get_loss
from .run_dir import (CHECKPOINT, LOCK_FILE, METRICS, last_record, load_checkpoint, lock_run,  # noqa: F401
                      progress_bar, refuse_completed)
from .runtime import Processes, make_optimizer, resolve_precision
from .sources import ExampleSource, StoredJudgments, build_examples, example_index, noise_seed  # noqa: F401



def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Training:
    """One run of the trainer, stage by stage (see the module docstring)."""

    def __init__(self, run_dir: Path, *, stop_after: int | None = None, source: ExampleSource | None = None):
        from storage import Store

        self.run_dir = Path(run_dir)
        self.cfg = TrainConfig.load(self.run_dir)
        self.spec = get_loss(self.cfg.method)
        self.stop_after = stop_after
        self.source = source
        torch.manual_seed(self.cfg.seed)
        self.procs = Processes(cpu=self.cfg.device == "cpu" or not torch.cuda.is_available())
        self.store = Store.open(self.cfg.data_dir)
        self.run_id = self.cfg.run_id
        self.lock = None
        self.metrics_file = None
        self.old_handlers: dict[int, Any] = {}
        self.stop: dict[str, Any] = {"signal": None}
        self.step = 0

    def mark(self, **fields: Any) -> None:
        """Update the run record (the first process only)."""
        if self.run_id is not None and self.procs.main:
            self.store.update_run(self.run_id, **fields)

    # -- 0. claim the run ---------------------------------------------------------------
    def claim(self) -> str | None:
        """One trainer per run, and a completed run stays as it is; returns why not, or None. A refusal
        leaves the run record alone: it belongs to the live trainer, or records a finished run."""
        refusal = None
        if self.procs.main:
            try:
                self.lock = lock_run(self.run_dir)
                refuse_completed(self.store, self.cfg, self.run_dir)
            except TrainingError as e:
                refusal = str(e)
        if self.procs.any(refusal is not None):
            return refusal or "another process of this run was refused"
        return None

    # -- 1. setup: the model and its LoRA ---------------------------------------------------
    def setup(self) -> None:
        from modalities import registry
        from modalities.protocol import ModelRef

        cfg, spec, procs = self.cfg, self.spec, self.procs
        # every process holds the model; under accelerate each on its own device
        device = cfg.device
        if procs.world > 1 or device is None:
            device = "cpu" if procs.state.device.type == "cpu" else str(procs.state.device)
        registry.ensure(cfg.modality, cfg.modality_source)  # a plugin modality: import it here too
        self.adapter = registry.get(cfg.modality).load(ModelRef(cfg.model, revision=cfg.model_revision), device=device,
                                                       cache_dir=Path(cfg.data_dir) / "cache")
        kind = self.adapter.score_kind.value
        if kind not in spec.score_kinds:
            from .methods import methods_for

            ok = methods_for((kind,), registry.spec(cfg.modality).capabilities)
            raise TrainingError(f"method {cfg.method!r} is not for {cfg.modality} models with {kind} scores "
                                f"({cfg.model}); use one of the methods for {kind} models: {', '.join(ok)}")
        self.module = self.adapter.trainable_module()
        if cfg.gradient_checkpointing:
            for name in ("enable_gradient_checkpointing", "gradient_checkpointing_enable"):  # diffusers, transformers
                if hasattr(self.module, name):
                    getattr(self.module, name)()
                    break
        self.adapter.configure_scores(per_token=cfg.per_token_scores)
        try:
            self.adapter.configure_training(**cfg.modality_options)
        except ValueError as e:
            raise TrainingError(f"modality_options: {e}") from None
        if cfg.init_adapter:
            self.params = continue_from(self.adapter, self.module, cfg)
            self.reference_model = reference_active
        else:
            self.params = add_lora(self.module, cfg, cfg.lora_targets or self.adapter.lora_target_modules())
            self.reference_model = lambda module: adapter_disabled(module)  # looked up now: tests count the calls
        self.dev = torch.device(self.adapter.device)
        self.precision = resolve_precision(cfg.mixed_precision, self.dev)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.optimizer, self.optimizer_name = make_optimizer(self.params, cfg, self.dev)
        self.scaler = torch.amp.GradScaler(self.dev.type, enabled=self.precision == "fp16")

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.dev.type, dtype=self.amp_dtype)

    # -- 2. data: the example source ------------------------------------------------------------
    def load_data(self) -> None:
        cfg, procs = self.cfg, self.procs
        if self.source is None and self.spec.online:
            import importlib

            module, _, name = self.spec.source.partition(":")
            self.source = getattr(importlib.import_module(module), name)(self.store, cfg, self.spec,
                                                                        cfg.data_model or self.adapter.model_name)
        elif self.source is None:
            self.source = StoredJudgments(self.store, cfg, self.spec, cfg.data_model or self.adapter.model_name)
        if self.source.online and procs.world > 1:
            raise TrainingError(f"{cfg.method} samples with the model as it trains and runs in one process for now; "
                                f"start it without accelerate's {procs.world} processes")
        self.source.bind(self.adapter, self.module)
        self.data_hash = self.source.data_hash()  # in the run record and every exported adapter's metadata
        self.mark(data_hash=self.data_hash)
        self.per_step = cfg.batch_size * cfg.grad_accum * procs.world  # examples per optimizer step, all processes
        n = len(self.source)
        if n < (1 if self.source.online else cfg.batch_size):
            raise TrainingError(
                f"too few {self.source.noun} for this run: {n} for a batch size of {cfg.batch_size}"
                + (f" in the contexts {', '.join(cfg.contexts)}" if cfg.contexts else "")
                + "; judge more candidates or lower batch_size")
        if procs.main:
            print(f"training {cfg.method} on {n} {self.source.noun}: {self.dev.type}, {procs.world} process(es), precision "
                  f"{self.precision}, optimizer {self.optimizer_name}"
                  + (f", continuing from {cfg.init_adapter}" if cfg.init_adapter else ""), file=sys.stderr)

    # -- 3. resume -----------------------------------------------------------------------------
    def resume(self) -> None:
        """Load the checkpoint; only an exact continuation is allowed."""
        cfg, procs, ckpt = self.cfg, self.procs, self.run_dir / CHECKPOINT
        if not ckpt.exists():
            raise TrainingError(f"nothing to resume in {self.run_dir} (no {CHECKPOINT})")
        state = load_checkpoint(ckpt)
        if state["config_digest"] != cfg.digest():
            raise TrainingError(f"{self.run_dir}/config.json changed since the checkpoint; start a new run instead")
        if state.get("world", 1) != procs.world:
            raise TrainingError(f"the checkpoint was made by {state.get('world', 1)} process(es); "
                                f"resume it with the same number, not {procs.world}")
        was = {"optimizer": state.get("optimizer_name", self.optimizer_name),
               "precision": state.get("precision", self.precision), "data": state.get("data_hash", self.data_hash)}
        now_ = {"optimizer": self.optimizer_name, "precision": self.precision, "data": self.data_hash}
        changed = [f"{k} {was[k]} -> {now_[k]}" for k in was if was[k] != now_[k]]
        if changed:
            raise TrainingError(
                f"cannot resume exactly: {', '.join(changed)} since the checkpoint (another machine, a "
                "missing bitsandbytes, or new judgments); start a new run, or set the same optimizer and "
                "mixed_precision explicitly")
        lora.load_state_dict(self.module, state["lora"], "default")
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        metrics = self.run_dir / METRICS
        if procs.main and metrics.exists():  # steps after the checkpoint will be redone
            kept = [line for line in metrics.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= self.step]
            metrics.write_text("".join(line + "\n" for line in kept))

    def fresh_start(self) -> None:
        if (self.run_dir / CHECKPOINT).exists():
            raise TrainingError(f"{self.run_dir} already holds a checkpoint; pass --resume to continue it")
        if self.procs.main and (self.run_dir / METRICS).exists():  # a start killed before its first checkpoint
            (self.run_dir / METRICS).unlink()

    def save_checkpoint(self) -> None:
        if not self.procs.main:
            return
        ckpt = self.run_dir / CHECKPOINT
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"lora": lora_state(self.module), "optimizer": self.optimizer.state_dict(), "step": self.step,
                    "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                    "world": self.procs.world, "optimizer_name": self.optimizer_name, "precision": self.precision,
                    "data_hash": self.data_hash, "config_digest": self.cfg.digest()}, tmp)
        os.replace(tmp, ckpt)

    # -- 4. the loop ------------------------------------------------------------------------------
    def _on_signal(self, signum, _frame) -> None:
        if self.stop["signal"] is not None:  # asked twice: stop now, without the checkpoint
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        self.stop["signal"] = signum

    def _media(self, gid: int) -> bytes:
        if gid not in self._media_cache:
            self._media_cache[gid] = self.store.media_bytes(self.store.get_generation(gid))
        return self._media_cache[gid]

    def _reference_scores(self, batch, base: int, seed: int) -> torch.Tensor:
        key = self.source.recurring_key(base)
        if key is not None and key in self._reference_cache:
            return self._reference_cache[key]
        with torch.no_grad(), self.reference_model(self.module), self.autocast():
            ref = self.source.score(self.adapter, self.module, batch, torch.Generator("cpu").manual_seed(seed)).float()
        if key is not None:
            self._reference_cache[key] = ref
        return ref

    def _micro_batch(self, micro: int) -> tuple[dict[str, float], float | None]:
        """Forward and backward of one micro-batch: (its metrics / grad_accum, a non-finite loss or None)."""
        from modalities.protocol import Group

        cfg, spec, procs = self.cfg, self.spec, self.procs
        # this process's micro-batch: the (micro * world + rank)-th of the step
        base = self.step * self.per_step + (micro * procs.world + procs.rank) * cfg.batch_size
        examples = self.source.examples(base, cfg.batch_size)
        made = {k: v / cfg.grad_accum for k, v in self.source.metrics().items()}
        if not examples:  # an online source kept nothing this time: no loss, no gradient
            return made, None
        batch = self.source.batch(self.adapter, examples)
        if batch is None:
            batch = self.adapter.encode([Group(e.prompt, tuple(self._media(g) for g in e.generation_ids))
                                         for e in examples])
        seed = self.source.noise_seed(base)
        with self.autocast():
            policy = self.source.score(self.adapter, self.module, batch,
                                       torch.Generator("cpu").manual_seed(seed)).float()
        reference = self._reference_scores(batch, base, seed) if spec.needs_reference else None
        extra: dict[str, Any] = dict(self.source.loss_inputs(examples))
        if spec.passes_labels:
            extra["labels"] = torch.tensor([e.label for e in examples], dtype=torch.float32)
        if spec.listwise:
            extra["ranks"] = torch.tensor([list(e.ranks) for e in examples])
        if cfg.nll_reduction == "token" and self.loss_kwargs.get("nll"):
            counts = self.adapter.token_counts(batch)
            if counts is None:
                raise TrainingError(f"nll_reduction 'token' needs token counts, which {cfg.modality} samples "
                                    "do not have")
            extra["nll_tokens"] = counts[:, 0]
            extra["scores_per_token"] = cfg.per_token_scores
        loss, metrics = spec.fn(policy, reference, beta=cfg.effective_beta, **self.loss_kwargs, **extra)
        if not torch.isfinite(loss):
            return {}, loss.item()
        self.scaler.scale(loss / cfg.grad_accum).backward()
        out = {"loss": loss.item() / cfg.grad_accum, **made}
        out.update({k: v / cfg.grad_accum for k, v in metrics.items()})
        return out, None

    def _one_step(self) -> dict[str, Any]:
        """One optimizer step over grad_accum micro-batches (and every process's share)."""
        cfg, procs = self.cfg, self.procs
        lr = cfg.effective_lr * min(1.0, (self.step + 1) / cfg.warmup) if cfg.warmup else cfg.effective_lr
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        sums: Counter = Counter()
        bad_loss = None
        failure: Exception | None = None
        for micro in range(cfg.grad_accum):
            try:
                metrics, bad_loss = self._micro_batch(micro)
                if bad_loss is not None:
                    break
                for k, v in metrics.items():
                    sums[k] += v
            except Exception as e:  # several processes: tell the others before raising
                if procs.world == 1:
                    raise
                failure = e
                break
        if procs.any(failure is not None):
            if failure is not None:
                raise failure
            raise TrainingError("another process of this run failed; its error is printed above")
        if procs.any(bad_loss is not None):
            raise TrainingError(
                f"the loss became {bad_loss if bad_loss is not None else 'non-finite'} at step {self.step + 1}; "
                f"stopped, the last good checkpoint is kept. Lower the learning rate ({cfg.effective_lr}) "
                f"or beta ({cfg.effective_beta}).")
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        procs.mean_(grads)
        for p, g in zip(self.params, grads):
            p.grad = g
        names = sorted(sums)
        averaged = torch.tensor([sums[k] for k in names], dtype=torch.float64, device=procs.state.device)
        procs.mean_([averaged])
        sums = Counter(dict(zip(names, averaged.tolist())))
        if "loss" not in sums:  # an online source kept no example in any micro-batch: nothing to learn, no step
            self.step += 1
            return {"step": self.step, **{k: round(v, 6) for k, v in sums.items()}, "lr": lr,
                    "seconds": round(time.time() - self._t0, 2), "no_examples": True}
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        skipped = False
        if not torch.isfinite(grad_norm):
            if not self.scaler.is_enabled() or self._skipped_in_a_row >= 20:
                raise TrainingError(
                    f"the gradient became {grad_norm.item()} at step {self.step + 1}"
                    + (" (20 steps in a row under fp16)" if self.scaler.is_enabled() else "")
                    + f"; stopped, the last good checkpoint is kept. Lower the learning rate ({cfg.effective_lr}).")
            skipped = True  # fp16: the scaler skips this step and lowers its scale
        self._skipped_in_a_row = self._skipped_in_a_row + 1 if skipped else 0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        record = {"step": self.step, **{k: round(v, 6) for k, v in sums.items()},
                  "grad_norm": round(float(grad_norm), 6), "lr": lr, "seconds": round(time.time() - self._t0, 2)}
        if skipped:
            record["skipped"] = True
        return record

    def loop(self) -> bool:
        """Train to ``steps``; False when stopped early (a signal, ``--stop-after``), checkpointed."""
        cfg, procs = self.cfg, self.procs
        self.old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        self.loss_kwargs = {**self.spec.defaults, **cfg.loss_kwargs}
        self._media_cache: dict[int, bytes] = {}
        self._reference_cache: dict[int, torch.Tensor] = {}
        # validation samples first, on a fresh run: the LoRA starts at zero, so this is the base
        if self.step == 0 and procs.main:
            self.validation_samples("start", {"step": 0})
        procs.barrier()
        self.metrics_file = open(self.run_dir / METRICS, "a") if procs.main else None
        self._t0 = time.time()
        progress = progress_bar(cfg.steps, self.step) if procs.main else (lambda *_: None)
        self._skipped_in_a_row = 0
        last_mark = 0.0
        self.mark(step=self.step, total_steps=cfg.steps)
        while self.step < cfg.steps and not procs.any(self.stop["signal"] is not None):
            record = self._one_step()
            if self.metrics_file is not None:
                self.metrics_file.write(json.dumps(record) + "\n")
                self.metrics_file.flush()
            progress(self.step, record)
            if time.time() - last_mark >= 1.0 or self.step == cfg.steps:  # the run record, at most once a second
                self.mark(step=self.step, last_metrics=record)
                last_mark = time.time()
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save_checkpoint()
            if self.stop_after is not None and self.step >= self.stop_after:
                self.stop["signal"] = "stop_after"
        if self.metrics_file is not None:
            self.metrics_file.close()
        self.restore_signals()
        if self.step < cfg.steps:
            self.save_checkpoint()
            last = last_record(self.run_dir) if procs.main else None
            if last is not None:
                self.mark(step=self.step, last_metrics=last)
            self.mark(status="cancelled", error=f"stopped at step {self.step}; resume with --resume", pid=None,
                      exit_code=130, finished_at=now())
            if procs.main:
                print(f"stopped at step {self.step}; continue with: python -m alignment.train {self.run_dir} "
                      "--resume", file=sys.stderr)
            return False
        return True

    def validation_samples(self, stage: str, extra: dict[str, Any]) -> list[int]:
        """Sample fixed prompts and seeds with the model as it is now (LoRA on) and store them as
        generations tied to the run, so start and end can be compared side by side."""
        from modalities import registry
        from modalities.protocol import GenerationRequest

        cfg = self.cfg
        if cfg.run_id is None or cfg.validation_count == 0:
            return []
        prompts = list(cfg.validation_prompts or self.source.prompts())[: cfg.validation_count]
        family = registry.spec(cfg.modality).media if cfg.modality in registry.with_spec() else None
        ids = []
        with torch.no_grad():
            for prompt in prompts:
                request = GenerationRequest(prompt, n=cfg.validation_seeds, seeds=tuple(range(cfg.validation_seeds)))
                for sample in self.adapter.generate(request):
                    kw = sample.provenance.storage_kwargs()
                    kw["params"] = {**kw["params"], "validation": stage, "run_id": cfg.run_id, **extra}
                    ids.append(self.store.add_generation(prompt=prompt, media=sample.data, mime=sample.mime,
                                                         run_id=cfg.run_id, media_family=family, **kw).id)
        return ids

    # -- 5. save ------------------------------------------------------------------------------------
    def save(self) -> None:
        """The adapter, saved and (for a run of the store) registered -- by the first process."""
        cfg = self.cfg
        if self.procs.main:
            info = {"method": cfg.method, "run_id": self.run_id, "data_hash": self.data_hash, "steps": self.step,
                    "init_adapter": cfg.init_adapter}
            out = save_adapter(self.adapter, self.module, self.run_dir / "adapter", info)
            self.validation_samples("end", {"step": self.step, "adapter": str(out)})
            if self.run_id is not None:
                self.store.add_adapter(
                    name=f"run{self.run_id}-{cfg.method}", modality=cfg.modality, base_model=self.adapter.model_name,
                    base_revision=self.adapter.revision, method=cfg.method, run_id=self.run_id, path=str(out),
                    metadata={"config": cfg.to_dict(), "examples": len(self.source), "steps": self.step,
                              "data_hash": self.data_hash},
                )
            self.mark(status="completed", exit_code=0, finished_at=now(), pid=None)
            print(f"done: {self.step} steps; adapter in {out}", file=sys.stderr)
        self.procs.barrier()

    # -- the whole run ---------------------------------------------------------------------------------
    def restore_signals(self) -> None:
        for s, h in self.old_handlers.items():
            signal.signal(s, h)
        self.old_handlers = {}

    def close(self) -> None:
        if self.metrics_file is not None and not self.metrics_file.closed:
            self.metrics_file.close()
        self.restore_signals()
        self.store.close()
        self.procs.close()
        if self.lock is not None:
            self.lock.close()  # the lock dies with the file (and with the process, however it ends)

    def run(self, resume: bool) -> int:
        refusal = self.claim()
        if refusal is not None:
            if self.procs.main:
                print(f"error: {refusal}", file=sys.stderr)
            self.close()
            return 1
        self.mark(status="running", pid=os.getpid(), started_at=now(), error=None,
                  metrics_path=str(self.run_dir / METRICS))
        try:
            self.setup()
            self.load_data()
            self.resume() if resume else self.fresh_start()
            if not self.loop():
                return 130
            self.save()
            return 0
        except TrainingError as e:
            self.mark(status="failed", error=str(e), exit_code=1, pid=None, finished_at=now())
            print(f"error: {e}", file=sys.stderr)
            return 1
        except Exception as e:
            self.mark(status="failed", error=f"{type(e).__name__}: {e}", exit_code=1, pid=None, finished_at=now())
            raise
        finally:
            self.close()


def train(run_dir: Path, *, resume: bool = False, stop_after: int | None = None) -> int:
    """Run (or ``resume``) the training run in ``run_dir``; returns the exit status (0 done, 1 failed or
    refused, 130 stopped early with a checkpoint)."""
    return Training(Path(run_dir), stop_after=stop_after).run(resume)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m alignment.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="a run directory holding config.json")
    ap.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    ap.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)  # tests: stop as if interrupted
    args = ap.parse_args(argv)
    try:
        return train(Path(args.run_dir), resume=args.resume, stop_after=args.stop_after)
    except ValueError as e:  # a bad config: say so plainly
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
