"""Loading a MusicGen or MusicGen-Melody checkpoint (hub id or folder) with its checks and refusals: a
complete model (text encoder, codec, decoder), safetensors only, a tokenizer, no remote code; a LoRA
adapter merged in; MusicGen-Melody's chroma settings from its ``preprocessor_config.json``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import loading, lora
from ..loading import (ModelLoadError, adapter_mismatch, check_adapter_base, check_device, folder_revision,
                       hub_unavailable, read_json, refuse_remote_code)
from ..protocol import ModelRef
from . import chroma

MODEL_TYPES = ("musicgen", "musicgen_melody")
_TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer.model", "vocab.json", "vocab.txt",
                    "tokenizer_config.json")
_PICKLE_GLOBS = ("*.bin", "*.pt", "*.pth", "*.ckpt")

# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------


def _first_line(e: Exception, n: int = 240) -> str:
    return str(e).splitlines()[0][:n] if str(e) else ""


def _check_config(config: dict[str, Any], source: str) -> None:
    """Refuse configs that are not a complete MusicGen (text encoder, codec, decoder)."""
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        what = f"a {model_type!r} model" if model_type else "a model without a model_type in its config.json"
        hint = (" It is the decoder alone (MusicgenForCausalLM) without its text encoder and codec; "
                "save the whole MusicgenForConditionalGeneration." if model_type == "musicgen_decoder" else "")
        raise ModelLoadError(f"{source!r} is {what}, not MusicGen (model_type 'musicgen' or 'musicgen_melody').{hint} "
                             "The music modality loads MusicGen checkpoints such as facebook/musicgen-small")
    missing = [part for part in ("text_encoder", "audio_encoder", "decoder") if not isinstance(config.get(part), dict)]
    if "audio_encoder" in missing:
        raise ModelLoadError(
            f"{source!r} is a MusicGen folder without its codec: config.json has no audio_encoder (the EnCodec model "
            "that turns codes into audio). Save the whole model with MusicgenForConditionalGeneration.save_pretrained()")
    if missing:
        raise ModelLoadError(f"{source!r} is an incomplete MusicGen config: no {' and no '.join(missing)} part in "
                             "config.json")


def _check_folder(folder: Path, trust_remote_code: bool) -> dict[str, Any]:
    if not folder.exists():
        raise ModelLoadError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise ModelLoadError(f"{folder} is a file; point at the folder a MusicGen model was saved to with "
                             "save_pretrained()")
    if not (folder / "config.json").is_file():
        hint = " It is a diffusers pipeline." if (folder / "model_index.json").is_file() else ""
        raise ModelLoadError(f"{folder} is not a transformers model folder (no config.json).{hint} Use a folder saved "
                             "with MusicgenForConditionalGeneration.save_pretrained() and the processor's "
                             "save_pretrained(), or a hub id such as facebook/musicgen-small")
    config = read_json(folder / "config.json")
    configs = {"config.json": config}
    if (folder / "tokenizer_config.json").is_file():
        configs["tokenizer_config.json"] = read_json(folder / "tokenizer_config.json")
    refuse_remote_code(str(folder), configs, trust_remote_code)
    _check_config(config, str(folder))
    if not any(folder.glob("*.safetensors")):
        if any(any(folder.glob(g)) for g in _PICKLE_GLOBS):
            raise ModelLoadError(
                f"{folder} holds only pickle weights (.bin/.pt); Palate loads safetensors only, since unpickling can "
                "run arbitrary code. Convert it once with model.save_pretrained(..., safe_serialization=True)")
        raise ModelLoadError(f"model folder {folder} has no weights (*.safetensors)")
    keys = _weight_keys(folder)
    if keys is not None and not any(k.startswith("audio_encoder.") for k in keys):
        raise ModelLoadError(f"{folder} is a MusicGen folder without its codec: its weights hold no audio_encoder "
                             "(EnCodec) tensors. Save the whole model with save_pretrained()")
    if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        raise ModelLoadError(f"model folder {folder} has no tokenizer (none of {', '.join(_TOKENIZER_FILES[:3])}, ...); "
                             "save the processor (or T5 tokenizer) beside the weights with save_pretrained(folder)")
    return config


def _weight_keys(folder: Path) -> set[str] | None:
    """Tensor names of a folder's safetensors weights (None when they cannot be listed)."""
    index = folder / "model.safetensors.index.json"
    try:
        if index.is_file():
            return set(read_json(index).get("weight_map", {}))
        from safetensors import safe_open

        keys: set[str] = set()
        for f in folder.glob("*.safetensors"):
            with safe_open(str(f), "pt") as fh:
                keys.update(fh.keys())
        return keys
    except Exception:  # an unreadable file: from_pretrained says what is wrong with it
        return None


