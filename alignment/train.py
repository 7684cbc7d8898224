"""The LoRA preference trainer: ``python -m alignment.train RUN_DIR [--resume]``.

One loop for every modality, through the modality protocol (see
``modalities.protocol``):

1. read ``RUN_DIR/config.json`` (a :class:`~alignment.config.TrainConfig`);
2. load the model through its modality adapter and wrap its trainable module
   with a LoRA adapter (peft); only the LoRA weights train;
3. build the data from the preference store: winner-first pairs (or ranked
   groups for listwise losses), in a fixed, seed-determined order;
4. for each micro-batch, score the policy and the reference (see below), from
   generators in the same state so both see the same noise and t; apply the
   method's loss;
5. log every step to ``RUN_DIR/metrics.jsonl`` and (at most once a second) to
   the run record in the store; checkpoint every ``checkpoint_every`` steps and
   on SIGTERM/Ctrl-C; stop on a non-finite loss or gradient, keeping the last
   good checkpoint;
6. save the adapter into ``RUN_DIR/adapter`` in its modality's format (images:
   diffusers' LoRA file; language models: a PEFT folder) with ``palate.json``.

The reference is the model the run starts from, never a second copy of it:

- a fresh run: the *base* model, i.e. the trained module with its LoRA
  adapter disabled;
- ``init_adapter`` (continuing from an earlier adapter): base + that adapter.
  It is loaded as a second, frozen LoRA named ``reference`` (a LoRA's worth of
  memory); the new adapter starts as a copy of it and trains, and the reference
  is the same module with ``reference`` active instead. The saved adapter is a
  whole adapter (base -> tuned), not a difference to the earlier one.

``cache_reference`` computes each micro-batch's reference scores once: the
data order is then the same every epoch and a micro-batch keeps its noise and
t, so later epochs reuse them (for diffusion and flow models this trades noise
diversity for speed; autoregressive scores are deterministic anyway).

The same command runs under ``accelerate launch`` (``--num_processes N``, GPUs
or ``--cpu``): each process takes its share of every step's micro-batches and
the LoRA gradients are averaged, so N processes with ``grad_accum`` a give the
same updates as one process with ``grad_accum`` N*a. Only the first process
writes (metrics, checkpoints, the store, the adapter).

Mixed precision (``mixed_precision``: auto = bf16 on a CUDA GPU that has it,
else fp16, none on CPU) runs the forward passes under autocast, LoRA weights
stay float32 and fp16 uses a gradient scaler. ``optimizer``: auto = 8-bit AdamW
(bitsandbytes) on CUDA when bitsandbytes is installed, else AdamW.

``--resume`` continues exactly: same data order, same noise, same optimizer
state, so the loss curve equals an uninterrupted run's.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
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

from modalities import lora

from .config import TrainConfig
from .losses import get_loss

CHECKPOINT = "checkpoint.pt"
ADAPTER_INFO = "palate.json"
METRICS = "metrics.jsonl"
LOCK_FILE = "trainer.lock"


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why (and the run is marked failed)."""


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------


def build_examples(store, cfg: TrainConfig, data_model: str) -> list[dict[str, Any]]:
    """Training examples from the store: {prompt, generation_ids (winner/best first), label, ranks}."""
    spec = get_loss(cfg.method)
    if spec.listwise:
        groups = store.ranked_groups(modality=cfg.modality, model=data_model, min_size=2, contexts=cfg.contexts)
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
    pairs = store.preference_pairs(modality=cfg.modality, model=data_model, derivation=cfg.derivation,
                                   contexts=cfg.contexts)
    return [{"prompt": p.prompt, "generation_ids": [p.winner_id, p.loser_id], "label": p.label, "ranks": None}
            for p in pairs]


def example_index(cfg: TrainConfig, n: int, i: int) -> int:
    """The i-th example of the stream: a fresh seeded shuffle each epoch (so resuming at any
    step reproduces the same order without saving any data state). With ``cache_reference``
    every epoch keeps the first epoch's order, so micro-batches recur."""
    epoch, pos = divmod(i, n)
    order = list(range(n))
    random.Random(cfg.seed * 1_000_003 + (0 if cfg.cache_reference else epoch)).shuffle(order)
    return order[pos]


