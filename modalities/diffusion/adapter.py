"""The modality contract over diffusers pipelines, shared by the modalities built on them.

A modality subclasses :class:`DiffusersAdapter` and adds what is its own: generation (and the media it
writes), ``media_tensor`` (its stored media as the pixels the VAE encodes) and its exports. Everything
else is here, asking :data:`.families.FAMILIES` only what differs per model family. Two score kinds
(see :mod:`modalities.protocol` for the conventions):

- ``unet`` (diffusion): UNet with epsilon or v prediction -- Stable Diffusion 1.5 / 2.x, SDXL, and the
  built-in pixel-space shapes model. Score: minus the per-sample MSE between the UNet's prediction and
  its target (noise, or v) at a timestep drawn once per group.
- ``flow``: flow-matching transformers -- SD3, FLUX.1 and Qwen-Image. Score: minus the per-sample MSE
  of the predicted velocity ``noise - x0`` at ``x_t = (1 - t) x0 + t noise`` (t = 1 is pure noise), t
  drawn once per group from a logit-normal (the default, as SD3's and FLUX's trainers do), the
  scheduler's shifted density, or uniformly (the ``flow_t`` training option).
"""
from __future__ import annotations

import abc
import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import torch

from ..loading import ModelLoadError
from ..protocol import Group, ModalityAdapter, ModelRef, ScoreKind, TrainingBatch
from ..scoring import denoising_score, flow_interpolate, flow_velocity_target, group_noise, group_timesteps
from .families import FLOW_T, encode_latent, family_of, sample_flow_t, vae_scale
from .pipeline import SUPPORTED_PIPELINES, load_pipeline

ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_CACHE_SIZE = 512  # prompts whose text conditioning the trainer keeps in memory