def _hub_config(ref: ModelRef, trust_remote_code: bool) -> tuple[str | None, dict[str, Any]]:
    """The hub model's config (fetched or from the cache), checked; and the commit it comes from."""
    from huggingface_hub import hf_hub_download

    try:
        path = Path(hf_hub_download(ref.id, "config.json", revision=ref.revision))
    except Exception as e:  # huggingface_hub raises many types; all mean "cannot get it"
        raise hub_unavailable(ref.id, e) from None
    config = read_json(path)
    refuse_remote_code(ref.id, {"config.json": config}, trust_remote_code)
    _check_config(config, ref.id)
    revision = path.parent.name if path.parent.parent.name == "snapshots" else ref.revision
    return revision, config


def _default_dtype(device: str) -> torch.dtype:
    if device == "cpu":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _merge_lora(model, adapter: str, name: str, revision: str | None):
    """Apply a PEFT LoRA folder (trained on the whole MusicGen model) and merge it into the weights;
    "adapter disabled" is then base + this adapter, as the protocol asks when training on top."""
    from peft import PeftModel

    path = Path(adapter).expanduser()
    check_adapter_base(path, name, revision)
    if not path.is_dir() or not (path / lora.PEFT_CONFIG).is_file():
        raise ModelLoadError(f"adapter {adapter!r} is not a PEFT adapter folder (no {lora.PEFT_CONFIG})")
    if not (path / lora.PEFT_WEIGHTS).is_file():
        raise ModelLoadError(f"adapter {adapter!r} has no {lora.PEFT_WEIGHTS} (only safetensors adapters load)")
    try:
        peft_model = PeftModel.from_pretrained(model, str(path), adapter_name="palate", is_trainable=False)
        return peft_model.merge_and_unload()
    except Exception as e:
        raise adapter_mismatch(adapter, name, e) from None


def load_musicgen(ref: ModelRef, *, device: str | None = None, dtype: torch.dtype | None = None,
                  trust_remote_code: bool = False):
    """(model, tokenizer, feature extractor or None, name to record, revision, the melody chroma's settings
    or None for a text-only MusicGen)."""
    from transformers import AutoTokenizer

    device = check_device(device)
    name, folder = loading.resolve_model(ref.id)
    if folder is not None:
        config = _check_folder(folder, trust_remote_code)
        source, revision = str(folder), ref.revision
    else:
        source = ref.id
        revision, config = _hub_config(ref, trust_remote_code)
    model_cls = model_class(config.get("model_type"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise ModelLoadError(f"cannot load the tokenizer of {source!r}, and MusicGen cannot read a prompt without one: "
                             f"{type(e).__name__}: {_first_line(e, 200)}") from None
    if tokenizer is None or not callable(getattr(tokenizer, "encode", None)):
        raise ModelLoadError(f"{source!r} has no usable tokenizer")
    feature_extractor, melody = None, None
    try:
        from transformers import AutoFeatureExtractor

        feature_extractor = AutoFeatureExtractor.from_pretrained(source, revision=revision)
    except Exception:
        pass  # optional: exports copy it (Palate feeds the codec itself; MusicGen-Melody's needs torchaudio)
    if config.get("model_type") == "musicgen_melody":
        from transformers import FeatureExtractionMixin

        try:
            saved, _ = FeatureExtractionMixin.get_feature_extractor_dict(source, revision=revision)
        except Exception:  # no preprocessor_config.json: the extractor's defaults (MusicGen-Melody's own)
            saved = {}
        melody = chroma.ChromaSettings.of(saved, int(config.get("num_chroma", 12)))
    dtype = dtype or _default_dtype(device)
    try:
        model, info = model_cls.from_pretrained(
            source, revision=revision, dtype=dtype, use_safetensors=True, output_loading_info=True)
    except Exception as e:
        raise ModelLoadError(f"cannot load the MusicGen model {source!r}: {type(e).__name__}: {_first_line(e, 300)}"
                             ) from None
    missing = list(info.get("missing_keys") or [])
    if any(k.startswith("audio_encoder.") for k in missing):
        raise ModelLoadError(f"{source!r} is a MusicGen folder without its codec: the audio_encoder (EnCodec) weights "
                             f"are missing ({len(missing)} missing tensors)")
    if missing:
        raise ModelLoadError(f"{source!r} is an incomplete MusicGen checkpoint: {len(missing)} weights are missing, "
                             f"e.g. {', '.join(sorted(missing)[:3])}")
    revision = revision or (folder_revision(folder) if folder is not None else None)
    if ref.adapter:
        model = _merge_lora(model, ref.adapter, name, revision)
    model.to(device)
    model.audio_encoder.float()  # the codec decodes and encodes in float32 whatever the decoder runs in
    model.eval()
    return model, tokenizer, feature_extractor, name, revision, melody


def model_class(model_type: str | None):
    """transformers' class of a MusicGen ``model_type``."""
    import transformers

    if model_type == "musicgen_melody":
        return transformers.MusicgenMelodyForConditionalGeneration
    return transformers.MusicgenForConditionalGeneration
