"""MusicGen behind the modality contract: text-to-music with Meta's MusicGen (transformers).

A MusicGen checkpoint is three models in one (``MusicgenForConditionalGeneration``): a T5 text
encoder (the prompt), an EnCodec audio codec (audio <-> ``C`` parallel streams of codebook tokens,
``frame_rate`` frames a second) and a decoder that predicts the codebooks autoregressively with the
*delay pattern*: codebook ``c`` runs ``c`` steps behind codebook 0 (stereo models: left/right
codebooks interleaved, delayed per pair), so one decoder step emits one token per codebook.

**Candidates** are WAV files (:mod:`.wav`) that carry the codes they were sampled as (``C`` rows of
``frames`` tokens, the delay undone), so training scores exactly what was sampled.

**Score** (see :mod:`modalities.protocol`): the sum of the log-probabilities of a clip's codebook
tokens under the decoder given the prompt -- teacher forcing on the delayed sequence exactly as
MusicGen trains (and samples): the codes are shifted behind ``decoder_start_token_id``, each
codebook delayed by its index, the delay fills predicting nothing (masked) -- or the per-token
mean (:meth:`MusicGenAdapter.configure_scores`). It is the conditional model's probability:
classifier-free guidance, temperature and top-k/top-p shape sampling only. Deterministic: the
generator is unused.

**LoRA** goes on the decoder only (self- and cross-attention projections and the MLP); the text
encoder and the codec stay frozen. The trainable module is the whole ``MusicgenForConditionalGeneration``,
so a trained PEFT folder loads on the stock model with ``PeftModel.from_pretrained``.

MusicGen-Melody (``musicgen_melody``, conditioned on a chroma of a reference tune by prefixing rather
than cross-attention) is refused at load: its score needs another input layout.
"""
from __future__ import annotations

import json
import math
import shutil
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .. import loading, lora
from ..loading import (ModelLoadError, adapter_mismatch, check_adapter_base, check_device, folder_revision,
                       hub_unavailable, read_json, refuse_remote_code)
from ..protocol import GenerationRequest, Group, ModalityAdapter, ModelRef, Provenance, Sample, ScoreKind, TrainingBatch
from . import wav

__all__ = ["MusicGenAdapter", "ModelLoadError", "DEFAULT_PARAMS", "FORMATS", "delayed_sequence"]

FAMILY = "musicgen"
DEFAULT_PARAMS: dict[str, Any] = {"duration": 8.0, "temperature": 1.0, "top_k": 250, "top_p": 1.0, "guidance": 3.0}
PARAM_ALIASES = {"guidance_scale": "guidance", "seconds": "duration"}
MAX_TEMPERATURE = 10.0
MAX_GUIDANCE = 30.0
SCORE_CHUNK = 8  # rows (clips) per forward pass in ``score``
FORMATS = ("peft", "merged")
PROBE = "an upbeat jazz tune with a walking bass"
_TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer.model", "vocab.json", "vocab.txt",
                    "tokenizer_config.json")
_PICKLE_GLOBS = ("*.bin", "*.pt", "*.pth", "*.ckpt")


# ---------------------------------------------------------------------------
# the delay pattern
# ---------------------------------------------------------------------------


