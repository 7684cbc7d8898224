"""The LoRA preference trainer: ``python -m alignment.train RUN_DIR [--resume]``.

One loop for every modality, through the modality protocol (see
``modalities.protocol``):

1. read ``RUN_DIR/config.json`` (a :class:`~alignment.config.TrainConfig`);
2. load the model through its modality adapter and wrap its trainable module
   with a LoRA adapter (peft); only the LoRA weights train;
3. build the data from the preference store: winner-first pairs (or ranked
   groups for listwise losses), in a fixed, seed-determined order;
4. for each micro-batch, score the policy and -- with the adapter disabled,
   which is the base model -- the reference, from generators in the same state
   so both see the same noise and t; apply the method's loss;
5. log every step to ``RUN_DIR/metrics.jsonl`` and the run record in the
   store; checkpoint every ``checkpoint_every`` steps and on SIGTERM/Ctrl-C;
   stop on a non-finite loss or gradient, keeping the last good checkpoint;
6. save the adapter into ``RUN_DIR/adapter`` (diffusers LoRA format).

The reference is always the *base* model with the adapter disabled. (Training
on top of an earlier adapter is not offered yet: disabling the new adapter
would not give the earlier one back.)

``--resume`` continues exactly: same data order, same noise, same optimizer
state, so the loss curve equals an uninterrupted run's.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig
from .losses import get_loss

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why (and the run is marked failed)."""


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------


def build_examples(store, cfg: TrainConfig, data_model: str) -> list[dict[str, Any]]:
    """Training examples from the store: {prompt, generation_ids (winner/best first), label, ranks}."""
    spec = get_loss(cfg.method)
    if spec.listwise:
        groups = store.ranked_groups(modality=cfg.modality, model=data_model, min_size=2)
        if not groups:
            return []
        k = Counter(len(g.generation_ids) for g in groups).most_common(1)[0][0]
        out = []
        for g in groups:
            if len(g.generation_ids) != k:
                continue
            worst = max(r for r in g.ranks if r is not None) + 1
            out.append({"prompt": g.prompt, "generation_ids": list(g.generation_ids), "label": 1.0,
                        "ranks": [r if r is not None else worst for r in g.ranks]})
        return out
    pairs = store.preference_pairs(modality=cfg.modality, model=data_model, derivation=cfg.derivation)
    return [{"prompt": p.prompt, "generation_ids": [p.winner_id, p.loser_id], "label": p.label, "ranks": None}
            for p in pairs]


def example_index(cfg: TrainConfig, n: int, i: int) -> int:
    """The i-th example of the stream: a fresh seeded shuffle each epoch (so resuming at any
    step reproduces the same order without saving any data state)."""
    epoch, pos = divmod(i, n)
    order = list(range(n))
    random.Random(cfg.seed * 1_000_003 + epoch).shuffle(order)
    return order[pos]


# ---------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def adapter_disabled(module: torch.nn.Module):
    """The reference model: the same module with its LoRA adapter switched off."""
    module.disable_adapters()
    try:
        yield module
    finally:
        module.enable_adapters()


def add_lora(module: torch.nn.Module, cfg: TrainConfig, targets: list[str]) -> list[torch.nn.Parameter]:
    from peft import LoraConfig

    module.requires_grad_(False)
    module.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                  target_modules=targets, init_lora_weights=True))
    params = [p for n, p in module.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
        p.data = p.data.float()  # LoRA weights train in float32 even on an fp16 model
    if not params:
        raise TrainingError(f"LoRA found no modules named {targets} to wrap")
    return params


def lora_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(module).items()}


def save_adapter(adapter, module: torch.nn.Module, out: Path) -> Path:
    """The adapter in diffusers LoRA format (pipeline.load_lora_weights loads it)."""
    pipe = adapter.pipe
    state = lora_state(module)
    # the LoraConfig (rank, alpha, targets) travels in the file: without it a loader assumes alpha = rank
    config = module.peft_config["default"].to_dict()
    out.mkdir(parents=True, exist_ok=True)
    if adapter.family == "flow":
        type(pipe).save_lora_weights(out, transformer_lora_layers=state, transformer_lora_adapter_metadata=config,
                                     safe_serialization=True)
    else:
        type(pipe).save_lora_weights(out, unet_lora_layers=state, unet_lora_adapter_metadata=config,
                                     safe_serialization=True)
    return out


# ---------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------


