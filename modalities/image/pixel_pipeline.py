"""The built-in text-to-image pipeline: a pixel-space UNet, no VAE.

It is an ordinary diffusers ``DiffusionPipeline`` (components: ``unet`` a
``UNet2DConditionModel``, ``text_encoder`` a ``CLIPTextModel``, ``tokenizer`` a
``PreTrainedTokenizerFast``, ``scheduler`` a diffusers scheduler), saved and
loaded with ``save_pretrained`` / ``from_pretrained`` in the usual folder
format. Images live in pixel space in [-1, 1], so its "latents" are the images
themselves (scaling factor 1).
"""
from __future__ import annotations

import inspect
from typing import Sequence

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from PIL import Image


class ShapesPixelPipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    """Text-to-image in pixel space; loads and saves LoRA adapters like Stable Diffusion."""

    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(self, unet, text_encoder, tokenizer, scheduler):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)

    @property
    def sample_size(self) -> int:
        return int(self.unet.config.sample_size)

    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text-encoder hidden states [N, L, D] for the prompts ("" = unconditional)."""
        tok = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        )
        device = self.unet.device
        out = self.text_encoder(input_ids=tok.input_ids.to(device), attention_mask=tok.attention_mask.to(device))
        return out.last_hidden_state

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "pil",
    ):
        # 1. Check inputs
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        n = len(prompts)
        if negative_prompt is None:
            negatives = [""] * n
        else:
            negatives = [negative_prompt] * n if isinstance(negative_prompt, str) else list(negative_prompt)
        height = height or self.sample_size
        width = width or self.sample_size
        gens = list(generator) if isinstance(generator, (list, tuple)) else [generator] * n
        if len(gens) != n or len(negatives) != n:
            raise ValueError(f"got {n} prompts, {len(negatives)} negative prompts and {len(gens)} generators")
        device, dtype = self.unet.device, self.unet.dtype

        # 2. Encode prompts (negative or empty first, for classifier-free guidance)
        cfg = guidance_scale > 1.0
        cond = self.encode_prompt(prompts).to(dtype)
        if cfg:
            cond = torch.cat([self.encode_prompt(negatives).to(dtype), cond])

        # 3. Initial noise, one generator per image (so each candidate is reproducible alone)
        shape = (1, self.unet.config.in_channels, height, width)
        x = torch.cat([torch.randn(shape, generator=g, device="cpu" if g is None else g.device) for g in gens])
        x = x.to(device=device, dtype=dtype) * self.scheduler.init_noise_sigma

        # 4. Denoise (stochastic samplers draw each image's noise from its own generator)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        step_kwargs = {}
        if "generator" in inspect.signature(self.scheduler.step).parameters:
            step_kwargs["generator"] = gens if n > 1 else gens[0]
        for t in self.progress_bar(self.scheduler.timesteps):
            inp = torch.cat([x, x]) if cfg else x
            inp = self.scheduler.scale_model_input(inp, t)
            pred = self.unet(inp, t, encoder_hidden_states=cond).sample
            if cfg:
                uncond, text = pred.chunk(2)
                pred = uncond + guidance_scale * (text - uncond)
            x = self.scheduler.step(pred, t, x, **step_kwargs).prev_sample

        # 5. To images
        x = (x.float().clamp(-1, 1) + 1) / 2
        if output_type == "pt":
            return x
        arr = (x.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
        return ImagePipelineOutput(images=[Image.fromarray(a) for a in arr])