class DiffusersAdapter(ModalityAdapter):
    """Loading, training latents (cached on disk), prompt conditioning (cached in memory), the score,
    training options and LoRA files of a diffusers pipeline. Subclasses set ``name``,
    ``BUILTIN_MODELS`` (alias -> folder), ``LOCAL_PIPELINES`` (class name -> ``"module:Class"``),
    ``RESTORE_HINT`` and implement ``media_tensor`` and ``generate``."""

    score_kind = ScoreKind.DIFFUSION  # per instance: FLOW for transformer pipelines
    default_lora_targets = ATTENTION_TARGETS
    BUILTIN_MODELS: dict[str, Path] = {}
    LOCAL_PIPELINES: dict[str, str] = {}
    RESTORE_HINT = ""
    MEDIA = "image"  # the families' ``media`` this modality loads

    def __init__(self, pipe, *, model: str, revision: str | None = None, adapter: str | None = None,
                 latent_cache: Path | None = None):
        self.pipe = pipe
        self.model_name = model
        self.revision = revision
        self.adapter_name = adapter
        self.latent_cache = Path(latent_cache) if latent_cache else None
        cls_name = type(pipe).__name__
        if cls_name not in SUPPORTED_PIPELINES:
            raise ModelLoadError(f"{cls_name} is not supported; supported: {', '.join(SUPPORTED_PIPELINES)}")
        self.fam = family_of(cls_name)
        self.family = SUPPORTED_PIPELINES[cls_name]
        self.score_kind = ScoreKind.FLOW if self.family == "flow" else ScoreKind.DIFFUSION
        self.flow_t = "logit-normal"  # how flow models draw training times (configure_training)
        if self.family == "unet":
            from diffusers import DDPMScheduler

            # the training noise schedule of the model (whatever sampler it ships with)
            train_sched = DDPMScheduler.from_config(pipe.scheduler.config)
            self._alphas_cumprod = train_sched.alphas_cumprod.float()
            self.prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")
            if self.prediction_type not in ("epsilon", "v_prediction"):
                raise ModelLoadError(f"prediction type {self.prediction_type!r} is not supported (epsilon or v_prediction)")

    @classmethod
    def load_pipeline(cls, ref: ModelRef, *, device: str | None = None, dtype: torch.dtype | None = None):
        """(pipe, name, revision) for ``ref`` with this modality's built-in models."""
        return load_pipeline(ref, builtin=cls.BUILTIN_MODELS, local_classes=cls.LOCAL_PIPELINES,
                             restore_hint=cls.RESTORE_HINT, device=device, dtype=dtype, media=cls.MEDIA)

    @classmethod
    def load(cls, ref: ModelRef, *, device: str | None = None, dtype: torch.dtype | None = None,
             cache_dir: Path | None = None) -> "DiffusersAdapter":
        """Load a pipeline (hub id or local folder); training latents are cached under
        ``cache_dir/latents`` (by model, revision and media hash)."""
        pipe, name, revision = cls.load_pipeline(ref, device=device, dtype=dtype)
        return cls(pipe, model=name, revision=revision, adapter=ref.adapter,
                   latent_cache=Path(cache_dir) / "latents" if cache_dir else None)

    # -- properties ----------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.trainable_module().device

    @property
    def dtype(self) -> torch.dtype:
        return self.trainable_module().dtype

    @property
    def is_pixel_space(self) -> bool:
        return getattr(self.pipe, "vae", None) is None

    @property
    def size_multiple(self) -> int:
        """Sides of an output must be multiples of this."""
        if self.is_pixel_space:
            return 2 ** (len(self.pipe.unet.config.block_out_channels) - 1)
        patch = self.fam.patch
        if patch == 1 and self.family == "flow":
            patch = getattr(self.trainable_module().config, "patch_size", 1)
        return vae_scale(self.pipe) * patch

    @property
    def native_size(self) -> int:
        latent = getattr(self.pipe, "default_sample_size", None) or self.trainable_module().config.sample_size
        return latent if self.is_pixel_space else latent * vae_scale(self.pipe)

    def schedulers(self) -> dict[str, str]:
        return self.fam.schedulers

    def _set_scheduler(self, name: str) -> None:
        import diffusers

        cls = getattr(diffusers, self.schedulers()[name])
        if type(self.pipe.scheduler) is not cls:
            self.pipe.scheduler = cls.from_config(self.pipe.scheduler.config)

    # -- training tensors ------------------------------------------------------
    @abc.abstractmethod
    def media_tensor(self, data: bytes) -> torch.Tensor:
        """Stored media bytes as what the VAE encodes: pixels [C, H, W] in [-1, 1] (audio: [channels, samples])."""

    @torch.no_grad()
    def _latent(self, data: bytes) -> torch.Tensor:
        """Training latent of one candidate (cached on disk by model and media hash)."""
        vae = getattr(self.pipe, "vae", None)
        vae_dtype = "pixel" if vae is None else str(vae.dtype)
        ident = f"{self.model_name}@{self.revision}|{vae_dtype}".encode()
        key = hashlib.sha256(ident + hashlib.sha256(data).digest()).hexdigest()
        path = self.latent_cache / f"{key[:2]}/{key}.safetensors" if self.latent_cache else None
        if path is not None and path.exists():
            from safetensors.torch import load_file

            return load_file(path)["latent"]
        lat = encode_latent(self.pipe, self.fam, self.media_tensor(data)[None])
        if not torch.isfinite(lat).all():
            raise ValueError(f"the VAE produced non-finite latents for a {self.name} candidate; try fp32 (--device cpu)")
        if path is not None:
            from safetensors.torch import save_file

            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")  # processes of one accelerate run may race here
            save_file({"latent": lat.contiguous()}, tmp)
            os.replace(tmp, path)
        return lat

    @torch.no_grad()
    def encode(self, groups: Sequence[Group]) -> TrainingBatch:
        if not groups:
            raise ValueError("nothing to encode")
        K = len(groups[0].samples)
        if any(len(g.samples) != K for g in groups):
            raise ValueError("every group in a batch must hold the same number of samples")
        lats = [[self._latent(d) for d in g.samples] for g in groups]
        shapes = {tuple(lat.shape) for row in lats for lat in row}
        if len(shapes) > 1:
            raise ValueError(f"candidates of one batch must share a size; got latent shapes {sorted(shapes)}")
        latents = torch.stack([torch.stack(row) for row in lats])
        prompts = [g.prompt for g in groups]
        return TrainingBatch(prompts, {"latents": latents}, self._conditioning(prompts, latents.shape[-2:]))

    def _conditioning(self, prompts: list[str], latent_hw) -> dict[str, torch.Tensor]:
        """Text conditioning per prompt, cached in memory (the text encoders never train:
        LoRA goes into the UNet/transformer only), so a prompt is encoded once per run."""
        hw = tuple(int(x) for x in latent_hw)
        cache = self.__dict__.setdefault("_text_cache", OrderedDict())
        missing = [p for p in dict.fromkeys(prompts) if (p, hw) not in cache]
        if missing:
            fresh = self._encode_conditioning(missing, hw)
            for i, p in enumerate(missing):
                cache[(p, hw)] = {k: v[i].clone() for k, v in fresh.items()}
        for p in prompts:
            cache.move_to_end((p, hw))
        out = {k: stack_padded([cache[(p, hw)][k] for p in prompts]) for k in cache[(prompts[0], hw)]}
        while len(cache) > TEXT_CACHE_SIZE:
            cache.popitem(last=False)
        return out

    def _encode_conditioning(self, prompts: list[str], latent_hw) -> dict[str, torch.Tensor]:
        return self.fam.encode(self.pipe, prompts, latent_hw, self.device)

    # -- score ---------------------------------------------------------------
    def score(self, model: torch.nn.Module, batch: TrainingBatch, generator: torch.Generator) -> torch.Tensor:
        x0 = batch.tensors["latents"]
        B, K = x0.shape[:2]
        device = self.trainable_module().device
        dtype = self.trainable_module().dtype  # not a LoRA parameter's (often float32)
        # 1. Noise and t: once per group, from the caller's generator (shared by winner and loser)
        noise = group_noise(generator, B, K, tuple(x0.shape[2:]), device=generator.device)
        x0, noise = x0.to(device), noise.to(device)
        cond = {k: v.to(device).repeat_interleave(K, dim=0) for k, v in batch.conditioning.items()}
        if self.family == "unet":
            t = group_timesteps(generator, B, K, len(self._alphas_cumprod), device=generator.device).to(device)
            a = self._alphas_cumprod.to(device)[t].view(B, K, *([1] * (x0.dim() - 2)))
            noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
            target = noise if self.prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
            pred = self.fam.predict(self.pipe, model, noisy.flatten(0, 1), t.flatten(), cond, dtype)
        else:
            # 2. Flow matching: x_t = (1 - t) x0 + t noise, t = 1 pure noise; target velocity noise - x0
            shift = self.fam.flow_shift or float(getattr(self.pipe.scheduler.config, "shift", 1.0) or 1.0)
            t = sample_flow_t(generator, B, K, self.flow_t, shift=shift).to(device)
            xt = flow_interpolate(x0, noise, t)
            target = flow_velocity_target(x0, noise)
            pred = self.fam.predict(self.pipe, model, xt.flatten(0, 1), t.flatten(), cond, dtype)
        return denoising_score(pred.view(B, K, *pred.shape[1:]), target)

    # -- reward features -------------------------------------------------------
    def _feature_module(self) -> torch.nn.Module:
        """Where the denoiser's features are read: the UNet's middle block, else the last transformer block."""
        den = self.trainable_module()
        if getattr(den, "mid_block", None) is not None:
            return den.mid_block
        for name in ("single_transformer_blocks", "transformer_blocks", "blocks", "layers"):
            blocks = getattr(den, name, None)
            if blocks is not None and len(blocks):
                return blocks[-1]
        raise NotImplementedError(f"no middle or transformer block to read features from in {type(den).__name__}")

    @torch.no_grad()
    def reward_features(self, prompts: Sequence[str], media: Sequence[bytes], *, noise_level: float = 0.5,
                        seed: int = 0, chunk: int = 16, predicted_x0: bool = False,
                        summary: bool = False) -> torch.Tensor:
        """The generator's own features of each candidate, as a latent reward model reads them: the
        denoiser's middle (or last transformer) block, averaged over positions, at noise level
        ``noise_level`` (0 clean .. 1 pure noise; the same noise per candidate for a seed), followed by
        the clean latent's per-channel mean and spread (with ``predicted_x0``: those of the clean latent
        the denoiser predicts, as a noise-aware reward model sees a sample it scores mid-trajectory).
        No extra model, and it reads noisy latents too. ``summary``: the clean latent's part only
        (:meth:`clean_features`), a few numbers that few votes can learn."""
        if not 0.0 <= noise_level < 1.0:
            raise ValueError(f"noise_level must be in [0, 1), got {noise_level}")
        if len(prompts) != len(media):
            raise ValueError(f"{len(prompts)} prompts for {len(media)} candidates")
        parts = []
        for start in range(0, len(media), chunk):
            x0 = torch.stack([self._latent(m) for m in media[start:start + chunk]]).to(self.device)
            gen = torch.Generator("cpu").manual_seed(seed)
            noise = torch.randn(x0.shape[1:], generator=gen).to(self.device).expand_as(x0)
            n = x0.shape[0]
            if self.family == "unet":
                step = int(round(noise_level * (len(self._alphas_cumprod) - 1)))
                a = self._alphas_cumprod[step].to(self.device)
                noisy, t = a.sqrt() * x0 + (1 - a).sqrt() * noise, torch.full((n,), step, device=self.device)
            else:
                t = torch.full((n,), float(noise_level), device=self.device)
                noisy = flow_interpolate(x0[:, None], noise[:, None], t.view(n, 1))[:, 0]
            parts.append(self.latent_reward_features(prompts[start:start + n], noisy, t,
                                                     clean=None if predicted_x0 else x0, summary=summary))
        return torch.cat(parts)

    @torch.no_grad()
    def latent_reward_features(self, prompts: Sequence[str], noisy: torch.Tensor, t: torch.Tensor,
                               clean: torch.Tensor | None = None, summary: bool = False) -> torch.Tensor:
        """Reward features of latents ``noisy`` at model times ``t`` (UNet timesteps, or flow times):
        the middle block pooled, then the per-channel mean and spread of ``clean`` (None: of the clean
        latent the denoiser predicts). The module runs as it is: callers disable a LoRA when they want
        the base model's view."""
        return self.latent_features(prompts, noisy, t, clean, summary).cpu()

    def latent_features(self, prompts: Sequence[str], noisy: torch.Tensor, t: torch.Tensor,
                        clean: torch.Tensor | None = None, summary: bool = False) -> torch.Tensor:
        """:meth:`latent_reward_features` on the model's device, differentiable in ``noisy`` when grad is
        enabled (reward guidance follows its gradient). ``summary``: the clean latent's part only."""
        if summary and clean is not None:
            return self.clean_features(clean.float())
        module, captured = self._feature_module(), []
        hook = module.register_forward_hook(lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out))
        try:
            cond = {k: v.to(self.device) for k, v in self._conditioning(list(prompts), noisy.shape[-2:]).items()}
            pred = self.fam.predict(self.pipe, self.trainable_module(), noisy, t, cond, self.dtype).float()
        finally:
            hook.remove()
        h = captured[-1].float()
        pooled = h.mean(dim=(-2, -1)) if h.dim() == 4 else h.mean(dim=1)
        if clean is None:
            if self.family == "unet":
                from .stochastic import x0_eps

                clean = x0_eps(pred, noisy, self._alphas_cumprod.to(noisy.device)[t.long()], self.prediction_type)[0]
            else:
                clean = noisy.float() - t.float().view(-1, *([1] * (noisy.dim() - 1))) * pred
        return self.clean_features(clean) if summary else torch.cat([pooled, self.clean_features(clean)], dim=-1)

    def clean_features(self, clean: torch.Tensor) -> torch.Tensor:
        """What a reward model reads of a (predicted) clean latent besides the pooled block: its per-channel
        mean and spread. Modalities add their own (video: where the content is and how it moves)."""
        flat = clean.float().flatten(2) if clean.dim() >= 4 else clean.float().transpose(1, 2)
        return torch.cat([flat.mean(-1), flat.std(-1)], dim=-1)

    def noise_level_of(self, t: torch.Tensor) -> torch.Tensor:
        """Model times (UNet timesteps or flow times) as noise levels in [0, 1)."""
        if self.family == "unet":
            return t.float() / (len(self._alphas_cumprod) - 1)
        return t.float()

    # -- stochastic steps (online methods) -----------------------------------------------
    def stochastic_sampler(self, *, steps: int, guidance: float, eta: float, size: int | None = None):
        from .trajectory import StochasticSampler

        return StochasticSampler(self, steps=steps, guidance=guidance, eta=eta, size=size)

    def online_defaults(self) -> dict[str, float]:
        return dict(self.fam.online)

    def configure_training(self, **options: Any) -> None:
        """Training options (the spec's ``train_options``): ``flow_t``, how flow models draw t."""
        unknown = set(options) - {"flow_t"}
        if unknown:
            raise ValueError(f"unknown {self.name} training option(s) {sorted(unknown)}; use flow_t")
        if "flow_t" in options:
            if options["flow_t"] not in FLOW_T:
                raise ValueError(f"flow_t must be one of {', '.join(FLOW_T)}, not {options['flow_t']!r}")
            self.flow_t = options["flow_t"]

    # -- LoRA ------------------------------------------------------------------
    def trainable_module(self) -> torch.nn.Module:
        return getattr(self.pipe, self.fam.denoiser)

    def save_lora(self, module: torch.nn.Module, out: Path, state: dict[str, torch.Tensor],
                  config: dict[str, Any]) -> None:
        """diffusers' LoRA file (``pytorch_lora_weights.safetensors``, what
        ``pipeline.load_lora_weights`` loads), with the LoraConfig in its metadata: without it
        a loader would assume alpha = rank."""
        out.mkdir(parents=True, exist_ok=True)
        if self.fam.denoiser == "transformer":
            type(self.pipe).save_lora_weights(out, transformer_lora_layers=state, transformer_lora_adapter_metadata=config,
                                              safe_serialization=True)
        else:
            type(self.pipe).save_lora_weights(out, unet_lora_layers=state, unet_lora_adapter_metadata=config,
                                              safe_serialization=True)

    def load_lora(self, module: torch.nn.Module, path: Path, adapter_name: str) -> None:
        self.pipe.load_lora_weights(str(path), adapter_name=adapter_name)

    def lora_target_modules(self) -> list[str]:
        return list(ATTENTION_TARGETS)


def stack_padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stack per-prompt conditioning; token sequences of different lengths are right-padded with zeros
    (their masks, padded alike, mark the padding)."""
    if len({t.shape for t in tensors}) == 1:
        return torch.stack(tensors)
    n = max(t.shape[0] for t in tensors)
    return torch.stack([torch.cat([t, t.new_zeros((n - t.shape[0], *t.shape[1:]))]) for t in tensors])
