"""The music modality's adapter: one entry point over its model families.

- ``melody-events`` (:mod:`.events`): the built-in melody model (``melody-lm``) and any causal LM folder
  marked with ``palate_music.json``: note events rendered by the melody world's synthesiser;
- ``musicgen`` (:mod:`.musicgen`): transformers' MusicGen checkpoints (facebook/musicgen-small, ...), scored on
  the EnCodec codes they sampled;
- ``acestep`` (:mod:`.acestep`): diffusers' ``AceStepPipeline`` (ACE-Step 1.5), flow matching through the
  shared diffusers plumbing.

:meth:`MusicAdapter.load` reads which family a model is (its folder, or the hub config) and returns that
family's adapter; exports go to the family of the adapter's base model.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import loading
from ..loading import ModelLoadError
from ..protocol import ModalityAdapter, ModelRef, ScoreKind
from . import events

FAMILIES = ("melody-events", "musicgen", "acestep")
ACESTEP_PIPELINE = "AceStepPipeline"


def _family_of_config(config: dict[str, Any], source: str) -> str:
    kind = str(config.get("model_type", ""))
    if kind.startswith("musicgen"):
        return "musicgen"  # MusicGen and MusicGen-Melody; the MusicGen loader refuses the rest with its reason
    raise ModelLoadError(f"{source} is a {kind or 'model without a model_type'}, not a music model Palate loads: use "
                         "the built-in melody-lm, a MusicGen checkpoint (e.g. facebook/musicgen-small), an ACE-Step "
                         "pipeline or a folder saved from one")


def _family_of_pipeline(index: dict[str, Any], source: str) -> str:
    cls = index.get("_class_name") or "a diffusers pipeline of unknown class"
    if cls != ACESTEP_PIPELINE:
        raise ModelLoadError(f"{source} is {cls}; the music modality loads ACE-Step pipelines ({ACESTEP_PIPELINE}), "
                             "MusicGen checkpoints and the built-in melody model")
    return "acestep"


def family_of(model: str, revision: str | None = None) -> str:
    """Which music family ``model`` (alias, folder or hub id) belongs to."""
    name, folder = loading.resolve_model(model, events.BUILTIN_MODELS)
    if folder is not None:
        if not folder.exists():
            if name in events.BUILTIN_MODELS:
                raise ModelLoadError(f"the built-in model {name!r} is missing from {folder}; restore it with `git "
                                     "checkout -- models/` or retrain it with `python scripts/train_music_default.py`")
            raise ModelLoadError(f"model folder {folder} does not exist")
        if (folder / events.MARKER).is_file():
            marked = loading.read_json(folder / events.MARKER).get("family")
            if marked != events.FAMILY:
                raise ModelLoadError(f"{folder / events.MARKER} names the family {marked!r}; this Palate knows "
                                     f"{', '.join(FAMILIES)}")
            return events.FAMILY
        if (folder / "model_index.json").is_file():
            return _family_of_pipeline(loading.read_json(folder / "model_index.json"), str(folder))
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"{folder} is not a model folder (no config.json); use a MusicGen folder saved with "
                                 "save_pretrained(), or the built-in melody-lm")
        return _family_of_config(loading.read_json(folder / "config.json"), str(folder))
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:  # a diffusers pipeline (model_index.json) or a transformers model (config.json)
        try:
            path = hf_hub_download(model, "model_index.json", revision=revision)
        except EntryNotFoundError:
            path = None
        if path is not None:
            return _family_of_pipeline(json.loads(Path(path).read_text()), model)
        path = hf_hub_download(model, "config.json", revision=revision)
    except ModelLoadError:
        raise
    except Exception as e:  # huggingface_hub raises many types; all mean "cannot get it"
        raise loading.hub_unavailable(model, e) from None
    return _family_of_config(json.loads(Path(path).read_text()), model)


def family_class(family: str) -> type[ModalityAdapter]:
    if family == events.FAMILY:
        return events.MelodyLMAdapter
    if family == "musicgen":
        from .musicgen import MusicGenAdapter

        return MusicGenAdapter
    if family == "acestep":
        from .acestep import AceStepAdapter

        return AceStepAdapter
    raise ValueError(f"unknown music family {family!r}; known: {', '.join(FAMILIES)}")


class MusicAdapter(ModalityAdapter):
    """Dispatches to the family of the model being loaded (see the module docstring)."""

    name = "music"
    score_kind = ScoreKind.AUTOREGRESSIVE
    default_lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj")

    @classmethod
    def load(cls, ref: ModelRef, *, device: str | None = None, dtype: Any = None, cache_dir: Path | None = None,
             trust_remote_code: bool = False) -> ModalityAdapter:
        family = family_class(family_of(ref.id, ref.revision))
        return family.load(ref, device=device, dtype=dtype, cache_dir=cache_dir,
                           trust_remote_code=trust_remote_code)  # type: ignore[call-arg]

    @classmethod
    def export_adapter(cls, adapter_dir: Path, out: Path, fmt: str, *, base_model: str,
                       metadata: dict[str, Any]) -> Path:
        return family_class(family_of(base_model)).export_adapter(adapter_dir, out, fmt, base_model=base_model,
                                                                  metadata=metadata)

    @classmethod
    def verify_export(cls, base_model: str, adapter_dir: Path, exported: Path, fmt: str) -> float:
        return family_class(family_of(base_model)).verify_export(base_model, adapter_dir, exported, fmt)

    # the dispatcher itself never holds a model
    def generate(self, request):  # pragma: no cover - load() returns a family's adapter
        raise NotImplementedError("load a model with MusicAdapter.load")

    def encode(self, groups):  # pragma: no cover
        raise NotImplementedError("load a model with MusicAdapter.load")

    def score(self, model, batch, generator):  # pragma: no cover
        raise NotImplementedError("load a model with MusicAdapter.load")

    def trainable_module(self):  # pragma: no cover
        raise NotImplementedError("load a model with MusicAdapter.load")
