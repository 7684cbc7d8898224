"""LoRA on any torch module, through peft's public functional API only.

Palate puts LoRA adapters on UNets, flow transformers and language models. It
does so with ``peft.functional`` (``inject_adapter_in_model``, ``set_adapter``,
the state-dict helpers) -- the API peft publishes for integrations -- instead of
the ``add_adapter`` / ``load_adapter`` / ``disable_adapters`` methods that
transformers and diffusers mix into their models. Those methods are an
integration layer with version checks of their own (transformers 5.24 refuses
any peft below 0.22 in them), so going through peft directly keeps Palate
working with every peft that has ``peft.functional``.

An adapter is addressed by name; the module keeps its configs in
``module.peft_config`` (the attribute peft itself maintains), so adapters that
diffusers' ``load_lora_weights`` put on a UNet are seen here too.
"""
from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig

__all__ = [
    "add", "has", "config_of", "activate", "disabled", "active", "state_dict", "load_state_dict",
    "load_folder", "save_folder", "PEFT_CONFIG", "PEFT_WEIGHTS",
]

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."


def _tuner_layers(module: "torch.nn.Module") -> Iterator[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return (m for m in module.modules() if isinstance(m, BaseTunerLayer))


def add(module: "torch.nn.Module", config: "LoraConfig", name: str) -> None:
    """Inject a fresh LoRA adapter ``name`` into ``module`` and make it the active one."""
    from peft.functional import set_adapter

    if has(module, name):
        raise ValueError(f"the model already holds a LoRA adapter named {name!r}")
    _inject(config, module, name)
    set_adapter(module, name)


def _inject(config: "LoraConfig", module: "torch.nn.Module", name: str) -> None:
    from peft.functional import inject_adapter_in_model

    with warnings.catch_warnings():  # a second adapter (the trainer's reference) is on purpose
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        inject_adapter_in_model(config, module, adapter_name=name)


def has(module: "torch.nn.Module", name: str) -> bool:
    return name in (getattr(module, "peft_config", None) or {})


def config_of(module: "torch.nn.Module", name: str) -> "LoraConfig":
    if not has(module, name):
        raise KeyError(f"no LoRA adapter named {name!r} on this {type(module).__name__}")
    return module.peft_config[name]


def activate(module: "torch.nn.Module", name: str) -> None:
    """Make ``name`` the adapter that takes part in the forward pass (and the one with gradients)."""
    from peft.functional import set_adapter

    config_of(module, name)
    set_adapter(module, name)


@contextlib.contextmanager
def disabled(module: "torch.nn.Module") -> Iterator["torch.nn.Module"]:
    """The module with every LoRA adapter switched off (the base model), restored on exit."""
    layers = list(_tuner_layers(module))
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield module
    finally:
        for layer in layers:
            layer.enable_adapters(True)


@contextlib.contextmanager
def active(module: "torch.nn.Module", name: str, *, restore: str) -> Iterator["torch.nn.Module"]:
    """The module with adapter ``name`` active, then ``restore`` active again."""
    activate(module, name)
    try:
        yield module
    finally:
        activate(module, restore)


def state_dict(module: "torch.nn.Module", name: str = "default") -> dict[str, "torch.Tensor"]:
    """The adapter's weights (peft's key names, without the adapter name), detached on the CPU."""
    from peft.functional import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(module, adapter_name=name).items()}


def load_state_dict(module: "torch.nn.Module", state: dict[str, "torch.Tensor"], name: str) -> None:
    """Load weights saved by :func:`state_dict` (or a PEFT folder's, prefix and all) into adapter ``name``;
    every weight of the adapter must be there."""
    from peft.functional import set_peft_model_state_dict

    state = {k[len(_PEFT_PREFIX):] if k.startswith(_PEFT_PREFIX) else k: v for k, v in state.items()}
    result = set_peft_model_state_dict(module, state, adapter_name=name)
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k and f".{name}." in k]
    unexpected = list(getattr(result, "unexpected_keys", []))
    if missing or unexpected:
        shown = (missing + unexpected)[:3]
        raise ValueError(f"the LoRA weights do not fit this model ({len(missing)} missing, {len(unexpected)} "
                         f"unexpected, e.g. {', '.join(shown)})")


def load_folder(module: "torch.nn.Module", path: Path, name: str) -> "LoraConfig":
    """Add the LoRA of a PEFT folder (``adapter_config.json`` + ``adapter_model.safetensors``) as
    adapter ``name``, frozen. The adapter active before stays active (the loaded one when there was none)."""
    from peft import LoraConfig
    from peft.functional import set_adapter, set_requires_grad
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / PEFT_CONFIG).is_file() or not (path / PEFT_WEIGHTS).is_file():
        raise FileNotFoundError(f"{path} is not a PEFT adapter folder ({PEFT_CONFIG} + {PEFT_WEIGHTS})")
    raw = json.loads((path / PEFT_CONFIG).read_text())
    if raw.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{path} holds a {raw.get('peft_type')} adapter; Palate trains and loads LoRA only")
    if has(module, name):
        raise ValueError(f"the model already holds a LoRA adapter named {name!r}")
    config = LoraConfig.from_pretrained(str(path))
    config.inference_mode = True
    before = next((list(layer.active_adapters) for layer in _tuner_layers(module)), None)
    _inject(config, module, name)
    load_state_dict(module, load_file(str(path / PEFT_WEIGHTS)), name)
    set_adapter(module, before or name)
    set_requires_grad(module, name, requires_grad=False)
    return config


def save_folder(out: Path, state: dict[str, "torch.Tensor"], config: dict[str, Any]) -> None:
    """Write a PEFT folder that ``PeftModel.from_pretrained(model, out)`` loads."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prefixed = {k if k.startswith(_PEFT_PREFIX) else f"{_PEFT_PREFIX}{k}": v.contiguous() for k, v in state.items()}
    save_file(prefixed, str(out / PEFT_WEIGHTS), metadata={"format": "pt"})
    clean = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    (out / PEFT_CONFIG).write_text(json.dumps(clean, indent=2, sort_keys=True, default=str) + "\n")
