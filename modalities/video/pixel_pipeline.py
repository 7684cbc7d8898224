"""The built-in text-to-video pipeline: flow matching in pixel space, no VAE.

An ordinary diffusers ``DiffusionPipeline`` (components: ``unet`` a ``UNet2DConditionModel`` that sees a
clip's frames stacked as channels -- ``[N, 3, frames, H, W]`` pixels in [-1, 1] folded to ``[N, 3 frames, H,
W]``, so a clip has exactly ``out_channels / 3`` frames; two more input channels, when the UNet takes them, hold each
pixel's coordinates; ``text_encoder`` a ``CLIPTextModel``; ``tokenizer``;
``scheduler`` a flow-matching scheduler), saved and loaded with ``save_pretrained`` / ``from_pretrained`` and
LoRA files with ``load_lora_weights``. Its call mirrors ``WanPipeline``'s (prompt, negative prompt, height,
width, num_frames, steps, guidance, generators, ``latents``, ``output_type`` ``np`` / ``pt`` / ``latent``, step
callbacks, ``prepare_latents``), and its denoiser takes the flow time as Wan's does (timestep = 1000 t, t = 1
pure noise; the UNet predicts the clean clip, turned into a velocity by ``velocity``), so the video modality drives it, Wan and LTX through the same code.

A Wan transformer in pixel space was tried first (2x4x4 patches): after 1000 steps (22 min on 2 cores) it
still scattered 4x4 patches of colour instead of one shape; convolutions learn the world's layout far
sooner (model card).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.utils import BaseOutput

from ..diffusion.families import velocity  # the UNet's clean-clip prediction as a velocity

__all__ = ["ShapesVideoPipeline", "VideoPipelineOutput", "velocity"]


@dataclass
class VideoPipelineOutput(BaseOutput):
    frames: Any  # np: [N, frames, H, W, 3] in [0, 1]; pt: [N, frames, 3, H, W]; latent: [N, 3, frames, H, W]


class ShapesVideoPipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    """Text-to-video in pixel space (see the module docstring)."""

    model_cpu_offload_seq = "text_encoder->unet"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, unet, text_encoder, tokenizer, scheduler):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)

    @property
    def sample_size(self) -> int:
        return int(self.unet.config.sample_size)

    @property
    def frames(self) -> int:
        return int(self.unet.config.out_channels) // 3

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    def prepare_latents(self, batch_size: int, num_channels_latents: int, height: int, width: int, num_frames: int,
                        dtype: torch.dtype, device: torch.device, generator=None, latents: torch.Tensor | None = None):
        """Starting noise [N, C, frames, H, W] (one generator per clip, or one for all), as Wan's pipeline
        draws it."""
        if latents is not None:
            return latents.to(device=device, dtype=dtype)
        shape = (1, num_channels_latents, num_frames, height, width)
        gens = list(generator) if isinstance(generator, (list, tuple)) else [generator] * batch_size
        return torch.cat([torch.randn(shape, generator=g, device="cpu" if g is None else g.device)
                          for g in gens]).to(device=device, dtype=dtype)

    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text-encoder hidden states [N, L, D] for the prompts ("" = unconditional)."""
        tok = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        device = self.unet.device
        out = self.text_encoder(input_ids=tok.input_ids.to(device), attention_mask=tok.attention_mask.to(device))
        return out.last_hidden_state

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        height: int = 32,
        width: int = 32,
        num_frames: int | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 4.0,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
        callback_on_step_end: Callable[..., dict] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        return_dict: bool = True,
    ):
        # 1. Check inputs
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        n = len(prompts)
        negatives = ([negative_prompt or ""] * n if negative_prompt is None or isinstance(negative_prompt, str)
                     else list(negative_prompt))
        gens = list(generator) if isinstance(generator, (list, tuple)) else [generator] * n
        if len(gens) != n or len(negatives) != n:
            raise ValueError(f"got {n} prompts, {len(negatives)} negative prompts and {len(gens)} generators")
        m = self.size_multiple
        if height % m or width % m or height < m or width < m:
            raise ValueError(f"height and width must be multiples of {m}; got {height}x{width}")
        num_frames = num_frames or self.frames
        if num_frames != self.frames:
            raise ValueError(f"this model makes clips of {self.frames} frames, not {num_frames}")
        device, dtype = self.unet.device, self.unet.dtype

        # 2. Encode prompts (negative first, for classifier-free guidance)
        cfg = guidance_scale > 1.0
        cond = self.encode_prompt(prompts).to(dtype)
        uncond = self.encode_prompt(negatives).to(dtype) if cfg else None

        # 3. Initial noise, one generator per clip (each candidate is reproducible alone)
        x = self.prepare_latents(n, 3, height, width, num_frames, torch.float32, device, gens, latents)

        # 4. Denoise: Euler steps of the velocity, guided
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        for i, t in enumerate(self.progress_bar(timesteps)):
            ts = t.expand(n).to(device)
            v = velocity(self.unet, x.to(dtype), ts, cond).float()
            if cfg:
                vu = velocity(self.unet, x.to(dtype), ts, uncond).float()
                v = vu + guidance_scale * (v - vu)
            x = self.scheduler.step(v, t, x, return_dict=False)[0]
            if callback_on_step_end is not None:
                out = callback_on_step_end(self, i, t, {"latents": x})
                x = out.get("latents", x)

        # 5. To frames
        if output_type == "latent":
            video = x
        else:
            video = ((x.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 1, 3, 4)  # [N, F, 3, H, W]
            if output_type == "np":
                video = video.permute(0, 1, 3, 4, 2).cpu().numpy().astype(np.float32)
        self.maybe_free_model_hooks()
        return VideoPipelineOutput(frames=video) if return_dict else (video,)