def codebook_delays(num_codebooks: int, audio_channels: int = 1) -> list[int]:
    """How many steps each codebook runs behind codebook 0 (stereo: the left/right codebooks of a
    pair are interleaved and share a delay), as ``build_delay_pattern_mask`` lays them out."""
    if audio_channels == 2:
        return [c // 2 for c in range(num_codebooks)]
    return list(range(num_codebooks))


def delayed_sequence(codes: torch.Tensor, lengths: torch.Tensor, start: int, delays: Sequence[int]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's token grid for ``codes`` [N, C, T] (``lengths`` [N] valid frames each).

    Returns ``(seq, valid)``: ``seq`` [N, C, T + D + 1] (D = the largest delay) with ``start`` in
    column 0 and in every delay or padding slot, and code ``t`` of codebook ``c`` in column
    ``1 + delays[c] + t`` -- the grid ``MusicgenForConditionalGeneration.generate`` samples (its
    ``build_delay_pattern_mask`` with the start token as filler). The decoder reads ``seq[..., :-1]``
    and predicts ``seq[..., 1:]``; ``valid`` [N, C, T + D] is True where that prediction is a code.
    """
    N, C, T = codes.shape
    D = max(delays) if len(delays) else 0
    L = T + D + 1
    dev = codes.device
    seq = torch.full((N, C, L), int(start), dtype=torch.long, device=dev)
    valid = torch.zeros((N, C, L - 1), dtype=torch.bool, device=dev)
    frame = torch.arange(T, device=dev)
    in_clip = frame[None, :] < lengths.to(dev)[:, None]  # [N, T]
    for c, d in enumerate(delays):
        seq[:, c, 1 + d:1 + d + T] = torch.where(in_clip, codes[:, c].long(), int(start))
        valid[:, c, d:d + T] = in_clip
    return seq, valid


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------


def _first_line(e: Exception, n: int = 240) -> str:
    return str(e).splitlines()[0][:n] if str(e) else ""


def _check_config(config: dict[str, Any], source: str) -> None:
    """Refuse configs that are not a complete MusicGen (text encoder, codec, decoder)."""
    model_type = config.get("model_type")
    if model_type == "musicgen_melody":
        raise ModelLoadError(
            f"{source!r} is MusicGen-Melody (musicgen_melody), which Palate does not support yet: it conditions on a "
            "reference tune's chroma and needs another score layout. Use a text-to-music MusicGen such as "
            "facebook/musicgen-small")
    if model_type != "musicgen":
        what = f"a {model_type!r} model" if model_type else "a model without a model_type in its config.json"
        hint = (" It is the decoder alone (MusicgenForCausalLM) without its text encoder and codec; "
                "save the whole MusicgenForConditionalGeneration." if model_type == "musicgen_decoder" else "")
        raise ModelLoadError(f"{source!r} is {what}, not MusicGen (model_type 'musicgen').{hint} The music modality "
                             "loads MusicGen checkpoints such as facebook/musicgen-small")
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
    """(model, tokenizer, feature extractor or None, name to record, revision)."""
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration

    device = check_device(device)
    name, folder = loading.resolve_model(ref.id)
    if folder is not None:
        _check_folder(folder, trust_remote_code)
        source, revision = str(folder), ref.revision
    else:
        source = ref.id
        revision, _ = _hub_config(ref, trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise ModelLoadError(f"cannot load the tokenizer of {source!r}, and MusicGen cannot read a prompt without one: "
                             f"{type(e).__name__}: {_first_line(e, 200)}") from None
    if tokenizer is None or not callable(getattr(tokenizer, "encode", None)):
        raise ModelLoadError(f"{source!r} has no usable tokenizer")
    feature_extractor = None
    try:
        from transformers import AutoFeatureExtractor

        feature_extractor = AutoFeatureExtractor.from_pretrained(source, revision=revision)
    except Exception:
        pass  # optional: only exports copy it (Palate feeds the codec raw samples itself)
    dtype = dtype or _default_dtype(device)
    try:
        model, info = MusicgenForConditionalGeneration.from_pretrained(
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
    return model, tokenizer, feature_extractor, name, revision


# ---------------------------------------------------------------------------
# the adapter
# ---------------------------------------------------------------------------


class MusicGenAdapter(ModalityAdapter):
    """MusicGen (``MusicgenForConditionalGeneration``) behind the modality contract.

    Generation params: ``duration`` (seconds), ``temperature`` (0 = greedy), ``top_k`` (0 = off),
    ``top_p`` (1 = off), ``guidance`` (classifier-free guidance scale, 1 = off; ``guidance_scale``
    is accepted too). ``negative_prompt`` is ignored.
    """

    name = "music"
    score_kind = ScoreKind.AUTOREGRESSIVE
    #: the decoder's attention (self and cross) projections and MLP; MusicGen's T5 encoder names its
    #: own q/k/v/o and EnCodec has no linear layers, so these match the decoder only
    default_lora_targets = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")

    def __init__(self, model, tokenizer, *, model_name: str, revision: str | None = None,
                 adapter: str | None = None, feature_extractor: Any = None):
        self.model = model
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.model_name = model_name
        self.revision = revision
        self.adapter_name = adapter
        #: per-token mean instead of the sum in ``score`` (length-normalised losses)
        self.length_normalized = False
        #: clips per forward pass in ``score``
        self.score_chunk = SCORE_CHUNK
        self._generate_lock = threading.Lock()

    @classmethod
    def load(cls, ref: ModelRef, *, device: str | None = None, dtype: torch.dtype | None = None,
             cache_dir: Path | None = None, trust_remote_code: bool = False) -> "MusicGenAdapter":
        """Load a MusicGen model (hub id or local folder; safetensors only) and its tokenizer: fp32
        on CPU, bf16 on CUDA (the codec in fp32). ``ref.adapter`` (a PEFT LoRA folder) is merged
        into the weights. ``cache_dir`` is unused."""
        del cache_dir
        model, tokenizer, fe, name, revision = load_musicgen(ref, device=device, dtype=dtype,
                                                             trust_remote_code=trust_remote_code)
        return cls(model, tokenizer, model_name=name, revision=revision, adapter=ref.adapter, feature_extractor=fe)

    # -- properties ----------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.decoder.parameters()).device

    @property
    def decoder_config(self):
        return self.model.config.decoder

    @property
    def codec_config(self):
        return self.model.config.audio_encoder

    @property
    def sampling_rate(self) -> int:
        return int(self.codec_config.sampling_rate)

    @property
    def frame_rate(self) -> float:
        """Codec frames (decoder steps) per second."""
        return float(self.codec_config.frame_rate)

    @property
    def num_codebooks(self) -> int:
        return int(self.decoder_config.num_codebooks)

    @property
    def audio_channels(self) -> int:
        return int(getattr(self.decoder_config, "audio_channels", 1) or 1)

    @property
    def delays(self) -> list[int]:
        return codebook_delays(self.num_codebooks, self.audio_channels)

    @property
    def start_token_id(self) -> int:
        """The decoder's start token, also the filler of delay slots (as ``generate`` lays them out)."""
        for value in (getattr(self.model.generation_config, "decoder_start_token_id", None),
                      getattr(self.decoder_config, "decoder_start_token_id", None),
                      getattr(self.model.config, "decoder_start_token_id", None),
                      getattr(self.decoder_config, "pad_token_id", None)):
            if isinstance(value, int):
                return value
        return int(self.decoder_config.vocab_size)

    @property
    def max_frames(self) -> int:
        """Longest clip in frames: the decoder's positions minus the delay of the last codebook."""
        return int(self.decoder_config.max_position_embeddings) - max(self.delays)

    @property
    def max_duration(self) -> float:
        return self.max_frames / self.frame_rate

    def _codec_info(self) -> dict[str, Any]:
        return {"sampling_rate": self.sampling_rate, "frame_rate": self.frame_rate,
                "codebook_size": int(self.decoder_config.vocab_size), "num_codebooks": self.num_codebooks,
                "audio_channels": self.audio_channels}

    def default_params(self) -> dict[str, Any]:
        """:data:`DEFAULT_PARAMS`, overridden by what the model ships in ``generation_config.json``
        (``guidance_scale``, ``temperature``, ``top_k``, ``top_p``; ``do_sample: false`` is greedy)."""
        params = dict(DEFAULT_PARAMS)
        gc = getattr(self.model, "generation_config", None)
        if gc is None or getattr(gc, "_from_model_config", True):
            return params
        shipped = gc.to_diff_dict() if hasattr(gc, "to_diff_dict") else {}
        for key, ours in (("guidance_scale", "guidance"), ("temperature", "temperature"), ("top_k", "top_k"),
                          ("top_p", "top_p")):
            value = shipped.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                params[ours] = int(value) if ours == "top_k" else float(value)
        if params["top_p"] <= 0.0:  # audiocraft writes 0 for "no nucleus cut"
            params["top_p"] = 1.0
        if shipped.get("do_sample") is False:
            params["temperature"] = 0.0
        return params

    # -- prompt ----------------------------------------------------------------
    def _prompt_tokens(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        limit = getattr(self.tokenizer, "model_max_length", None)
        kwargs: dict[str, Any] = {"padding": True, "return_tensors": "pt"}
        if isinstance(limit, int) and 0 < limit < 100_000:
            kwargs.update(truncation=True, max_length=limit)
        enc = self.tokenizer(list(prompts), **kwargs)
        ids = enc["input_ids"].long()
        mask = enc.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask.long()
        return {"input_ids": ids, "attention_mask": mask}

    # -- generation ----------------------------------------------------------
    def _params(self, request: GenerationRequest) -> dict[str, Any]:
        given: dict[str, Any] = {}
        for key, value in dict(request.params).items():
            key = PARAM_ALIASES.get(key, key)
            if key in given and given[key] != value:
                raise ValueError(f"{key} given twice with different values ({given[key]!r}, {value!r})")
            given[key] = value
        if given.get("steps") not in (None, ""):
            raise ValueError("MusicGen samples codes one step per frame: it has no steps setting (it is ACE-Step's); "
                             "leave it empty")
        given.pop("steps", None)
        unknown = set(given) - set(DEFAULT_PARAMS)
        if unknown:
            raise ValueError(f"unknown music setting(s) {sorted(unknown)}; use {', '.join(DEFAULT_PARAMS)} "
                             "(guidance_scale is accepted for guidance)")
        params = {**self.default_params(), **given}

        def number(key: str) -> float:
            value = params[key]
            if isinstance(value, bool):
                raise ValueError(f"{key} must be a number, got {value!r}")
            try:
                out = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{key} must be a number, got {value!r}") from None
            if not math.isfinite(out):
                raise ValueError(f"{key} must be a finite number, got {value!r}")
            return out

        duration, temperature, top_p, guidance = (number(k) for k in ("duration", "temperature", "top_p", "guidance"))
        top_k_f = number("top_k")
        if top_k_f != int(top_k_f) or top_k_f < 0:
            raise ValueError(f"top_k must be a whole number >= 0 (0 = off), got {params['top_k']!r}")
        top_k = int(top_k_f)
        if not 0.0 <= temperature <= MAX_TEMPERATURE:
            raise ValueError(f"temperature must be between 0 (greedy) and {MAX_TEMPERATURE:g}, got {temperature:g}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p:g}")
        if not 1.0 <= guidance <= MAX_GUIDANCE:
            raise ValueError(f"guidance must be between 1 (off) and {MAX_GUIDANCE:g}, got {guidance:g}")
        if duration <= 0:
            raise ValueError(f"duration must be a positive number of seconds, got {duration:g}")
        limit, max_frames = self.max_duration, self.max_frames
        frames = int(round(duration * self.frame_rate))
        if frames > max_frames:
            if "duration" in given:
                raise ValueError(f"duration {duration:g} s is beyond this model's limit of {limit:.2f} s "
                                 f"({max_frames} frames at {self.frame_rate:g} frames/s); ask for at most "
                                 f"{limit:.2f} s")
            frames, duration = max_frames, max_frames / self.frame_rate  # a default shrinks to fit
        if frames < 1:
            raise ValueError(f"duration {duration:g} s is shorter than one codec frame ({1 / self.frame_rate:.3g} s)")
        return {"duration": duration, "temperature": temperature, "top_k": top_k, "top_p": top_p,
                "guidance": guidance, "frames": frames}

    @torch.no_grad()
    def generate(self, request: GenerationRequest) -> list[Sample]:
        """``request.n`` clips, one per seed: each clip is sampled alone with torch's RNG seeded by its
        seed (in a forked RNG state), so a seed gives the same codes whatever ``n`` and position. Each
        clip is a WAV at the codec's rate with its codes in the ``pltk`` chunk."""
        params = self._params(request)
        seeds = request.resolved_seeds()
        prompt = self._prompt_tokens([request.prompt])
        model = self.model
        was_training = model.training
        model.eval()
        try:
            clips = [self._sample(prompt, params, seed) for seed in seeds]
        finally:
            model.train(was_training)
        out = []
        for seed, (audio, codes) in zip(seeds, clips):
            record = {**{k: params[k] for k in ("duration", "temperature", "top_k", "top_p", "guidance")},
                      "frames": int(codes.shape[-1]), "sampling_rate": self.sampling_rate,
                      "dtype": str(self.model.decoder.dtype).replace("torch.", ""), "device": self.device.type}
            tokens = {"family": FAMILY, "model": self.model_name, "codes": codes.tolist(), "codec": self._codec_info()}
            data = wav.encode_wav(audio, self.sampling_rate, tokens)
            prov = Provenance("music", self.model_name, seed, record, revision=self.revision, adapter=self.adapter_name)
            out.append(Sample(data, "audio/wav", prov))
        return out

    def _sample(self, prompt: dict[str, torch.Tensor], params: dict[str, Any], seed: int
                ) -> tuple[np.ndarray, torch.Tensor]:
        """(audio [samples] or [2, samples], codes [C, frames]) of one clip.

        ``MusicgenForConditionalGeneration.generate`` returns the audio only (it decodes the codes,
        after undoing the delay pattern, with ``audio_encoder.decode``); the codes are taken from that
        call, so they are exactly the ones the audio was decoded from."""
        model = self.model
        device = self.device
        frames = params["frames"]
        kwargs: dict[str, Any] = {"max_new_tokens": frames + max(self.delays), "return_dict_in_generate": True,
                                  "guidance_scale": params["guidance"]}
        if params["temperature"] > 0:
            kwargs.update(do_sample=True, temperature=params["temperature"], top_k=params["top_k"],
                          top_p=params["top_p"])
        else:
            kwargs.update(do_sample=False)
        captured: list[torch.Tensor] = []
        codec = model.audio_encoder
        decode = codec.decode  # the bound method (or whatever already shadows it)

        def capture(audio_codes, *args, **kw):
            captured.append(audio_codes.detach())
            return decode(audio_codes, *args, **kw)

        devices = [device.index or 0] if device.type == "cuda" else []
        with self._generate_lock, torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed))
            shadowed = codec.__dict__.get("decode")
            codec.decode = capture  # an instance attribute shadows the method for this call only
            try:
                out = model.generate(input_ids=prompt["input_ids"].to(device),
                                     attention_mask=prompt["attention_mask"].to(device), **kwargs)
            finally:
                if shadowed is None:
                    del codec.decode
                else:
                    codec.decode = shadowed
        if not captured:
            raise RuntimeError("MusicGen's generate did not decode any codes (an unexpected transformers version?)")
        if self.audio_channels == 2 and len(captured) >= 2:  # stereo: left and right decoded apart
            left, right = captured[-2][0, 0].long().cpu(), captured[-1][0, 0].long().cpu()
            codes = torch.stack([left, right], dim=1).reshape(-1, left.shape[-1])  # interleaved as sampled
        else:
            codes = captured[-1][0, 0].long().cpu()  # [chunks=1, batch, C, T] -> [C, T]
        audio = out.sequences if hasattr(out, "sequences") else out
        audio = audio[0].float().cpu().numpy()  # [channels, samples]
        audio = audio[0] if audio.shape[0] == 1 else audio
        if codes.shape != (self.num_codebooks, frames):
            raise RuntimeError(f"MusicGen sampled codes of shape {tuple(codes.shape)}, expected "
                               f"{(self.num_codebooks, frames)} (did the model stop early at an EOS token?)")
        return audio, codes

    # -- training tensors ------------------------------------------------------
    def clip_codes(self, data: bytes) -> tuple[torch.Tensor, bool]:
        """(codes [C, T], whether they were re-encoded) of one clip. A clip generated by MusicGen with
        this codec carries the codes it was sampled as; any other audio (an imported WAV, a clip of
        another model) is re-encoded with the model's own EnCodec at the codec's sampling rate --
        lossy: the codes are the codec's reading of the audio, not what a model sampled. Clips longer
        than the model's limit are cut at it."""
        tokens = wav.read_tokens(data)
        codes = self._stored_codes(tokens) if tokens is not None else None
        reencoded = codes is None
        if codes is None:
            codes = self._reencode(data)
        return codes[:, :self.max_frames], reencoded

    def _stored_codes(self, tokens: dict[str, Any]) -> torch.Tensor | None:
        if tokens.get("family") != FAMILY:
            return None
        codec = tokens.get("codec")
        if isinstance(codec, dict) and codec != self._codec_info():
            return None  # sampled through another codec: its codes mean something else here
        try:
            codes = torch.tensor(tokens.get("codes"), dtype=torch.long)
        except (TypeError, ValueError, RuntimeError):
            return None
        V = int(self.decoder_config.vocab_size)
        if codes.dim() != 2 or codes.shape[0] != self.num_codebooks or codes.shape[1] < 1:
            return None
        if bool((codes < 0).any()) or bool((codes >= V).any()):
            return None
        return codes

    @torch.no_grad()
    def _reencode(self, data: bytes) -> torch.Tensor:
        audio, _ = wav.decode(data, rate=self.sampling_rate)
        codec = self.model.audio_encoder
        x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None, None].to(self.device)
        out = codec.encode(x, return_dict=True)
        codes = out.audio_codes  # [chunks=1, batch=1, quantizers, frames]
        if codes.shape[0] != 1:
            raise ValueError("this MusicGen codec encodes in chunks; Palate cannot re-encode imported audio for it")
        codes = codes[0, 0].long().cpu()
        if self.audio_channels == 2 and codes.shape[0] == self.num_codebooks // 2:
            codes = codes.repeat_interleave(2, dim=0)  # mono audio for a stereo model, as MusicGen's forward does
        if codes.shape[0] != self.num_codebooks:
            raise ValueError(f"the codec gives {codes.shape[0]} codebooks but the decoder reads {self.num_codebooks}; "
                             "this checkpoint's codec and decoder do not match")
        return codes

    def encode(self, groups: Sequence[Group]) -> TrainingBatch:
        """Per group: the prompt's token ids (conditioning ``input_ids`` / ``attention_mask`` [B, Lt]);
        per clip: its codes (``codes`` [B, K, C, T], right-padded with the start token) and which
        frames are the clip's (``code_mask`` [B, K, T]); ``reencoded`` [B, K] marks clips whose codes
        came from re-encoding their audio (see :meth:`clip_codes`)."""
        if not groups:
            raise ValueError("nothing to encode")
        K = len(groups[0].samples)
        if any(len(g.samples) != K for g in groups):
            raise ValueError("every group in a batch must hold the same number of samples")
        rows = [[self.clip_codes(data) for data in g.samples] for g in groups]
        B, C = len(groups), self.num_codebooks
        T = max(codes.shape[1] for row in rows for codes, _ in row)
        codes_t = torch.full((B, K, C, T), self.start_token_id, dtype=torch.long)
        mask = torch.zeros((B, K, T), dtype=torch.long)
        reenc = torch.zeros((B, K), dtype=torch.long)
        for b, row in enumerate(rows):
            for k, (codes, was_reencoded) in enumerate(row):
                codes_t[b, k, :, :codes.shape[1]] = codes
                mask[b, k, :codes.shape[1]] = 1
                reenc[b, k] = int(was_reencoded)
        prompts = [g.prompt for g in groups]
        return TrainingBatch(prompts, {"codes": codes_t, "code_mask": mask, "reencoded": reenc},
                             self._prompt_tokens(prompts))

    # -- score ---------------------------------------------------------------
    def _forward(self, model: torch.nn.Module, batch: TrainingBatch, sl: slice, hidden: bool = False):
        """Teacher-forced forward of rows ``sl`` of the flattened [B*K] clips: (logits [n, C, L, V] or
        the decoder's last hidden state [n, L, H], labels [n, C, L], valid [n, C, L])."""
        t, cond = batch.tensors, batch.conditioning
        B, K, C, T = t["codes"].shape
        device = next(model.parameters()).device
        codes = t["codes"].reshape(B * K, C, T)[sl]
        lengths = t["code_mask"].reshape(B * K, T)[sl].sum(-1)
        n_frames = max(1, int(lengths.max().item()))
        seq, valid = delayed_sequence(codes[..., :n_frames], lengths, self.start_token_id, self.delays)
        group = torch.arange(B * K)[sl] // K
        ids, attn = cond["input_ids"][group].to(device), cond["attention_mask"][group].to(device)
        inputs = seq[..., :-1].to(device)
        n, _, L = inputs.shape
        kwargs = dict(input_ids=ids, attention_mask=attn, decoder_input_ids=inputs.reshape(n * C, L), use_cache=False)
        if hidden:
            seen: list[torch.Tensor] = []
            handle = _decoder_stack(model).register_forward_hook(lambda m, a, o: seen.append(o.last_hidden_state))
            try:
                model(**kwargs)
            finally:
                handle.remove()
            out = seen[-1]
        else:
            out = model(**kwargs).logits.reshape(n, C, L, -1)
        return out, seq[..., 1:].to(device), valid.to(device)

    def score(self, model: torch.nn.Module, batch: TrainingBatch, generator: torch.Generator | None = None, *,
              mean: bool | None = None) -> torch.Tensor:
        """Sum of the log-probabilities of every clip's codebook tokens (all codebooks, the clip's
        frames; delay slots and padding masked), [B, K] float32 -- the per-token mean with ``mean``
        (default: ``self.length_normalized``). ``model`` is the whole MusicGen model (the trainable
        module). Deterministic: ``generator`` is unused."""
        del generator
        mean = self.length_normalized if mean is None else bool(mean)
        B, K = batch.tensors["code_mask"].shape[:2]
        chunk = max(1, int(self.score_chunk))
        parts = []
        for start in range(0, B * K, chunk):
            logits, labels, valid = self._forward(model, batch, slice(start, start + chunk))
            logp = torch.log_softmax(logits.float(), dim=-1)
            tok = logp.gather(-1, labels.clamp(0, logits.shape[-1] - 1).unsqueeze(-1)).squeeze(-1)
            tok = tok * valid.float()
            total = tok.sum(dim=(1, 2))
            if mean:
                total = total / valid.float().sum(dim=(1, 2)).clamp_min(1.0)
            parts.append(total)
        return torch.cat(parts).reshape(B, K).float()

    def configure_scores(self, *, per_token: bool) -> None:
        self.length_normalized = bool(per_token)

    def token_counts(self, batch: TrainingBatch) -> torch.Tensor:
        """Codebook tokens each score covers, [B, K]: frames x codebooks."""
        return batch.tensors["code_mask"].sum(dim=-1).float() * self.num_codebooks

    @torch.no_grad()
    def reward_features(self, prompts: Sequence[str], media: Sequence[bytes], *, noise_level: float = 0.0,
                        seed: int = 0) -> torch.Tensor:
        """The decoder's last hidden state (after its final layer norm) averaged over a clip's
        positions -- every step that predicts one of its codes -- given its prompt: [N, hidden]
        float32 on the CPU. ``noise_level`` must be 0 and ``seed`` does not apply."""
        del seed
        if noise_level:
            raise ValueError("noise_level applies to denoiser features only; MusicGen features are read at 0")
        if len(prompts) != len(media):
            raise ValueError(f"{len(prompts)} prompts for {len(media)} candidates")
        out = []
        step = max(1, int(self.score_chunk))
        for start in range(0, len(prompts), step):
            groups = [Group(p, (m, m)) for p, m in zip(prompts[start:start + step], media[start:start + step])]
            batch = self.encode(groups).select([0])
            h, _, valid = self._forward(self.model, batch, slice(0, len(groups)), hidden=True)
            m = valid.any(dim=1).unsqueeze(-1).float()  # [n, L, 1]: positions predicting a code of the clip
            out.append(((h.float() * m).sum(1) / m.sum(1).clamp(min=1)).cpu())
        return torch.cat(out)

    def trainable_module(self) -> torch.nn.Module:
        return self.model

    def lora_target_modules(self) -> list[str]:
        """The default targets, each kept as a bare name when it matches decoder modules only; a name
        that also matches outside the decoder (another text encoder) becomes the decoder's full names."""
        names = [n for n, _ in self.model.named_modules() if n]
        targets: list[str] = []
        for t in self.default_lora_targets:
            found = [n for n in names if n == t or n.endswith("." + t)]
            inside = [n for n in found if n.startswith("decoder.")]
            if not inside:
                continue
            targets.extend([t] if len(inside) == len(found) else inside)
        return targets

    # -- exports ---------------------------------------------------------------
    @classmethod
    def export_adapter(cls, adapter_dir: Path, out: Path, fmt: str, *, base_model: str,
                       metadata: dict[str, Any]) -> Path:
        """``peft``: the PEFT folder with ``base_model_name_or_path`` set (loads with
        ``PeftModel.from_pretrained(MusicgenForConditionalGeneration..., folder)``); ``merged``: the
        whole model with the LoRA merged, saved with ``save_pretrained`` (safetensors) with its
        tokenizer and feature extractor. Palate's metadata goes in ``palate_adapter.json``."""
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r} for a MusicGen adapter; use one of {', '.join(FORMATS)}")
        src, out = Path(adapter_dir), Path(out)
        if not (src / lora.PEFT_CONFIG).is_file() or not (src / lora.PEFT_WEIGHTS).is_file():
            raise ValueError(f"{src} is not a PEFT adapter folder ({lora.PEFT_CONFIG} + {lora.PEFT_WEIGHTS})")
        if out.is_file() or (out.is_dir() and any(out.iterdir())):
            raise ValueError(f"{out} already exists and is not empty; choose a new folder")
        out.mkdir(parents=True, exist_ok=True)
        if fmt == "peft":
            for name in (lora.PEFT_WEIGHTS, loading.ADAPTER_INFO):
                if (src / name).is_file():
                    shutil.copy2(src / name, out / name)
            config = json.loads((src / lora.PEFT_CONFIG).read_text())
            _, folder = loading.resolve_model(base_model)
            config["base_model_name_or_path"] = str(folder) if folder is not None else base_model
            (out / lora.PEFT_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        else:
            merged = cls.load(ModelRef(base_model, adapter=str(src)), device="cpu", dtype=torch.float32)
            merged.model.save_pretrained(out, safe_serialization=True)
            merged.tokenizer.save_pretrained(out)
            if merged.feature_extractor is not None:
                merged.feature_extractor.save_pretrained(out)
        (out / "palate_adapter.json").write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str) + "\n")
        return out

    @classmethod
    def verify_export(cls, base_model: str, adapter_dir: Path, exported: Path, fmt: str, *,
                      atol: float = 1e-4) -> float:
        """Load ``exported`` as people would (peft: the stock model + ``PeftModel``; merged:
        ``MusicgenForConditionalGeneration`` alone) and compare its logits on a fixed prompt and clip
        with Palate's model + adapter, on the CPU in float32; raise ``ValueError`` above ``atol``."""
        from transformers import AutoTokenizer, MusicgenForConditionalGeneration

        ours = cls.load(ModelRef(base_model, adapter=str(adapter_dir)), device="cpu", dtype=torch.float32)
        C, V = ours.num_codebooks, int(ours.decoder_config.vocab_size)
        T = max(1, min(16, ours.max_frames))
        codes = (torch.arange(C * T).reshape(1, C, T) * 7 + 3) % V
        seq, _ = delayed_sequence(codes, torch.tensor([T]), ours.start_token_id, ours.delays)
        prompt = ours._prompt_tokens([PROBE])
        dec = seq[..., :-1].reshape(C, -1)

        def logits(model) -> torch.Tensor:
            with torch.no_grad():
                return model.eval()(**prompt, decoder_input_ids=dec, use_cache=False).logits.float()

        want = logits(ours.model)
        if fmt == "peft":
            from peft import PeftModel

            _, folder = loading.resolve_model(base_model)
            base = MusicgenForConditionalGeneration.from_pretrained(str(folder) if folder else base_model,
                                                                    dtype=torch.float32, use_safetensors=True)
            model = PeftModel.from_pretrained(base, str(exported))
        elif fmt == "merged":
            model = MusicgenForConditionalGeneration.from_pretrained(str(exported), dtype=torch.float32,
                                                                     use_safetensors=True)
            tok = AutoTokenizer.from_pretrained(str(exported))
            if tok(PROBE)["input_ids"] != ours.tokenizer(PROBE)["input_ids"]:
                raise ValueError("the merged export's tokenizer does not tokenize like the base model's")
        else:
            raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
        diff = (logits(model) - want).abs().max().item()
        if diff > atol:
            raise ValueError(f"the {fmt} export does not reproduce the adapter: max logit difference {diff:.2e}")
        return diff


def _decoder_stack(model: torch.nn.Module) -> torch.nn.Module:
    """The ``MusicgenDecoder`` (its output is the last hidden state after the final layer norm)."""
    from transformers.models.musicgen.modeling_musicgen import MusicgenDecoder

    for m in model.modules():
        if isinstance(m, MusicgenDecoder):
            return m
    raise TypeError(f"{type(model).__name__} holds no MusicGen decoder")
