"""The built-in melody model's family: a causal language model that writes note events, rendered to audio.

The model (``models/melody-lm``, ``scripts/train_music_default.py``) is an ordinary Hugging Face causal LM
over the melody world's words, so loading, LoRA, scores and exports are the text modality's
(:class:`~modalities.text.adapter.TextAdapter`); what is the music modality's own is here: a clip is the
melody the model wrote, rendered by the world's synthesiser to WAV, with the words it was sampled as kept in
the WAV (:mod:`.wav`). The score of a clip is the log-probability of those words (and of stopping), given the
prompt. A clip cut to a shorter ``duration`` keeps the words of what is heard.

An imported clip has no words: it is transcribed by the judge (notes, tempo, instrument, articulation;
approximate) and trained on as that melody.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from ..protocol import GenerationRequest, Group, ModelRef, Provenance, Sample, TrainingBatch
from ..text.adapter import TextAdapter, load_causal_lm
from . import judge, melody, wav

FAMILY = "melody-events"
MARKER = "palate_music.json"  # in a model folder: {"family": "melody-events", "sample_rate": ...}
REPO_ROOT = Path(__file__).resolve().parents[2]
BUILTIN_MODELS = {"melody-lm": REPO_ROOT / "models" / "melody-lm"}
PARAMS = ("duration", "temperature", "top_p")


class MelodyLMAdapter(TextAdapter):
    """Note-event language models behind the modality contract (see the module docstring)."""

    name = "music"
    BUILTIN_MODELS = BUILTIN_MODELS
    PROBE = "<bos>a slow sad melody in A minor on a harp, descending : harp tone1 art2 bpm66 n69 d4 n67 d4"

    @classmethod
    def load(cls, ref: ModelRef, *, device: str | None = None, dtype: torch.dtype | None = None,
             cache_dir: Path | None = None, trust_remote_code: bool = False) -> "MelodyLMAdapter":
        del cache_dir
        model, tokenizer, name, revision = load_causal_lm(ref, device=device, dtype=dtype,
                                                          trust_remote_code=trust_remote_code,
                                                          builtins=BUILTIN_MODELS,
                                                          retrain="scripts/train_music_default.py")
        return cls(model, tokenizer, model_name=name, revision=revision, adapter=ref.adapter)

    # -- generation ---------------------------------------------------------------------------------------
    def music_params(self, request: GenerationRequest, prompt_len: int) -> dict[str, Any]:
        given = dict(request.params)
        for key, whose in (("guidance", "MusicGen's and ACE-Step's"), ("top_k", "MusicGen's"), ("steps", "ACE-Step's"),
                           ("melody", "MusicGen-Melody's")):
            if given.pop(key, None) not in (None, ""):
                raise ValueError(f"the built-in melody model has no {key} setting (it is {whose}); leave it empty")
        unknown = set(given) - set(PARAMS)
        if unknown:
            raise ValueError(f"unknown music setting(s) {sorted(unknown)}; use {', '.join(PARAMS)}")
        duration = given.pop("duration", None)
        if duration is not None:
            try:
                duration = float(duration)
            except (TypeError, ValueError):
                raise ValueError(f"duration must be a number of seconds, got {duration!r}") from None
            if not 0.5 <= duration <= melody.MAX_SECONDS:
                raise ValueError(f"duration must be between 0.5 and {melody.MAX_SECONDS:g} s for the built-in melody "
                                 f"model (it writes melodies of about {melody.CLIP_SECONDS[0]:g}-"
                                 f"{melody.CLIP_SECONDS[1]:g} s), got {duration:g}")
        text = self._params(GenerationRequest(request.prompt, 1, params=given), prompt_len)
        return {**text, "duration": duration}

    @torch.no_grad()
    def generate(self, request: GenerationRequest) -> list[Sample]:
        """``request.n`` clips, one per seed (a seed gives the same clip whatever ``n``): the melodies the
        model writes, rendered to WAV at the world's rate, cut to ``duration`` when one is given."""
        ids = self.prompt_ids(request.prompt)
        params = self.music_params(request, len(ids))
        seeds = request.resolved_seeds()
        was_training = self.model.training
        self.model.eval()
        try:
            answers = [self._sample(ids, params, seed) for seed in seeds]
        finally:
            self.model.train(was_training)
        out = []
        for seed, (tokens, finish) in zip(seeds, answers):
            text = self.tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            m = melody.parse_words(text, max_seconds=params["duration"], strict=False)  # no notes: a silent clip
            words = " " + melody.words_of(m)
            data = wav.encode_wav(melody.render(m), melody.RATE, {"family": FAMILY, "text": words,
                                                                 "model": self.model_name})
            record = {**{k: v for k, v in params.items() if v is not None}, "seconds": round(m.seconds, 3),
                      "notes": len(m.notes), "finish_reason": finish, "response_tokens": len(tokens),
                      "device": self.device.type}
            prov = Provenance("music", self.model_name, seed, record, revision=self.revision, adapter=self.adapter_name)
            out.append(Sample(data, "audio/wav", prov))
        return out

    # -- training tensors -----------------------------------------------------------------------------------
    def words_of_clip(self, data: bytes) -> str:
        """The words a clip was written as, or, for a clip without them, its transcription by the judge."""
        tokens = wav.read_tokens(data)
        if tokens and tokens.get("family") == FAMILY and isinstance(tokens.get("text"), str):
            return tokens["text"]
        audio, rate = wav.decode(data)
        return " " + melody.words_of(judge.transcribe(judge.analyze(audio, rate)))

    def encode(self, groups: Sequence[Group]) -> TrainingBatch:
        """The text model's tensors over each clip's words (see :meth:`words_of_clip`)."""
        texts = [Group(g.prompt, tuple(self.words_of_clip(d).encode("utf-8") for d in g.samples)) for g in groups]
        return super().encode(texts)

    @classmethod
    def export_adapter(cls, adapter_dir: Path, out: Path, fmt: str, *, base_model: str,
                       metadata: dict[str, Any]) -> Path:
        """The text model's exports; a merged model folder keeps the marker that makes it a music model."""
        import shutil

        from .. import loading

        folder = super().export_adapter(adapter_dir, out, fmt, base_model=base_model, metadata=metadata)
        _, base = loading.resolve_model(base_model, BUILTIN_MODELS)
        if fmt == "merged" and base is not None and (base / MARKER).is_file():
            shutil.copy2(base / MARKER, Path(folder) / MARKER)
        return folder