def noise_seed(cfg: TrainConfig, n: int, base: int) -> int:
    """The seed of the noise and t of the micro-batch starting at stream position ``base``
    (with ``cache_reference``, a recurring micro-batch keeps its seed)."""
    return cfg.seed * 1_000_003 + (base % n if cfg.cache_reference else base)


# ---------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------


def adapter_disabled(module: torch.nn.Module):
    """The reference model: the same module with its LoRA adapter switched off."""
    return lora.disabled(module)


def reference_active(module: torch.nn.Module):
    """The reference of a run continued from an earlier adapter: that adapter, frozen."""
    return lora.active(module, "reference", restore="default")


def _linear_leaves(module: torch.nn.Module) -> list[str]:
    """The last name part of every linear layer (nn.Linear, transformers' Conv1D)."""
    types: tuple[type, ...] = (torch.nn.Linear,)
    try:
        from transformers.pytorch_utils import Conv1D

        types += (Conv1D,)
    except ImportError:  # pragma: no cover
        pass
    return sorted({n.rsplit(".", 1)[-1] for n, m in module.named_modules() if n and isinstance(m, types)})


def add_lora(module: torch.nn.Module, cfg: TrainConfig, targets: list[str], *,
             config: Any = None) -> list[torch.nn.Parameter]:
    from peft import LoraConfig

    module.requires_grad_(False)
    if config is None:  # every named target must exist (peft only refuses a list of which none matches)
        names = [n for n, _ in module.named_modules() if n]
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            raise TrainingError(f"LoRA targets {', '.join(missing)} not found in the model; its linear layers are "
                                f"named {', '.join(_linear_leaves(module))}")
    lora.add(module, config or LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                          target_modules=targets, init_lora_weights=True), "default")
    params = [p for n, p in module.named_parameters() if "lora_" in n and ".default." in n + "."]
    for p in params:
        p.requires_grad_(True)
        p.data = p.data.float()  # LoRA weights train in float32 even on an fp16 model
    if not params:
        raise TrainingError(f"LoRA found no modules named {targets} to wrap")
    return params


def continue_from(adapter, module: torch.nn.Module, cfg: TrainConfig) -> list[torch.nn.Parameter]:
    """Load ``cfg.init_adapter`` as the frozen ``reference`` LoRA and start the trained one
    as an exact copy of it (same rank, alpha and targets)."""
    from modalities.image.adapter import ModelLoadError, check_adapter_base

    path = Path(cfg.init_adapter).expanduser()
    try:
        check_adapter_base(path, adapter.model_name, adapter.revision)
        adapter.load_lora(module, path, "reference")
    except ModelLoadError as e:
        raise TrainingError(str(e)) from None
    except Exception as e:
        raise TrainingError(f"cannot continue from adapter {str(path)!r}: {type(e).__name__}: {e}") from None
    if not lora.has(module, "reference"):
        raise TrainingError(f"adapter {str(path)!r} holds no LoRA weights for this model's "
                            f"{type(module).__name__}; nothing to continue from")
    ref_config = lora.config_of(module, "reference")
    if (cfg.lora_rank, cfg.lora_alpha) != (ref_config.r, ref_config.lora_alpha):
        print(f"continuing from {path}: using its LoRA rank {ref_config.r} and alpha {ref_config.lora_alpha}",
              file=sys.stderr)
    ref_targets = ref_config.target_modules
    ref_targets = sorted(ref_targets) if isinstance(ref_targets, (list, set, tuple)) else ref_targets
    if cfg.lora_targets and sorted(cfg.lora_targets) != ref_targets:
        shown = ", ".join(ref_targets) if isinstance(ref_targets, list) else repr(ref_targets)
        print(f"continuing from {path}: using its LoRA targets {shown}", file=sys.stderr)
    import copy

    # the same LoraConfig (rank and alpha patterns, rslora, DoRA, ...), trainable, with this run's dropout
    config = copy.deepcopy(ref_config)
    config.inference_mode = False
    config.lora_dropout = cfg.lora_dropout
    params = add_lora(module, cfg, [], config=config)
    lora.load_state_dict(module, lora.state_dict(module, "reference"), "default")
    return params


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