def validation_samples(store, adapter, cfg: TrainConfig, examples: list[dict[str, Any]], stage: str,
                       extra: dict[str, Any]) -> list[int]:
    """Sample fixed prompts and seeds with the model as it is now (LoRA on) and store them as
    generations tied to the run, so start and end can be compared side by side."""
    from modalities.protocol import GenerationRequest

    if cfg.run_id is None or cfg.validation_count == 0:
        return []
    prompts = list(cfg.validation_prompts or dict.fromkeys(e["prompt"] for e in examples))[: cfg.validation_count]
    ids = []
    with torch.no_grad():
        for prompt in prompts:
            request = GenerationRequest(prompt, n=cfg.validation_seeds, seeds=tuple(range(cfg.validation_seeds)))
            for sample in adapter.generate(request):
                kw = sample.provenance.storage_kwargs()
                kw["params"] = {**kw["params"], "validation": stage, "run_id": cfg.run_id, **extra}
                ids.append(store.add_generation(prompt=prompt, media=sample.data, mime=sample.mime,
                                                run_id=cfg.run_id, **kw).id)
    return ids


def train(run_dir: Path, *, resume: bool = False, stop_after: int | None = None) -> int:
    from modalities import registry
    from modalities.protocol import Group, ModelRef
    from storage import Store

    run_dir = Path(run_dir)
    cfg = TrainConfig.load(run_dir)
    spec = get_loss(cfg.method)
    torch.manual_seed(cfg.seed)
    store = Store.open(cfg.data_dir)
    run_id = cfg.run_id

    def mark(**fields: Any) -> None:
        if run_id is not None:
            store.update_run(run_id, **fields)

    mark(status="running", pid=os.getpid(), started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), error=None,
         metrics_path=str(run_dir / METRICS))
    try:
        # 1. Model and LoRA
        adapter_cls = registry.get(cfg.modality)
        adapter = adapter_cls.load(ModelRef(cfg.model, revision=cfg.model_revision), device=cfg.device,
                                   latent_cache=Path(cfg.data_dir) / "cache" / "latents")
        kind = adapter.score_kind.value
        if kind not in spec.score_kinds:
            raise TrainingError(
                f"method {cfg.method!r} is not for {cfg.modality} models ({kind} scores); "
                f"use one of the methods for {kind} models"
            )
        module = adapter.trainable_module()
        if cfg.gradient_checkpointing and hasattr(module, "enable_gradient_checkpointing"):
            module.enable_gradient_checkpointing()
        params = add_lora(module, cfg, adapter.lora_target_modules())
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)

        # 2. Data (its hash goes into the run record and every exported adapter's metadata)
        examples = build_examples(store, cfg, cfg.data_model or adapter.model_name)
        data_hash = hashlib.sha256(json.dumps(examples, sort_keys=True).encode()).hexdigest()[:16]
        mark(data_hash=data_hash)
        per_step = cfg.batch_size * cfg.grad_accum
        if len(examples) < cfg.batch_size:
            raise TrainingError(
                f"too few {'rankings' if spec.listwise else 'preference pairs'} for this run: "
                f"{len(examples)} for a batch size of {cfg.batch_size}; judge more candidates or lower batch_size"
            )

        # 3. Resume
        step = 0
        ckpt = run_dir / CHECKPOINT
        if resume:
            if not ckpt.exists():
                raise TrainingError(f"nothing to resume in {run_dir} (no {CHECKPOINT})")
            state = torch.load(ckpt, map_location="cpu", weights_only=False)
            if state["config_digest"] != cfg.digest():
                raise TrainingError(f"{run_dir}/config.json changed since the checkpoint; start a new run instead")
            from peft.utils import set_peft_model_state_dict

            set_peft_model_state_dict(module, state["lora"])
            optimizer.load_state_dict(state["optimizer"])
            step = state["step"]
        elif ckpt.exists():
            raise TrainingError(f"{run_dir} already holds a checkpoint; pass --resume to continue it")

        def save_checkpoint() -> None:
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"lora": lora_state(module), "optimizer": optimizer.state_dict(), "step": step,
                        "config_digest": cfg.digest()}, tmp)
            os.replace(tmp, ckpt)

        stop = {"signal": None}

        def on_signal(signum, _frame):
            stop["signal"] = signum

        old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        loss_kwargs = {**spec.defaults, **cfg.loss_kwargs}
        media_cache: dict[int, bytes] = {}

        def media(gid: int) -> bytes:
            if gid not in media_cache:
                media_cache[gid] = store.media_bytes(store.get_generation(gid))
            return media_cache[gid]

        # 4. Loop (validation samples first, on a fresh run: the LoRA starts at zero, so this is the base)
        if step == 0:
            validation_samples(store, adapter, cfg, examples, "start", {"step": 0})
        metrics_file = open(run_dir / METRICS, "a")
        t0 = time.time()
        progress = _progress(cfg.steps, step)
        while step < cfg.steps and stop["signal"] is None:
            lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else cfg.lr
            for g in optimizer.param_groups:
                g["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            sums: Counter = Counter()
            for micro in range(cfg.grad_accum):
                base = step * per_step + micro * cfg.batch_size
                batch_ex = [examples[example_index(cfg, len(examples), base + b)] for b in range(cfg.batch_size)]
                batch = adapter.encode([Group(e["prompt"], tuple(media(g) for g in e["generation_ids"]))
                                        for e in batch_ex])
                seed = (cfg.seed * 1_000_003 + step) * 1_009 + micro
                policy = adapter.score(module, batch, torch.Generator("cpu").manual_seed(seed))
                reference = None
                if spec.needs_reference:
                    with torch.no_grad(), adapter_disabled(module):
                        reference = adapter.score(module, batch, torch.Generator("cpu").manual_seed(seed))
                extra: dict[str, Any] = {}
                if spec.needs_labels or cfg.method == "flow-rwr":
                    extra["labels"] = torch.tensor([e["label"] for e in batch_ex], dtype=torch.float32)
                if spec.listwise:
                    extra["ranks"] = torch.tensor([e["ranks"] for e in batch_ex])
                loss, metrics = spec.fn(policy, reference, beta=cfg.effective_beta, **loss_kwargs, **extra)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"the loss became {loss.item()} at step {step + 1}; stopped, the last good checkpoint is "
                        f"kept. Lower the learning rate ({cfg.lr}) or beta ({cfg.effective_beta})."
                    )
                (loss / cfg.grad_accum).backward()
                sums["loss"] += loss.item() / cfg.grad_accum
                for k, v in metrics.items():
                    sums[k] += v / cfg.grad_accum
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            if not torch.isfinite(grad_norm):
                raise TrainingError(
                    f"the gradient became {grad_norm.item()} at step {step + 1}; stopped, the last good checkpoint "
                    f"is kept. Lower the learning rate ({cfg.lr})."
                )
            optimizer.step()
            step += 1
            record = {"step": step, **{k: round(v, 6) for k, v in sums.items()},
                      "grad_norm": round(float(grad_norm), 6), "lr": lr, "seconds": round(time.time() - t0, 2)}
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()
            progress(step, record)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save_checkpoint()
            if stop_after is not None and step >= stop_after:
                stop["signal"] = "stop_after"
        metrics_file.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if step < cfg.steps:
            save_checkpoint()
            mark(status="cancelled", error=f"stopped at step {step}; resume with --resume", pid=None)
            print(f"stopped at step {step}; continue with: python -m alignment.train {run_dir} --resume", file=sys.stderr)
            return 130

        # 5. The adapter, saved and (for a run of the store) registered
        out = save_adapter(adapter, module, run_dir / "adapter")
        validation_samples(store, adapter, cfg, examples, "end", {"step": step, "adapter": str(out)})
        if run_id is not None:
            store.add_adapter(
                name=f"run{run_id}-{cfg.method}", modality=cfg.modality, base_model=adapter.model_name,
                base_revision=adapter.revision, method=cfg.method, run_id=run_id, path=str(out),
                metadata={"config": cfg.to_dict(), "examples": len(examples), "steps": step, "data_hash": data_hash},
            )
        mark(status="completed", exit_code=0, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), pid=None)
        print(f"done: {step} steps; adapter in {out}", file=sys.stderr)
        return 0
    except TrainingError as e:
        mark(status="failed", error=str(e), exit_code=1, pid=None)
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        mark(status="failed", error=f"{type(e).__name__}: {e}", exit_code=1, pid=None)
        raise
    finally:
        store.close()


def _progress(total: int, start: int):
    """A one-line progress bar on stderr (tqdm), fed with each step's metrics."""
    from tqdm import tqdm

    bar = tqdm(total=total, initial=start, desc="training", unit="step", file=sys.stderr, dynamic_ncols=True,
               disable=None)

    def update(step: int, record: dict[str, Any]) -> None:
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record.get('reward_accuracy', math.nan):.2f}")
        if step >= total:
            bar.close()

    return update


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
