"""ACE-Step (diffusers ``AceStepPipeline``): text-to-music by flow matching, through the shared diffusers
plumbing (:mod:`modalities.diffusion`).

Loading, training latents (the clip re-encoded by its Oobleck VAE; the latent is ``[frames, channels]``),
the prompt conditioning, the flow-matching score and the LoRA files are the plumbing's, from the
``AceStepPipeline`` row of :data:`modalities.diffusion.families.FAMILIES`; so Flow-DPO, Flow-RWR and the
other flow losses train ACE-Step as they train SD3. What is music's own is here: the settings
(duration, steps, guidance), clips as WAV at the VAE's rate and channels, and the exports (diffusers
format, which ``AceStepPipeline.load_lora_weights`` loads, and PEFT).

A generated clip carries the latent it was sampled as (the WAV's ``pltk`` chunk, float32): the pipeline
rescales every clip to a -1 dBFS peak before it is stored, so re-encoding the audio would train on another
latent than the one sampled. Imported audio (and a clip of another model) is encoded by the VAE.

Clips are instrumental: the prompt is the caption, lyrics are empty (a lyrics setting would have to be
stored with each clip and fed to training, which this adapter does not do yet).
"""
from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..diffusion.adapter import DiffusersAdapter
from ..protocol import GenerationRequest, ModelRef, Provenance, Sample
from . import wav

FAMILY = "acestep"
FORMATS = ("diffusers", "peft")
DEFAULT_SECONDS = 10.0
MAX_STEPS = 200
MAX_GUIDANCE = 30.0
PROBE = "an upbeat jazz tune with a walking bass"
_NOT_OURS = ("temperature", "top_p", "top_k")


def _number(params: dict[str, Any], key: str) -> float:
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