def lora_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return lora.state_dict(module, "default")


def save_adapter(adapter, module: torch.nn.Module, out: Path, info: dict[str, Any] | None = None) -> Path:
    """The adapter in its modality's format (images: diffusers' LoRA file, which
    ``pipeline.load_lora_weights`` loads; language models: a PEFT folder), with
    ``palate.json`` saying which base model it belongs to (loaders refuse another one)."""
    config = lora.config_of(module, "default").to_dict()
    adapter.save_lora(module, out, lora_state(module), config)
    meta = {"base_model": adapter.model_name, "base_revision": adapter.revision, **(info or {})}
    (out / ADAPTER_INFO).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    return out


def resolve_precision(setting: str, device: torch.device) -> str:
    if setting == "auto":
        if device.type != "cuda":
            return "no"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return setting


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig, device: torch.device):
    name = cfg.optimizer
    if name == "auto":
        name = "adamw8bit" if device.type == "cuda" and importlib.util.find_spec("bitsandbytes") else "adamw"
    if name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise TrainingError("optimizer adamw8bit needs bitsandbytes (pip install bitsandbytes), "
                                "or use optimizer adamw") from None
        return bnb.optim.AdamW8bit(params, lr=cfg.lr, weight_decay=0.0), name
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0), "adamw"


