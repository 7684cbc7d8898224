"""Loading a diffusers pipeline (hub id or local folder) and applying a LoRA file to it.

Shared by every modality built on diffusers pipelines: the modality says which models are built in
(aliases of folders), which pipeline classes live outside diffusers, and how to restore a missing
built-in model; the families it can train are the rows of :data:`.families.FAMILIES`.
"""
from __future__ import annotations

import importlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from .. import loading
from ..loading import ModelLoadError, adapter_mismatch, check_adapter_base, check_device, folder_revision, hub_unavailable
from ..protocol import ModelRef
from .families import FAMILIES

# Pipelines whose score the shared adapter knows how to compute: "unet" (diffusion) or "flow", by family.
SUPPORTED_PIPELINES = {name: ("unet" if f.score == "diffusion" else "flow") for name, f in FAMILIES.items()}


def check_pipeline_folder(folder: Path) -> dict[str, Any]:
    """The folder's ``model_index.json``, after checking every component it lists is there."""
    if not folder.exists():
        raise ModelLoadError(f"model folder {folder} does not exist")
    index = folder / "model_index.json"
    if not index.is_file():
        hint = ""
        if (folder / "config.json").is_file():
            hint = " It holds a single model (config.json), not a whole pipeline: point --model at the pipeline folder."
        raise ModelLoadError(
            f"{folder} is not a diffusers pipeline folder (no model_index.json).{hint} "
            "Use a folder saved with pipeline.save_pretrained(), or a hub id such as "
            "stable-diffusion-v1-5/stable-diffusion-v1-5."
        )
    config = json.loads(index.read_text())
    for name, value in config.items():
        if name.startswith("_") or not isinstance(value, list) or value[0] is None:
            continue
        if not (folder / name).is_dir():
            raise ModelLoadError(
                f"model folder {folder} is missing its {name!r} component (no {name}/ folder, but model_index.json "
                f"lists {value[1]}); copy the whole pipeline folder"
            )
    return config


def load_pipeline(ref: ModelRef, *, builtin: Mapping[str, Path], local_classes: Mapping[str, str] | None = None,
                  restore_hint: str = "", device: str | None = None, dtype: torch.dtype | None = None,
                  media: str = "image"):
    """Load a pipeline by hub id, local folder or built-in alias (``builtin``: alias -> folder), with a
    sensible device (CUDA when present) and dtype (fp16/bf16 on GPU, fp32 on CPU); apply
    ``ref.adapter`` after checking it was trained on this model. ``local_classes``: pipeline class name
    -> ``"module:Class"`` for pipelines that are not diffusers' own; ``media``: the modality loading it (an
    image modality refuses a music pipeline, and the other way round). Returns (pipe, name, revision)."""
    from diffusers import DiffusionPipeline

    device = check_device(device)
    name, folder = loading.resolve_model(ref.id, builtin)
    if folder is not None:
        if name in builtin and not folder.exists():
            raise ModelLoadError(f"the built-in model is missing from {folder}; {restore_hint or 'restore it'}")
        config = check_pipeline_folder(folder)
        source: str = str(folder)
    else:
        try:
            config, commit = DiffusionPipeline.load_config(ref.id, revision=ref.revision, return_commit_hash=True)
        except Exception as e:  # huggingface_hub raises many types; all mean "cannot get it"
            raise hub_unavailable(ref.id, e, "pipeline folder") from None
        source = ref.id
        # record the exact commit, so the provenance says which weights made an output
        ref = ModelRef(ref.id, revision=commit or ref.revision, adapter=ref.adapter)
    class_name = config.get("_class_name", "")
    if class_name not in SUPPORTED_PIPELINES:
        ours = [n for n, f in FAMILIES.items() if f.media == media]
        raise ModelLoadError(
            f"{source!r} is a {class_name or 'pipeline of unknown class'}, which Palate cannot train yet; "
            f"supported: {', '.join(ours)}"
        )
    if FAMILIES[class_name].media != media:
        kind = FAMILIES[class_name].media
        article = "an" if kind[0] in "aeiou" else "a"
        raise ModelLoadError(f"{source!r} is a {class_name}, {article} {kind} pipeline: load it in the {kind} modality, "
                             f"not {media}")
    is_flow = SUPPORTED_PIPELINES[class_name] == "flow"
    if dtype is None:
        dtype = torch.float32 if device == "cpu" else (torch.bfloat16 if is_flow else torch.float16)
    # components listed as [null, null] (e.g. SD3 without T5) must be passed as None
    missing = {k: None for k, v in config.items() if not k.startswith("_") and isinstance(v, list) and v[0] is None}
    try:
        if class_name in (local_classes or {}):
            module, _, attr = local_classes[class_name].partition(":")
            cls = getattr(importlib.import_module(module), attr)
            pipe = cls.from_pretrained(source, dtype=dtype, use_safetensors=True, **missing)
        else:
            # safetensors only: never unpickle .bin weights from a folder or the hub
            pipe = DiffusionPipeline.from_pretrained(
                source, revision=ref.revision, dtype=dtype, use_safetensors=True, **missing
            )
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(f"cannot load pipeline {source!r} ({class_name}): {type(e).__name__}: {e}") from None
    if not (hasattr(pipe, "unet") or hasattr(pipe, "transformer")):
        raise ModelLoadError(f"{source!r} is a {class_name}, not a pipeline with a UNet or transformer")
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    revision = ref.revision or (folder_revision(folder) if folder is not None else None)
    if ref.adapter:
        check_adapter_base(Path(ref.adapter).expanduser(), name, revision)
        load_lora(pipe, ref.adapter, ref.id)
    pipe.to(device)
    return pipe, name, revision


def load_lora(pipe, adapter: str, model: str = "this model") -> None:
    """Apply a LoRA adapter (diffusers/PEFT safetensors folder or file) to the pipeline."""
    path = Path(adapter).expanduser()
    if not path.exists():
        raise ModelLoadError(f"adapter {adapter!r} does not exist")
    if not hasattr(pipe, "load_lora_weights"):
        raise ModelLoadError(f"{type(pipe).__name__} cannot load LoRA adapters")
    # diffusers logs a failed load's whole error (a line per mismatched weight) and peft warns about it
    # before the exception arrives; the exception becomes one line below instead
    quiet = logging.getLogger("diffusers.loaders.peft")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="While injecting the PEFT adapters, an inconsistency")
            pipe.load_lora_weights(str(path), adapter_name="palate")
    except Exception as e:
        raise adapter_mismatch(adapter, model, e) from None
    finally:
        quiet.setLevel(level)
