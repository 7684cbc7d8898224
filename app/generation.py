"""Generating candidates and storing them: the service the CLI (and the UI) call.

Loaded models are kept per (modality, model, device) in this process -- the
two most recently used -- so a second request for the same model does not
load it again. Generation goes through one worker per device: one generation
at a time on each device (a pipeline's scheduler is shared state, and two at
once on a small GPU would only compete for its memory).

GPU policy: a training run is a separate process with its own copy of the
model. Before the app's run queue starts a run on a CUDA device it unloads the
models this process holds there (waiting for a generation in progress), and
while that run trains, generation on the same CUDA device is refused with a
message saying so. The app itself keeps one model per GPU (loading another
forgets the one there; on the CPU the two most recent stay), so two models
never share one GPU. On the CPU training and generation both go on.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Sequence

from storage import Generation, Store

MAX_LOADED = 2
_adapters: "OrderedDict[tuple[str, str, str | None, str | None], tuple[Any, threading.Lock]]" = OrderedDict()
_lock = threading.Lock()
_device_locks: dict[str, threading.Lock] = {}
_loading: dict[tuple, threading.Lock] = {}
_training_on: dict[str, int] = {}  # CUDA device -> the run training there


def device_key(device: str | None) -> str:
    """``cpu`` or ``cuda`` (the device a request actually runs on)."""
    if device:
        return "cuda" if str(device).startswith("cuda") else str(device)
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def device_lock(device: str | None) -> threading.Lock:
    key = device_key(device)
    with _lock:
        return _device_locks.setdefault(key, threading.Lock())


def reserve_for_training(device: str | None, run_id: int) -> None:
    """A run is about to train on ``device``: on CUDA, free this process's models there first."""
    key = device_key(device)
    if key != "cuda":
        return
    with device_lock(key):
        with _lock:
            for k in [k for k in _adapters if device_key(k[2]) == key]:
                del _adapters[k]
            _training_on[key] = run_id
        import torch

        torch.cuda.empty_cache()


def release_from_training(device: str | None) -> None:
    with _lock:
        _training_on.pop(device_key(device), None)


def unload_all() -> None:
    with _lock:
        _adapters.clear()


def default_model(modality: str) -> str:
    """The model a modality uses when none is named (its spec's ``default_model``)."""
    from modalities import registry

    model = registry.spec(modality).default_model
    if not model:
        raise ValueError(f"no built-in model for {modality!r}; pass --model (a hub id or a local folder)")
    return model


def get_adapter(store: Store, modality: str, model: str, *, device: str | None = None, lora: str | None = None):
    """The loaded adapter for ``model`` (with the LoRA adapter ``lora`` applied) and its lock."""
    from modalities import registry
    from modalities.protocol import ModelRef

    key = (modality, model, device, lora)
    busy = _training_on.get(device_key(device))
    if busy is not None:
        raise RuntimeError(f"training run {busy} is using the GPU; generate again when it ends, or cancel it "
                           "(Train tab)")
    with _lock:
        if key in _adapters:
            _adapters.move_to_end(key)
            return _adapters[key]
        loading = _loading.setdefault(key, threading.Lock())
    with loading:  # one load per model; the global lock is not held while loading
        with _lock:
            if key in _adapters:
                _adapters.move_to_end(key)
                return _adapters[key]
            if device_key(device) == "cuda":  # one model per GPU: forget the others there first
                for k in [k for k in _adapters if device_key(k[2]) == "cuda"]:
                    del _adapters[k]
        cls = registry.get(modality)
        entry = (cls.load(ModelRef(model, adapter=lora), device=device, cache_dir=store.data_dir / "cache"),
                 threading.Lock())
        with _lock:
            _loading.pop(key, None)
            busy = _training_on.get(device_key(device))
            if busy is not None:  # a run started on this GPU while the model loaded: do not keep it there
                del entry
                raise RuntimeError(f"training run {busy} started on the GPU while the model loaded; generate again "
                                   "when it ends")
            _adapters[key] = entry
            while len(_adapters) > MAX_LOADED:
                _adapters.popitem(last=False)  # forget the least recently used model
        return entry


def generate_candidates(
    store: Store,
    *,
    modality: str,
    prompt: str,
    n: int = 4,
    model: str | None = None,
    seed: int | None = None,
    seeds: Sequence[int] | None = None,
    negative_prompt: str | None = None,
    params: dict[str, Any] | None = None,
    device: str | None = None,
    lora: str | None = None,
    adapter_id: int | None = None,
) -> list[Generation]:
    """Generate ``n`` candidates for ``prompt`` and store them (all or none).

    ``seed``: candidate i gets seed + i; ``seeds``: one per candidate; neither:
    random seeds (recorded, so every candidate can be regenerated).
    """
    from modalities import registry
    from modalities.protocol import GenerationRequest

    # 1. Check the request before loading anything
    family = registry.spec(modality).media
    if seeds is None and seed is not None:
        seeds = [seed + i for i in range(n)]
    request = GenerationRequest(prompt=prompt, n=n, seeds=tuple(seeds) if seeds is not None else None,
                                negative_prompt=negative_prompt or None, params=dict(params or {}))
    guiding = "reward-guidance" in registry.spec(modality).capabilities and any(
        k.startswith("guide_") for k in request.params)
    # 2. Load (or reuse) the model and generate
    with device_lock(device):
        adapter, lock = get_adapter(store, modality, model or default_model(modality), device=device, lora=lora)
        with lock:
            if guiding:  # Flow-NRG: the reward model reads this model's features
                from dataclasses import replace

                from alignment.rewards.guidance import guide_from_params

                rest = dict(request.params)
                request = replace(request, params=rest, guide=guide_from_params(store, modality, adapter, rest))
            samples = adapter.generate(request)
    # 3. Store every candidate with its provenance, in one transaction
    with store.write():
        return [
            store.add_generation(prompt=prompt, media=s.data, mime=s.mime, adapter_id=adapter_id, media_family=family,
                                 **s.provenance.storage_kwargs())
            for s in samples
        ]
