"""Pretrained encoders a reward model can read instead of the generator's own features: CLIP (and
PickScore, a CLIP fine-tune) and SigLIP for images, CLAP for audio, loaded with transformers from a
hub id or a local folder the user has.

An encoder embeds the candidate and its prompt; a reward model's features are the two normalised
embeddings and their product (so a head can learn both taste and prompt agreement). What an encoder
reads is a MIME family (``image/``, ``audio/``): a reward model refuses an encoder that does not read
its modality's media. Weights are safetensors only, and a model's own code never runs (as for every
model Palate loads, :mod:`modalities.loading`).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .loading import ModelLoadError, folder_revision, hub_unavailable, looks_like_hub_id, read_json, refuse_remote_code


@dataclass(frozen=True)
class EncoderKind:
    media: str  # the MIME family it reads
    features: str  # the model's method that embeds that media
    argument: str  # the keyword the processor's output goes in as


#: transformers ``model_type`` -> what the encoder reads and how
KINDS: dict[str, EncoderKind] = {
    "clip": EncoderKind("image/", "get_image_features", "pixel_values"),
    "siglip": EncoderKind("image/", "get_image_features", "pixel_values"),
    "clap": EncoderKind("audio/", "get_audio_features", "input_features"),
}


def _embedding(out) -> torch.Tensor:
    """transformers 5 returns a model output whose pooled field is the projected embedding; older
    versions return the tensor itself."""
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        raise ModelLoadError(f"the encoder returned {type(out).__name__} without a pooled embedding")
    return pooled


class Encoder:
    """A pretrained CLIP, SigLIP or CLAP model: ``features(prompts, media bytes)`` -> [N, 3 x dim]."""

    def __init__(self, source: str, *, device: str | None = None):
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.source = str(source)
        folder = Path(self.source).expanduser()
        if folder.is_dir():
            if not any(folder.glob("*.safetensors")):
                raise ModelLoadError(f"{self.source} holds no .safetensors weights (pickle weights are refused: "
                                     "loading them runs code)")
            cfg = read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
            refuse_remote_code(self.source, {"config.json": cfg}, False)
            self.revision: str | None = folder_revision(folder)
            where = str(folder)
        elif looks_like_hub_id(self.source):
            self.revision, where = None, self.source
        else:
            raise ModelLoadError(f"encoder {self.source!r} is neither a local folder nor a hub id (org/name)")
        try:
            config = AutoConfig.from_pretrained(where)
        except OSError as e:
            raise hub_unavailable(self.source, e, "encoder folder") from None
        kind = KINDS.get(config.model_type)
        if kind is None:
            raise ModelLoadError(f"{self.source} is a {config.model_type} model; a reward model's encoder is one of "
                                 f"{', '.join(KINDS)} (CLIP or PickScore, SigLIP, CLAP)")
        self.kind, self.model_type = kind, config.model_type
        self.media = kind.media
        self.device = device or "cpu"
        self.model = AutoModel.from_pretrained(where, use_safetensors=True).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(where)
        if kind.media == "image/":
            from transformers import AutoImageProcessor

            self.processor = AutoImageProcessor.from_pretrained(where)
        else:
            from transformers import AutoFeatureExtractor

            self.processor = AutoFeatureExtractor.from_pretrained(where)

    def check_reads(self, media_family: str, what: str) -> None:
        """A clear error when this encoder does not read ``media_family`` (``what``: the modality's label)."""
        if media_family != self.media:
            raise ValueError(f"{self.source} is a {self.model_type} encoder of {self.media.rstrip('/')} and cannot "
                             f"read {what} candidates ({media_family.rstrip('/')}); choose an encoder of "
                             f"{media_family.rstrip('/')} (or the model's own features)")

    def _text(self, prompts: Sequence[str]) -> torch.Tensor:
        limit = getattr(getattr(self.model.config, "text_config", None), "max_position_embeddings", 77)
        padding = "max_length" if self.model_type == "siglip" else True  # SigLIP was trained on padded text
        enc = self.tokenizer(list(prompts), padding=padding, truncation=True, max_length=limit, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        if self.model_type == "siglip":
            enc.pop("attention_mask", None)
        return _embedding(self.model.get_text_features(**enc))

    def _media(self, media: Sequence[bytes]) -> torch.Tensor:
        if self.media == "image/":
            from PIL import Image

            images = [Image.open(io.BytesIO(m)).convert("RGB") for m in media]
            inputs = self.processor(images=images, return_tensors="pt")
        else:
            rate = int(self.processor.sampling_rate)
            # the first nb_max_samples of each clip: the extractor would crop a longer one at random
            longest = int(getattr(self.processor, "nb_max_samples", 10 * rate))
            fused = bool(getattr(getattr(self.model.config, "audio_config", None), "enable_fusion", False))
            inputs = self.processor([decode_audio(m, rate)[:longest] for m in media], sampling_rate=rate,
                                    truncation="fusion" if fused else "rand_trunc", return_tensors="pt")
        args = {self.kind.argument: inputs[self.kind.argument].to(self.device)}
        if "is_longer" in inputs:
            args["is_longer"] = inputs["is_longer"].to(self.device)
        return _embedding(getattr(self.model, self.kind.features)(**args))

    @torch.no_grad()
    def features(self, prompts: Sequence[str], media: Sequence[bytes]) -> torch.Tensor:
        m = torch.nn.functional.normalize(self._media(media).float(), dim=-1)
        t = torch.nn.functional.normalize(self._text(prompts).float(), dim=-1)
        return torch.cat([m, t, m * t], dim=-1).cpu()


def decode_audio(data: bytes, rate: int) -> np.ndarray:
    """Mono float32 samples at ``rate`` Hz from an encoded audio file (WAV, FLAC, OGG: what soundfile
    reads), resampled by linear interpolation when the file's rate differs."""
    import soundfile

    samples, sr = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if sr != rate and len(mono) > 1:
        n = max(1, int(round(len(mono) * rate / sr)))
        mono = np.interp(np.linspace(0, len(mono) - 1, n), np.arange(len(mono)), mono).astype(np.float32)
    return mono


_CACHE: dict[tuple[str, str], Encoder] = {}


def load(source: str, device: str | None = None) -> Encoder:
    """An encoder, loaded once per (source, device) in this process."""
    key = (str(source), device or "cpu")
    if key not in _CACHE:
        _CACHE[key] = Encoder(source, device=device)
    return _CACHE[key]
