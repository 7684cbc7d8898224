"""Adapter export for diffusers pipelines (every modality built on them): diffusers, PEFT and kohya
formats, each loaded back and checked.

The trainer saves an adapter in diffusers LoRA format (``adapter/pytorch_lora_weights.safetensors``,
with its LoraConfig in the file's metadata). From it:

- ``diffusers``: the same file with Palate's metadata; ``pipeline.load_lora_weights(folder)`` loads it;
- ``peft``: a PEFT folder (``adapter_config.json`` + ``adapter_model.safetensors``) for
  ``PeftModel.from_pretrained(unet_or_transformer, folder)``;
- ``kohya``: ``lora_unet_...`` keys with ``lora_down``/``lora_up``/``alpha`` and ``ss_*`` metadata, the
  format A1111, ComfyUI and Forge load (UNet models only).

Every export is loaded back into a fresh pipeline and must generate the same output (image, clip), for a
fixed seed, as the adapter loaded the diffusers way (``verify_export``, given the modality's loader and
renderer).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

FORMATS = ("diffusers", "peft", "kohya")
WEIGHTS = "pytorch_lora_weights.safetensors"


def _read(adapter_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    path = Path(adapter_dir) / WEIGHTS
    if not path.is_file():
        raise ValueError(f"{adapter_dir} holds no {WEIGHTS}; point at a training run's adapter/ folder")
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def _lora_config(meta: dict[str, str], prefix: str) -> dict[str, Any]:
    """The LoraConfig diffusers stored in the file (keys prefixed with the component name)."""
    raw = meta.get("lora_adapter_metadata")
    if raw:
        flat = json.loads(raw)
        config = {k[len(prefix) + 1:]: v for k, v in flat.items() if k.startswith(prefix + ".")}
        if config.get("r"):
            return config
    raise ValueError("the adapter file carries no LoRA config (rank, alpha, targets); re-save it with Palate")


def export_adapter(adapter_dir: str | Path, out: str | Path, fmt: str, *, metadata: dict[str, Any]) -> Path:
    """Write ``adapter_dir`` (diffusers format) to ``out`` in ``fmt``; returns the folder or file."""
    from safetensors.torch import save_file

    if fmt not in FORMATS:
        raise ValueError(f"unknown adapter format {fmt!r}; use one of {', '.join(FORMATS)}")
    state, meta = _read(Path(adapter_dir))
    prefix = "transformer" if any(k.startswith("transformer.") for k in state) else "unet"
    config = _lora_config(meta, prefix)
    palate_meta = {f"palate_{k}": v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in metadata.items()}
    out = Path(out)
    if fmt == "diffusers":
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, out / WEIGHTS, metadata={**meta, **palate_meta})
        return out
    if fmt == "peft":
        from peft import LoraConfig

        out.mkdir(parents=True, exist_ok=True)
        keys = {f"base_model.model.{k[len(prefix) + 1:]}": v.contiguous() for k, v in state.items()}
        save_file(keys, out / "adapter_model.safetensors", metadata={"format": "pt", **palate_meta})
        cfg = {k: v for k, v in config.items() if k in LoraConfig.__dataclass_fields__}
        LoraConfig(**{**cfg, "target_modules": sorted(cfg.get("target_modules") or [])}).save_pretrained(out)
        (out / "palate_adapter.json").write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str))
        return out
    # kohya
    if prefix != "unet":
        raise ValueError("kohya-style files exist for UNet models (SD 1.5/2.x/XL); use diffusers or peft for flow models")
    from diffusers.utils import convert_all_state_dict_to_peft, convert_state_dict_to_kohya

    kohya = convert_state_dict_to_kohya(convert_all_state_dict_to_peft(state))
    alpha = float(config.get("lora_alpha", config.get("r", 1)))
    for k in kohya:
        if k.endswith(".alpha"):
            kohya[k] = torch.tensor(alpha)  # diffusers writes the rank here; ours may differ
    path = out if out.suffix == ".safetensors" else out.with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in kohya.items()}, path, metadata={
        "ss_network_module": "networks.lora", "ss_network_dim": str(config.get("r")), "ss_network_alpha": str(alpha),
        "ss_base_model_version": str(metadata.get("base_model", "")), **palate_meta,
    })
    return path


@torch.no_grad()
def verify_export(load: Callable[[str, str | None], Any], render: Callable[[Any], torch.Tensor], base_model: str,
                  reference_adapter: str | Path, exported: str | Path, fmt: str, *, atol: float = 1e-5) -> float:
    """Load ``exported`` into a fresh pipeline (``load(model, adapter) -> pipe``) and compare its output
    (``render(pipe)``: a float tensor, for a fixed seed, before any file rounding) with the diffusers-loaded
    ``reference_adapter``; raises if they differ by more than ``atol``."""
    want = render(load(base_model, str(reference_adapter)))
    if fmt == "peft":
        from peft import PeftModel

        pipe = load(base_model, None)
        name = "transformer" if hasattr(pipe, "transformer") and getattr(pipe, "unet", None) is None else "unet"
        setattr(pipe, name, PeftModel.from_pretrained(getattr(pipe, name), str(exported)).get_base_model())
    else:
        pipe = load(base_model, str(exported))
    got = render(pipe)
    diff = (got - want).abs().max().item()
    if diff > atol:
        raise ValueError(f"the {fmt} export does not reproduce the adapter: max difference {diff:.2e}")
    return diff