class AceStepAdapter(DiffusersAdapter):
    """ACE-Step pipelines behind the modality contract (see the module docstring)."""

    name = "music"
    MEDIA = "music"
    BUILTIN_MODELS: dict[str, Path] = {}

    @classmethod
    def load(cls, ref: ModelRef, *, device: str | None = None, dtype: torch.dtype | None = None,
             cache_dir: Path | None = None, trust_remote_code: bool = False) -> "AceStepAdapter":
        return super().load(ref, device=device, dtype=dtype, cache_dir=cache_dir)  # type: ignore[return-value]

    # -- settings --------------------------------------------------------------------------------------
    @property
    def is_turbo(self) -> bool:
        return bool(getattr(self.pipe, "is_turbo", False))

    @property
    def sample_rate(self) -> int:
        return int(self.pipe.sample_rate)

    @property
    def audio_channels(self) -> int:
        return int(getattr(self.pipe.vae.config, "audio_channels", 1) or 1)

    def default_params(self) -> dict[str, Any]:
        d = self.fam.defaults
        # turbo checkpoints have guidance distilled in: their pipeline runs them without it
        return {"duration": DEFAULT_SECONDS, "steps": d["steps"], "guidance": 1.0 if self.is_turbo else d["guidance"]}

    def _params(self, request: GenerationRequest) -> dict[str, Any]:
        given = {("guidance" if k == "guidance_scale" else k): v for k, v in dict(request.params).items()
                 if v not in (None, "")}
        for key in _NOT_OURS:
            if key in given:
                raise ValueError(f"ACE-Step denoises a whole clip at once: it has no {key} setting (it is for "
                                 "token models such as MusicGen); leave it empty")
        if "melody" in given:
            raise ValueError("ACE-Step takes no melody file (that is MusicGen-Melody's); leave it empty")
        unknown = set(given) - {"duration", "steps", "guidance"}
        if unknown:
            raise ValueError(f"unknown ACE-Step setting(s) {sorted(unknown)}; use duration, steps, guidance")
        params = {**self.default_params(), **given}
        duration, steps, guidance = (_number(params, k) for k in ("duration", "steps", "guidance"))
        if steps != int(steps) or not 1 <= steps <= MAX_STEPS:
            raise ValueError(f"steps must be a whole number between 1 and {MAX_STEPS}, got {params['steps']!r}")
        if not 1.0 <= guidance <= MAX_GUIDANCE:
            raise ValueError(f"guidance must be between 1 (off) and {MAX_GUIDANCE:g}, got {guidance:g}")
        if self.is_turbo and guidance != 1.0 and "guidance" in given:
            raise ValueError("this is a turbo ACE-Step checkpoint: guidance is distilled into it and its pipeline "
                             "ignores the setting; leave guidance empty (or 1)")
        if duration <= 0 or duration > wav.MAX_SECONDS:
            raise ValueError(f"duration must be between 0 and {wav.MAX_SECONDS:g} s, got {duration:g}")
        frames = math.ceil(duration * self.pipe.latents_per_second)
        if frames < 1:
            raise ValueError(f"duration {duration:g} s is shorter than one latent frame "
                             f"({1 / self.pipe.latents_per_second:.3g} s)")
        # whole latent frames: the prompt's metadata then says the duration training reads from the latent
        return {"duration": frames / self.pipe.latents_per_second, "steps": int(steps), "guidance": guidance}

    # -- generation -----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, request: GenerationRequest) -> list[Sample]:
        """``request.n`` clips, one pipeline call per seed (batched calls differ in the last bits, and a
        seed must give the same clip whatever ``n``), as WAV at the VAE's rate and channels."""
        params = self._params(request)
        seeds = request.resolved_seeds()
        samples = []
        for seed in seeds:
            final: list[torch.Tensor] = []

            def keep(pipe, step, t, kw):  # the latent after each step; the last one is the sample
                final[:] = [kw["latents"]]
                return {}

            clip = self.pipe(prompt=request.prompt, lyrics="", audio_duration=params["duration"],
                             num_inference_steps=params["steps"], guidance_scale=params["guidance"],
                             generator=torch.Generator("cpu").manual_seed(seed), output_type="pt",
                             callback_on_step_end=keep).audios[0].float().cpu()
            latent = final[0][0].float().cpu().numpy()
            tokens = {"family": FAMILY, "model": self.model_name, "shape": list(latent.shape),
                      "latent": base64.b64encode(np.ascontiguousarray(latent, dtype="<f4").tobytes()).decode()}
            record = {**params, "seconds": round(clip.shape[-1] / self.sample_rate, 3), "sample_rate": self.sample_rate,
                      "dtype": str(self.dtype).replace("torch.", ""), "device": self.device.type}
            prov = Provenance("music", self.model_name, seed, record, revision=self.revision, adapter=self.adapter_name)
            samples.append(Sample(wav.encode_wav(clip.numpy(), self.sample_rate, tokens), "audio/wav", prov))
        return samples

    # -- training tensors ------------------------------------------------------------------------------
    def stored_latent(self, data: bytes) -> torch.Tensor | None:
        """The latent a clip of this model was sampled as ([frames, channels]), or None."""
        tokens = wav.read_tokens(data)
        if not tokens or tokens.get("family") != FAMILY or tokens.get("model") != self.model_name:
            return None
        try:
            shape = [int(x) for x in tokens["shape"]]
            flat = np.frombuffer(base64.b64decode(tokens["latent"]), dtype="<f4")
            latent = torch.from_numpy(flat.copy()).reshape(shape)
        except (KeyError, TypeError, ValueError, RuntimeError):
            return None
        width = int(self.trainable_module().config.audio_acoustic_hidden_dim)
        if latent.dim() != 2 or latent.shape[1] != width or not torch.isfinite(latent).all():
            return None
        return latent

    def _latent(self, data: bytes) -> torch.Tensor:
        stored = self.stored_latent(data)
        return stored if stored is not None else super()._latent(data)

    def media_tensor(self, data: bytes) -> torch.Tensor:
        """A clip as the VAE takes it: [channels, samples] at its rate (resampled; mono repeated)."""
        audio, _ = wav.decode(data, rate=self.sample_rate, allow_silent=True, channels=self.audio_channels)
        return torch.from_numpy(audio)

    # -- exports -----------------------------------------------------------------------------------------
    @classmethod
    def export_adapter(cls, adapter_dir: Path, out: Path, fmt: str, *, base_model: str,
                       metadata: dict[str, Any]) -> Path:
        """diffusers format (``AceStepPipeline.load_lora_weights``) or a PEFT folder for the transformer."""
        from ..diffusion.export import export_adapter

        if fmt not in FORMATS:
            raise ValueError(f"ACE-Step adapters export as {' or '.join(FORMATS)}, not {fmt!r}")
        return export_adapter(adapter_dir, out, fmt, metadata=metadata)

    @classmethod
    def verify_export(cls, base_model: str, adapter_dir: Path, exported: Path, fmt: str, *,
                      seconds: float | None = None, atol: float = 1e-4) -> float:
        """The clip (float audio, before WAV rounding) the export makes against the trained adapter's, for
        one prompt and seed, two steps."""
        from ..diffusion.export import verify_export

        def load(model: str, adapter: str | None):
            return cls.load_pipeline(ModelRef(model, adapter=adapter), device="cpu")[0]

        def clip(pipe) -> torch.Tensor:
            length = seconds or 2.0 / pipe.latents_per_second * 4  # a few latent frames
            return pipe(prompt=PROBE, lyrics="", audio_duration=length, num_inference_steps=2,
                        generator=torch.Generator("cpu").manual_seed(0), output_type="pt").audios.float()

        return verify_export(load, clip, base_model, adapter_dir, exported, fmt, atol=atol)