class Processes:
    """This process's place among ``accelerate launch``'s (one process: rank 0 of 1)."""

    def __init__(self, cpu: bool):
        from accelerate import PartialState

        self.state = PartialState(cpu=cpu)
        self.world = self.state.num_processes
        self.rank = self.state.process_index
        self.main = self.state.is_main_process

    def mean_(self, tensors: list[torch.Tensor]) -> None:
        """Average tensors across processes, in place."""
        if self.world == 1 or not tensors:
            return
        import torch.distributed as dist

        flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def any(self, flag: bool) -> bool:
        """True when the flag is set in any process (so all stop together)."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self.state.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        from accelerate import PartialState

        PartialState._reset_state()  # a singleton: the next train() in this process decides afresh


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
    procs = Processes(cpu=cfg.device == "cpu" or not torch.cuda.is_available())
    store = Store.open(cfg.data_dir)
    run_id = cfg.run_id

    def mark(**fields: Any) -> None:
        if run_id is not None and procs.main:
            store.update_run(run_id, **fields)

    # 0. One trainer per run, and a completed run stays as it is. Refusals leave the run record alone:
    #    it belongs to the live trainer, or records a finished run.
    refusal, lock = None, None
    if procs.main:
        try:
            lock = lock_run(run_dir)
            refuse_completed(store, cfg, run_dir)
        except TrainingError as e:
            refusal = str(e)
    if procs.any(refusal is not None):
        if lock is not None:
            lock.close()
        store.close()
        procs.close()
        if refusal:
            print(f"error: {refusal}", file=sys.stderr)
        return 1

    metrics_file = None
    old_handlers: dict[int, Any] = {}
    mark(status="running", pid=os.getpid(), started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), error=None,
         metrics_path=str(run_dir / METRICS))
    try:
        # 1. Model and LoRA (every process holds the model; under accelerate each on its own device)
        device = cfg.device
        if procs.world > 1 or device is None:
            device = "cpu" if procs.state.device.type == "cpu" else str(procs.state.device)
        adapter_cls = registry.get(cfg.modality)
        adapter = adapter_cls.load(ModelRef(cfg.model, revision=cfg.model_revision), device=device,
                                   latent_cache=Path(cfg.data_dir) / "cache" / "latents")
        kind = adapter.score_kind.value
        if kind not in spec.score_kinds:
            raise TrainingError(
                f"method {cfg.method!r} is not for {cfg.modality} models ({kind} scores); "
                f"use one of the methods for {kind} models"
            )
        module = adapter.trainable_module()
        if cfg.gradient_checkpointing:
            for name in ("enable_gradient_checkpointing", "gradient_checkpointing_enable"):  # diffusers, transformers
                if hasattr(module, name):
                    getattr(module, name)()
                    break
        if hasattr(adapter, "length_normalized"):  # autoregressive scores: per-token means for SimPO & co.
            adapter.length_normalized = cfg.per_token_scores
        if cfg.init_adapter:
            params = continue_from(adapter, module, cfg)
            reference_model = reference_active
        else:
            params = add_lora(module, cfg, cfg.lora_targets or adapter.lora_target_modules())
            reference_model = adapter_disabled
        dev = torch.device(adapter.device)
        precision = resolve_precision(cfg.mixed_precision, dev)
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        optimizer, optimizer_name = make_optimizer(params, cfg, dev)
        scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")

        def autocast():
            if amp_dtype is None:
                return contextlib.nullcontext()
            return torch.autocast(dev.type, dtype=amp_dtype)

        # 2. Data (its hash goes into the run record and every exported adapter's metadata)
        examples = build_examples(store, cfg, cfg.data_model or adapter.model_name)
        data_hash = hashlib.sha256(json.dumps(examples, sort_keys=True).encode()).hexdigest()[:16]
        mark(data_hash=data_hash)
        per_step = cfg.batch_size * cfg.grad_accum * procs.world  # examples per optimizer step, all processes
        if len(examples) < cfg.batch_size:
            raise TrainingError(
                f"too few {'rankings' if spec.listwise else 'preference pairs'} for this run: "
                f"{len(examples)} for a batch size of {cfg.batch_size}"
                + (f" in the contexts {', '.join(cfg.contexts)}" if cfg.contexts else "")
                + "; judge more candidates or lower batch_size"
            )
        if procs.main:
            print(f"training {cfg.method} on {len(examples)} {'rankings' if spec.listwise else 'pairs'}: "
                  f"{dev.type}, {procs.world} process(es), precision {precision}, optimizer {optimizer_name}"
                  + (f", continuing from {cfg.init_adapter}" if cfg.init_adapter else ""), file=sys.stderr)

        # 3. Resume
        step = 0
        ckpt = run_dir / CHECKPOINT
        if resume:
            if not ckpt.exists():
                raise TrainingError(f"nothing to resume in {run_dir} (no {CHECKPOINT})")
            state = load_checkpoint(ckpt)
            if state["config_digest"] != cfg.digest():
                raise TrainingError(f"{run_dir}/config.json changed since the checkpoint; start a new run instead")
            if state.get("world", 1) != procs.world:
                raise TrainingError(f"the checkpoint was made by {state.get('world', 1)} process(es); "
                                    f"resume it with the same number, not {procs.world}")
            was = {"optimizer": state.get("optimizer_name", optimizer_name), "precision": state.get("precision", precision),
                   "data": state.get("data_hash", data_hash)}
            now = {"optimizer": optimizer_name, "precision": precision, "data": data_hash}
            changed = [f"{k} {was[k]} -> {now[k]}" for k in was if was[k] != now[k]]
            if changed:
                raise TrainingError(
                    f"cannot resume exactly: {', '.join(changed)} since the checkpoint (another machine, a "
                    "missing bitsandbytes, or new judgments); start a new run, or set the same optimizer and "
                    "mixed_precision explicitly")
            lora.load_state_dict(module, state["lora"], "default")
            optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            step = state["step"]
            if procs.main and (run_dir / METRICS).exists():  # steps after the checkpoint will be redone
                kept = [line for line in (run_dir / METRICS).read_text().splitlines()
                        if line.strip() and json.loads(line)["step"] <= step]
                (run_dir / METRICS).write_text("".join(line + "\n" for line in kept))
        elif ckpt.exists():
            raise TrainingError(f"{run_dir} already holds a checkpoint; pass --resume to continue it")
        elif procs.main and (run_dir / METRICS).exists():  # a start killed before its first checkpoint
            (run_dir / METRICS).unlink()

        def save_checkpoint() -> None:
            if not procs.main:
                return
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"lora": lora_state(module), "optimizer": optimizer.state_dict(), "step": step,
                        "scaler": scaler.state_dict() if scaler.is_enabled() else None, "world": procs.world,
                        "optimizer_name": optimizer_name, "precision": precision, "data_hash": data_hash,
                        "config_digest": cfg.digest()}, tmp)
            os.replace(tmp, ckpt)

        stop = {"signal": None}

        def on_signal(signum, _frame):
            if stop["signal"] is not None:  # asked twice: stop now, without the checkpoint
                signal.signal(signum, signal.SIG_DFL)
                raise KeyboardInterrupt
            stop["signal"] = signum

        old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        loss_kwargs = {**spec.defaults, **cfg.loss_kwargs}
        media_cache: dict[int, bytes] = {}
        reference_cache: dict[int, torch.Tensor] = {}

        def media(gid: int) -> bytes:
            if gid not in media_cache:
                media_cache[gid] = store.media_bytes(store.get_generation(gid))
            return media_cache[gid]

        def reference_scores(batch, base: int, seed: int) -> torch.Tensor:
            key = base % len(examples)
            if cfg.cache_reference and key in reference_cache:
                return reference_cache[key]
            with torch.no_grad(), reference_model(module), autocast():
                ref = adapter.score(module, batch, torch.Generator("cpu").manual_seed(seed)).float()
            if cfg.cache_reference:
                reference_cache[key] = ref
            return ref

        # 4. Loop (validation samples first, on a fresh run: the LoRA starts at zero, so this is the base)
        if step == 0 and procs.main:
            validation_samples(store, adapter, cfg, examples, "start", {"step": 0})
        procs.barrier()
        metrics_file = open(run_dir / METRICS, "a") if procs.main else None
        t0 = time.time()
        progress = _progress(cfg.steps, step) if procs.main else (lambda *_: None)
        skipped_in_a_row = 0
        last_mark = 0.0
        mark(step=step, total_steps=cfg.steps)
        while step < cfg.steps and not procs.any(stop["signal"] is not None):
            lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else cfg.lr
            for g in optimizer.param_groups:
                g["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            sums: Counter = Counter()
            bad_loss = None
            failure: Exception | None = None
            for micro in range(cfg.grad_accum):
                try:
                    # this process's micro-batch: the (micro * world + rank)-th of the step
                    base = step * per_step + (micro * procs.world + procs.rank) * cfg.batch_size
                    batch_ex = [examples[example_index(cfg, len(examples), base + b)] for b in range(cfg.batch_size)]
                    batch = adapter.encode([Group(e["prompt"], tuple(media(g) for g in e["generation_ids"]))
                                            for e in batch_ex])
                    seed = noise_seed(cfg, len(examples), base)
                    with autocast():
                        policy = adapter.score(module, batch, torch.Generator("cpu").manual_seed(seed)).float()
                    reference = reference_scores(batch, base, seed) if spec.needs_reference else None
                    extra: dict[str, Any] = {}
                    if spec.needs_labels or cfg.method == "flow-rwr":
                        extra["labels"] = torch.tensor([e["label"] for e in batch_ex], dtype=torch.float32)
                    if spec.listwise:
                        extra["ranks"] = torch.tensor([e["ranks"] for e in batch_ex])
                    if cfg.nll_reduction == "token" and loss_kwargs.get("nll"):
                        counts = adapter.token_counts(batch)
                        if counts is None:
                            raise TrainingError(f"nll_reduction 'token' needs token counts, which {cfg.modality} "
                                                "samples do not have")
                        extra["nll_tokens"] = counts[:, 0]
                        extra["scores_per_token"] = cfg.per_token_scores
                    loss, metrics = spec.fn(policy, reference, beta=cfg.effective_beta, **loss_kwargs, **extra)
                    if not torch.isfinite(loss):
                        bad_loss = loss.item()
                        break
                    scaler.scale(loss / cfg.grad_accum).backward()
                    sums["loss"] += loss.item() / cfg.grad_accum
                    for k, v in metrics.items():
                        sums[k] += v / cfg.grad_accum
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
                    f"the loss became {bad_loss if bad_loss is not None else 'non-finite'} at step {step + 1}; "
                    f"stopped, the last good checkpoint is kept. Lower the learning rate ({cfg.lr}) "
                    f"or beta ({cfg.effective_beta})."
                )
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            procs.mean_(grads)
            for p, g in zip(params, grads):
                p.grad = g
            names = sorted(sums)
            averaged = torch.tensor([sums[k] for k in names], dtype=torch.float64, device=procs.state.device)
            procs.mean_([averaged])
            sums = Counter(dict(zip(names, averaged.tolist())))
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            skipped = False
            if not torch.isfinite(grad_norm):
                if not scaler.is_enabled() or skipped_in_a_row >= 20:
                    raise TrainingError(
                        f"the gradient became {grad_norm.item()} at step {step + 1}"
                        + (" (20 steps in a row under fp16)" if scaler.is_enabled() else "")
                        + f"; stopped, the last good checkpoint is kept. Lower the learning rate ({cfg.lr})."
                    )
                skipped = True  # fp16: the scaler skips this step and lowers its scale
            skipped_in_a_row = skipped_in_a_row + 1 if skipped else 0
            scaler.step(optimizer)
            scaler.update()
            step += 1
            record = {"step": step, **{k: round(v, 6) for k, v in sums.items()},
                      "grad_norm": round(float(grad_norm), 6), "lr": lr, "seconds": round(time.time() - t0, 2)}
            if skipped:
                record["skipped"] = True
            if metrics_file is not None:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
            progress(step, record)
            if time.time() - last_mark >= 1.0 or step == cfg.steps:  # the run record, at most once a second
                mark(step=step, last_metrics=record)
                last_mark = time.time()
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save_checkpoint()
            if stop_after is not None and step >= stop_after:
                stop["signal"] = "stop_after"
        if metrics_file is not None:
            metrics_file.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if step < cfg.steps:
            save_checkpoint()
            last = _last_record(run_dir) if procs.main else None
            if last is not None:
                mark(step=step, last_metrics=last)
            mark(status="cancelled", error=f"stopped at step {step}; resume with --resume", pid=None, exit_code=130,
                 finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            if procs.main:
                print(f"stopped at step {step}; continue with: python -m alignment.train {run_dir} --resume",
                      file=sys.stderr)
            return 130

        # 5. The adapter, saved and (for a run of the store) registered -- by the first process
        if procs.main:
            info = {"method": cfg.method, "run_id": run_id, "data_hash": data_hash, "steps": step,
                    "init_adapter": cfg.init_adapter}
            out = save_adapter(adapter, module, run_dir / "adapter", info)
            validation_samples(store, adapter, cfg, examples, "end", {"step": step, "adapter": str(out)})
            if run_id is not None:
                store.add_adapter(
                    name=f"run{run_id}-{cfg.method}", modality=cfg.modality, base_model=adapter.model_name,
                    base_revision=adapter.revision, method=cfg.method, run_id=run_id, path=str(out),
                    metadata={"config": cfg.to_dict(), "examples": len(examples), "steps": step,
                              "data_hash": data_hash},
                )
            mark(status="completed", exit_code=0, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), pid=None)
            print(f"done: {step} steps; adapter in {out}", file=sys.stderr)
        procs.barrier()
        return 0
    except TrainingError as e:
        mark(status="failed", error=str(e), exit_code=1, pid=None, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        mark(status="failed", error=f"{type(e).__name__}: {e}", exit_code=1, pid=None,
             finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        raise
    finally:
        if metrics_file is not None and not metrics_file.closed:
            metrics_file.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)
        store.close()
        procs.close()
        if lock is not None:
            lock.close()  # the lock dies with the file (and with the process, however it ends)


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


def _last_record(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / METRICS
    if not path.exists():
        return None
    lines = path.read_text().splitlines()
    return json.loads(lines[-1]) if lines else None


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
