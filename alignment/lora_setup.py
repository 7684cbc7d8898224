"""The LoRA a run trains: put on the model's trainable module, continued from an earlier adapter,
saved in the modality's format. Everything goes through :mod:`modalities.lora` (peft's functional API).
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import torch

from modalities import lora
from modalities.loading import ADAPTER_INFO

from .config import TrainConfig
from .errors import TrainingError


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
    from modalities.loading import ModelLoadError, check_adapter_base

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
    # the same LoraConfig (rank and alpha patterns, rslora, DoRA, ...), trainable, with this run's dropout
    config = copy.deepcopy(ref_config)
    config.inference_mode = False
    config.lora_dropout = cfg.lora_dropout
    params = add_lora(module, cfg, [], config=config)
    lora.load_state_dict(module, lora.state_dict(module, "reference"), "default")
    return params


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
