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

**MusicGen-Melody** (``musicgen_melody``) takes a reference tune as well: its chroma (the dominant pitch
class of each frame, :mod:`.chroma`) is projected and *prefixed* to the decoder's input with the text
(no cross-attention). The ``melody`` setting names an audio file; the chroma is kept with each clip (the
``pltk`` chunk), so training scores a clip under the melody it was made with (a clip made without one,
or imported, under the model's null melody), and the score reads only the positions after the prefix.
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
from ..protocol import GenerationRequest, Group, ModalityAdapter, ModelRef, Provenance, Sample, ScoreKind, TrainingBatch
from . import chroma, wav
from .musicgen_loading import ModelLoadError, load_musicgen

__all__ = ["MusicGenAdapter", "ModelLoadError", "DEFAULT_PARAMS", "FORMATS", "delayed_sequence"]

FAMILY = "musicgen"
DEFAULT_PARAMS: dict[str, Any] = {"duration": 8.0, "temperature": 1.0, "top_k": 250, "top_p": 1.0, "guidance": 3.0}
PARAM_ALIASES = {"guidance_scale": "guidance", "seconds": "duration"}
MAX_TEMPERATURE = 10.0
MAX_GUIDANCE = 30.0
SCORE_CHUNK = 8  # rows (clips) per forward pass in ``score``
FORMATS = ("peft", "merged")
PROBE = "an upbeat jazz tune with a walking bass"


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
                 adapter: str | None = None, feature_extractor: Any = None,
                 melody: chroma.ChromaSettings | None = None):
        self.model = model
        #: MusicGen-Melody: how a melody file becomes its chroma (None: a text-only MusicGen)
        self.melody = melody
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
        model, tokenizer, fe, name, revision, melody = load_musicgen(ref, device=device, dtype=dtype,
                                                                     trust_remote_code=trust_remote_code)
        return cls(model, tokenizer, model_name=name, revision=revision, adapter=ref.adapter, feature_extractor=fe,
                   melody=melody)

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
        """Longest clip in frames: the decoder's positions minus the delay of the last codebook (MusicGen-Melody:
        and minus the melody prefix, which takes positions before the codes)."""
        prefix = int(self.model.config.chroma_length) if self.melody is not None else 0
        return int(self.decoder_config.max_position_embeddings) - max(self.delays) - prefix

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
        melody_file = given.pop("melody", None)
        if melody_file not in (None, "") and self.melody is None:
            raise ValueError("this MusicGen takes no melody (it is text-to-music); a melody needs a MusicGen-Melody "
                             "checkpoint such as facebook/musicgen-melody")
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
        out = {"duration": duration, "temperature": temperature, "top_k": top_k, "top_p": top_p,
               "guidance": guidance, "frames": frames}
        if melody_file not in (None, ""):
            out["melody"] = self._melody_of(str(melody_file))
        return out

    def _melody_of(self, path: str) -> dict[str, Any]:
        """A melody file as its name, content hash and chroma indices (checked to be readable audio)."""
        import hashlib

        file = Path(path).expanduser()
        if not file.is_file():
            raise ValueError(f"melody file {path!r} does not exist")
        data = file.read_bytes()
        return {"file": file.name, "sha256": hashlib.sha256(data).hexdigest(),
                "chroma": chroma.melody_indices(data, self.melody)}

    def _chroma_features(self, indices: Sequence[list[int] | None]) -> torch.Tensor:
        """One-hot ``input_features`` [n, chroma_length, num_chroma] of stored melodies (None: null)."""
        length = int(self.model.config.chroma_length)
        return self._one_hot(torch.stack([chroma.frames(i, length) for i in indices]))

    def _one_hot(self, bins: torch.Tensor) -> torch.Tensor:
        return chroma.one_hot(bins, int(self.model.config.num_chroma)).to(self.device, self.model.dtype)

    def clip_melody(self, data: bytes) -> list[int] | None:
        """The chroma a MusicGen-Melody clip was made with (None: none, or not a clip of this model)."""
        tokens = wav.read_tokens(data)
        if tokens is None or self._stored_codes(tokens) is None:
            return None
        melody = tokens.get("melody")
        bins = int(self.model.config.num_chroma)
        ok = isinstance(melody, list) and melody and all(isinstance(i, int) and 0 <= i < bins for i in melody)
        return melody if ok else None

    @torch.no_grad()
    def generate(self, request: GenerationRequest) -> list[Sample]:
        """``request.n`` clips, one per seed: each clip is sampled alone with torch's RNG seeded by its
        seed (in a forked RNG state), so a seed gives the same codes whatever ``n`` and position. Each
        clip is a WAV at the codec's rate with its codes in the ``pltk`` chunk."""
        params = self._params(request)
        seeds = request.resolved_seeds()
        prompt = self._prompt_tokens([request.prompt])
        if self.melody is not None:  # the prompt's tokens are prefixed too: they take positions as well
            room = self.max_frames - int(prompt["input_ids"].shape[1])
            if params["frames"] > room:
                raise ValueError(f"duration {params['duration']:g} s with this prompt is beyond this MusicGen-Melody's "
                                 f"limit of {room / self.frame_rate:.2f} s (the melody and the prompt's "
                                 f"{prompt['input_ids'].shape[1]} tokens take positions); ask for less")
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
            if "melody" in params:
                record["melody"] = {k: params["melody"][k] for k in ("file", "sha256")}
                tokens["melody"] = params["melody"]["chroma"]
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
                if "melody" in params:
                    kwargs["input_features"] = self._chroma_features([params["melody"]["chroma"]])
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
        tensors = {"codes": codes_t, "code_mask": mask, "reencoded": reenc}
        if self.melody is not None:  # MusicGen-Melody: the chroma each clip was made with, over chroma_length frames
            length = int(self.model.config.chroma_length)
            tensors["chroma"] = torch.stack([torch.stack([chroma.frames(self.clip_melody(d), length) for d in g.samples])
                                             for g in groups])
        return TrainingBatch(prompts, tensors, self._prompt_tokens(prompts))

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
        n = inputs.shape[0]
        if "chroma" not in t:
            return self._run(model, ids, attn, inputs, None, hidden), seq[..., 1:].to(device), valid.to(device)
        # MusicGen-Melody: the melody and prompt are a prefix the decoder attends to without a padding mask, so
        # each row gets its own prompt unpadded (as generated), rows of one prompt length in one call
        features = self._one_hot(t["chroma"].reshape(B * K, -1)[sl])
        plen = attn.sum(-1).tolist()
        parts: dict[int, torch.Tensor] = {}
        for length in sorted(set(plen)):
            rows = torch.tensor([i for i, x in enumerate(plen) if x == length], device=device)
            keep = attn[rows].bool()
            p_ids, p_attn = ids[rows][keep].view(len(rows), -1), attn[rows][keep].view(len(rows), -1)
            out = self._run(model, p_ids, p_attn, inputs[rows], features[rows], hidden)
            for j, r in enumerate(rows.tolist()):
                parts[r] = out[j]
        return torch.stack([parts[i] for i in range(n)]), seq[..., 1:].to(device), valid.to(device)

    def _run(self, model, ids, attn, inputs, features, hidden: bool) -> torch.Tensor:
        """One teacher-forced call: logits [n, C, L, V] or the decoder's last hidden state [n, L, H] of the
        code positions (MusicGen-Melody's prefix positions dropped)."""
        n, C, L = inputs.shape
        kwargs = dict(input_ids=ids, attention_mask=attn, decoder_input_ids=inputs.reshape(n * C, L), use_cache=False)
        if features is not None:
            kwargs["input_features"] = features
        if hidden:
            seen: list[torch.Tensor] = []
            handle = _decoder_stack(model).register_forward_hook(lambda m, a, o: seen.append(o.last_hidden_state))
            try:
                model(**kwargs)
            finally:
                handle.remove()
            return seen[-1][:, -L:]
        logits = model(**kwargs).logits
        return logits.reshape(n, C, -1, logits.shape[-1])[:, :, -L:]

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
        from transformers import AutoTokenizer

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
            base = type(ours.model).from_pretrained(str(folder) if folder else base_model, dtype=torch.float32,
                                                    use_safetensors=True)
            model = PeftModel.from_pretrained(base, str(exported))
        elif fmt == "merged":
            model = type(ours.model).from_pretrained(str(exported), dtype=torch.float32, use_safetensors=True)
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
    from transformers.models.musicgen_melody.modeling_musicgen_melody import MusicgenMelodyDecoder

    for m in model.modules():
        if isinstance(m, (MusicgenDecoder, MusicgenMelodyDecoder)):
            return m
    raise TypeError(f"{type(model).__name__} holds no MusicGen decoder")
