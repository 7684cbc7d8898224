"""Diffusers model families as table entries: what differs between SD, SDXL, SD3, FLUX and Qwen-Image.

The plumbing in :mod:`.pipeline` and :mod:`.adapter` -- loading a pipeline, encoding training latents,
caching prompt conditioning, scoring, saving and loading LoRA -- is shared by every modality built on
diffusers pipelines, and asks this table only what differs per family:

- ``score``: epsilon/v prediction on a UNet (``diffusion``) or flow matching on a transformer (``flow``);
- ``encode``: the prompt conditioning the denoiser takes (per prompt, cached by the caller);
- ``to_model`` / ``from_model``: the latent layout the denoiser sees (FLUX and Qwen-Image pack 2x2
  patches into tokens) and back;
- ``predict``: one denoiser call, ``(pipe, model, x_t, t, cond) -> prediction`` in the model layout;
- ``latent_norm``: how VAE latents are normalised (shift/scale, or Qwen-Image's per-channel mean/std);
- ``defaults``: steps, guidance and sampler for generation, and ``train_guidance`` for
  guidance-distilled models (FLUX.1-dev embeds the guidance value; training uses a fixed one, as
  diffusers' own FLUX trainers do);
- ``media``: which modality's pipeline it is (``image``, or ``music`` for ACE-Step, whose latents are
  ``[frames, channels]`` sequences from an Oobleck audio VAE, taken unnormalised as its pipeline decodes
  them).

Conventions (see :mod:`modalities.protocol`): flow time t = 1 is pure noise, ``x_t = (1 - t) x0 + t
noise``, velocity target ``noise - x0``; the denoiser gets ``1000 t`` for SD3 and ``t`` for FLUX,
Qwen-Image and ACE-Step, as their pipelines call it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

Cond = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Family:
    name: str
    score: str  # "diffusion" | "flow"
    denoiser: str  # the pipeline attribute LoRA wraps: "unet" | "transformer"
    encode: Callable[[Any, list[str], tuple[int, int], torch.device], Cond]
    predict: Callable[[Any, torch.nn.Module, torch.Tensor, torch.Tensor, Cond, torch.dtype], torch.Tensor]
    defaults: dict[str, Any]
    to_model: Callable[[Any, torch.Tensor], torch.Tensor] = lambda pipe, x: x  # [N, C, H, W] -> denoiser layout
    patch: int = 1  # latent pixels per token side (packing); image sides are multiples of vae_scale * patch
    train_guidance: float | None = None  # fixed guidance for guidance-distilled models
    latent_norm: str = "shift-scale"  # or "mean-std" (Qwen-Image), "none" (pixel space), "audio" (ACE-Step)
    schedulers: dict[str, str] = field(default_factory=dict)
    true_cfg: bool = False  # guidance is "true" CFG against a negative prompt (Qwen-Image), not guidance_scale
    cfg: bool = True  # stepping by hand guides with an unconditional pass (not FLUX: its guidance is embedded)
    stochastic: bool = True  # Palate can step it stochastically with log-probabilities (SPO)
    online: dict[str, Any] = field(default_factory=dict)  # online methods' sampling defaults for the family
    media: str = "image"  # the modality whose pipeline this is
    flow_shift: float | None = None  # the sampler's time shift when the scheduler config does not carry it

    def guidance_kwargs(self, guidance: float, negative: str | None, n: int) -> dict[str, Any]:
        """The pipeline-call arguments for a guidance value and a negative prompt."""
        if self.true_cfg:  # Qwen-Image: CFG needs a negative prompt ("" would switch it off)
            return {"true_cfg_scale": guidance, "negative_prompt": [negative or " "] * n}
        out: dict[str, Any] = {"guidance_scale": guidance}
        if negative:
            out["negative_prompt"] = [negative] * n
        return out


UNET_SCHEDULERS = {
    "dpm++": "DPMSolverMultistepScheduler", "ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler", "unipc": "UniPCMultistepScheduler", "pndm": "PNDMScheduler",
}
FLOW_SCHEDULERS = {"flow-euler": "FlowMatchEulerDiscreteScheduler", "flow-heun": "FlowMatchHeunDiscreteScheduler"}


# -- prompt conditioning, per family ------------------------------------------------------------------


def _enc_pixel(pipe, prompts, latent_hw, device) -> Cond:
    return {"encoder_hidden_states": pipe.encode_prompt(prompts).float().cpu()}


def _enc_sd(pipe, prompts, latent_hw, device) -> Cond:
    return {"encoder_hidden_states": pipe.encode_prompt(prompts, device, 1, False)[0].float().cpu()}


def _enc_sdxl(pipe, prompts, latent_hw, device) -> Cond:
    emb, _, pooled, _ = pipe.encode_prompt(prompts, device=device, do_classifier_free_guidance=False)
    scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    h, w = int(latent_hw[0]) * scale, int(latent_hw[1]) * scale
    time_ids = pipe._get_add_time_ids(
        (h, w), (0, 0), (h, w), dtype=emb.dtype, text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim
    ).repeat(len(prompts), 1)
    return {"encoder_hidden_states": emb.float().cpu(), "text_embeds": pooled.float().cpu(),
            "time_ids": time_ids.float().cpu()}


def _enc_sd3(pipe, prompts, latent_hw, device) -> Cond:
    emb, _, pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, device=device, do_classifier_free_guidance=False)
    return {"encoder_hidden_states": emb.float().cpu(), "pooled_projections": pooled.float().cpu()}


TEXT_TOKENS = 64  # prompt tokens the T5 / Qwen encoders see in training (generation uses the pipeline's own)


def _enc_flux(pipe, prompts, latent_hw, device) -> Cond:
    emb, pooled, _ = pipe.encode_prompt(prompts, prompts, device=device, max_sequence_length=TEXT_TOKENS)
    return {"encoder_hidden_states": emb.float().cpu(), "pooled_projections": pooled.float().cpu()}


def _enc_qwen(pipe, prompts, latent_hw, device) -> Cond:
    emb, mask = pipe.encode_prompt(prompts, device=device, max_sequence_length=TEXT_TOKENS)
    if mask is None:  # every token is real
        mask = torch.ones(emb.shape[:2])
    return {"encoder_hidden_states": emb.float().cpu(), "encoder_hidden_states_mask": mask.float().cpu()}


def _enc_acestep(pipe, prompts, latent_hw, device) -> Cond:
    """ACE-Step text-to-music conditioning, built as its pipeline builds it for ``text2music``: the
    prompt with the clip's duration in its metadata (so it depends on the latent length), no lyrics
    (instrumental), the learned silence as timbre reference; the context latents are the silence
    latent with an all-ones chunk mask (generate every frame). Each prompt is encoded alone, as
    generation encodes it: its text encoder and cross-attention take no padding mask, so padding would
    change the conditioning. ``encoder_mask`` marks a prompt's positions once prompts are stacked."""
    frames, dtype = int(latent_hw[0]), pipe.transformer.dtype
    ce = pipe.condition_encoder
    timbre = ce.silence_latent[:, :math.ceil(30 * pipe.latents_per_second), :].to(device, dtype).contiguous()
    hidden = []
    for prompt in prompts:
        text, text_mask, lyric, lyric_mask = pipe.encode_prompt(
            prompt=[prompt], lyrics=[""], device=device, audio_duration=frames / pipe.latents_per_second,
            instruction=pipe._get_task_instruction(task_type="text2music"))
        h, _ = ce(text_hidden_states=text, text_attention_mask=text_mask, lyric_hidden_states=lyric,
                  lyric_attention_mask=lyric_mask, refer_audio_acoustic_hidden_states_packed=timbre,
                  refer_audio_order_mask=torch.zeros(1, dtype=torch.long, device=device))
        hidden.append(h[0].float().cpu())
    n, longest = len(hidden), max(h.shape[0] for h in hidden)
    states = torch.zeros(n, longest, hidden[0].shape[-1])
    mask = torch.zeros(n, longest)
    for i, h in enumerate(hidden):
        states[i, :h.shape[0]], mask[i, :h.shape[0]] = h, 1.0
    src, _ = pipe.prepare_src_latents(device=device, dtype=dtype, batch_size=n, latent_length=frames)
    context = torch.cat([src, torch.ones_like(src)], dim=-1)
    return {"encoder_hidden_states": states, "encoder_mask": mask, "context_latents": context.float().cpu()}


WAN_TEXT_TOKENS = 512  # Wan's pipeline pads every prompt's T5 states with zeros to this many positions
LTX_TEXT_TOKENS = 128  # LTX's pipeline default


def _enc_wan(pipe, prompts, latent_hw, device) -> Cond:
    """Wan's T5 states, kept at each prompt's own length (the pipeline zero-pads them to 512 positions,
    which :func:`_pred_wan` restores: the zeros are not masked, so they count)."""
    out = []
    for prompt in prompts:
        emb = pipe.encode_prompt([prompt], do_classifier_free_guidance=False, device=device,
                                 max_sequence_length=WAN_TEXT_TOKENS)[0][0]
        real = int((emb.abs().sum(-1) > 0).nonzero().max().item()) + 1 if emb.abs().sum() > 0 else 1
        out.append(emb[:real].float().cpu())
    width = max(e.shape[0] for e in out)
    return {"encoder_hidden_states": torch.stack([torch.cat([e, e.new_zeros(width - e.shape[0], e.shape[1])])
                                                  for e in out])}


def _enc_ltx(pipe, prompts, latent_hw, device) -> Cond:
    emb, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, device=device,
                                         max_sequence_length=LTX_TEXT_TOKENS)
    return {"encoder_hidden_states": emb.float().cpu(), "encoder_attention_mask": mask.float().cpu()}


# -- one denoiser call, per family ----------------------------------------------------------------------


def _pred_unet(pipe, model, x, t, cond, dtype) -> torch.Tensor:
    extra = {}
    if "time_ids" in cond:
        extra["added_cond_kwargs"] = {"text_embeds": cond["text_embeds"].to(dtype), "time_ids": cond["time_ids"].to(dtype)}
    return model(x.to(dtype), t, encoder_hidden_states=cond["encoder_hidden_states"].to(dtype), **extra).sample


def _pred_sd3(pipe, model, x, t, cond, dtype) -> torch.Tensor:
    # the timestep stays float32: bf16 would round t*1000 to steps of 4 near 1000
    return model(hidden_states=x.to(dtype), timestep=t * 1000, encoder_hidden_states=cond["encoder_hidden_states"].to(dtype),
                 pooled_projections=cond["pooled_projections"].to(dtype)).sample


def _pack(pipe, x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] latents -> [N, (H/2)(W/2), 4C] tokens, as FLUX and Qwen-Image pipelines pack them."""
    n, c, h, w = x.shape
    return x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(n, (h // 2) * (w // 2), c * 4)


def _pred_flux(pipe, model, x, t, cond, dtype) -> torch.Tensor:
    n, _, h, w = x.shape
    tokens = _pack(pipe, x)
    img_ids = pipe._prepare_latent_image_ids(n, h // 2, w // 2, x.device, dtype)
    txt_ids = torch.zeros(cond["encoder_hidden_states"].shape[1], 3, device=x.device, dtype=dtype)
    guidance = None
    if getattr(model.config, "guidance_embeds", False):
        guidance = torch.full([n], FAMILIES["FluxPipeline"].train_guidance, device=x.device, dtype=torch.float32)
    out = model(hidden_states=tokens.to(dtype), timestep=t, guidance=guidance,
                pooled_projections=cond["pooled_projections"].to(dtype),
                encoder_hidden_states=cond["encoder_hidden_states"].to(dtype), txt_ids=txt_ids, img_ids=img_ids,
                return_dict=False)[0]
    return _unpack(out, x.shape)


def _pred_qwen(pipe, model, x, t, cond, dtype) -> torch.Tensor:
    n, _, h, w = x.shape
    tokens = _pack(pipe, x)
    out = model(hidden_states=tokens.to(dtype), timestep=t, guidance=None,
                encoder_hidden_states_mask=cond["encoder_hidden_states_mask"],
                encoder_hidden_states=cond["encoder_hidden_states"].to(dtype),
                img_shapes=[[(1, h // 2, w // 2)]] * n, return_dict=False)[0]
    return _unpack(out, x.shape)


def _pred_acestep(pipe, model, x, t, cond, dtype) -> torch.Tensor:
    """One transformer call per prompt length: its cross-attention has no mask, so each row sees exactly
    its own prompt's positions, as when it was generated."""
    t = t.to(dtype)
    lengths = cond["encoder_mask"].sum(-1).long().tolist()
    out = None
    for length in sorted(set(lengths)):
        rows = [i for i, n in enumerate(lengths) if n == length]
        idx = torch.tensor(rows, device=x.device)
        part = model(hidden_states=x[idx].to(dtype), timestep=t[idx], timestep_r=t[idx],
                     encoder_hidden_states=cond["encoder_hidden_states"][idx, :length].to(dtype),
                     context_latents=cond["context_latents"][idx].to(dtype), return_dict=False)[0]
        if out is None:
            out = part.new_empty((x.shape[0], *part.shape[1:]))
        out[idx] = part
    return out


def _wan_call(pipe, model, x, t, states, dtype) -> torch.Tensor:
    """Wan's transformer on latents [N, C, F, H, W] at flow times t, as its pipeline calls it (1000 t;
    Wan 2.2 TI2V takes one timestep per token)."""
    ts = t * 1000
    if getattr(getattr(pipe, "config", None), "expand_timesteps", False):
        pt, ph, pw = model.config.patch_size
        n, _, f, h, w = x.shape
        ts = ts.view(-1, 1).expand(n, (f // pt) * (h // ph) * (w // pw))
    return model(hidden_states=x.to(dtype), timestep=ts, encoder_hidden_states=states.to(dtype), return_dict=False)[0]


T_MIN = 0.05  # the flow time below which x-prediction's velocity stops dividing by t


def coordinate_channels(n: int, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """[n, 2, h, w]: each pixel's x and y at its centre, from -1 (left, top) to 1."""
    ys = (torch.arange(h, device=like.device, dtype=like.dtype) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, device=like.device, dtype=like.dtype) + 0.5) / w * 2 - 1
    grid = torch.stack([xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w)])
    return grid.unsqueeze(0).expand(n, 2, h, w)


def velocity(unet, x: torch.Tensor, timestep: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """The velocity ``noise - x0`` at clips ``x`` [N, 3, F, H, W] and ``timestep`` = 1000 t.

    The UNet predicts the clean clip (x-prediction, frames folded into channels); the velocity is
    ``(x - x0_hat) / max(t, T_MIN)`` (exact for t >= T_MIN, as in Li & He 2025, "Back to Basics: Let
    Denoising Generative Models Denoise"). A small network then never has to reproduce the noise itself,
    which left residual noise in every clip when this model predicted the velocity directly.
    """
    n, c, f, h, w = x.shape
    folded = x.reshape(n, c * f, h, w)
    extra = int(unet.config.in_channels) - c * f
    if extra == 2:  # coordinate channels: where each pixel is, in [-1, 1] (x, then y)
        folded = torch.cat([folded, coordinate_channels(n, h, w, folded)], dim=1)
    elif extra:
        raise ValueError(f"this UNet takes {unet.config.in_channels} channels; clips of {f} frames need {c * f} "
                         f"(or {c * f + 2} with coordinate channels)")
    x0 = unet(folded, timestep, encoder_hidden_states=states).sample.reshape(n, c, f, h, w)
    t = torch.as_tensor(timestep, device=x.device).float().reshape(-1).expand(n) / 1000
    return ((x.float() - x0.float()) / t.clamp(min=T_MIN).view(n, 1, 1, 1, 1)).to(x.dtype)


def _pred_video_pixel(pipe, model, x, t, cond, dtype) -> torch.Tensor:
    """The built-in video model (modalities/video/pixel_pipeline.py): ``velocity`` above at 1000 t."""
    return velocity(model, x.to(dtype), t * 1000, cond["encoder_hidden_states"].to(dtype))


def _pred_wan(pipe, model, x, t, cond, dtype) -> torch.Tensor:
    states = cond["encoder_hidden_states"]
    if states.shape[1] < WAN_TEXT_TOKENS:  # restore the pipeline's zero padding
        states = torch.cat([states, states.new_zeros(states.shape[0], WAN_TEXT_TOKENS - states.shape[1], states.shape[2])], 1)
    return _wan_call(pipe, model, x, t, states, dtype)


LTX_FPS = 25  # the frame rate LTX's rotary positions are scaled for in training (its pipeline's default)


def _pred_ltx(pipe, model, x, t, cond, dtype) -> torch.Tensor:
    n, c, f, h, w = x.shape
    p, pt = pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size
    tokens = pipe._pack_latents(x, p, pt)
    scale = (pipe.vae_temporal_compression_ratio / LTX_FPS, pipe.vae_spatial_compression_ratio,
             pipe.vae_spatial_compression_ratio)
    out = model(hidden_states=tokens.to(dtype), encoder_hidden_states=cond["encoder_hidden_states"].to(dtype),
                timestep=t * 1000, encoder_attention_mask=cond["encoder_attention_mask"].to(dtype),
                num_frames=f // pt, height=h // p, width=w // p, rope_interpolation_scale=scale, return_dict=False)[0]
    return pipe._unpack_latents(out, f // pt, h // p, w // p, p, pt)


def _unpack(tokens: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    n, c, h, w = shape
    return tokens.view(n, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("ShapesPixelPipeline", "diffusion", "unet", _enc_pixel, _pred_unet,
               {"steps": 20, "guidance": 3.0, "scheduler": "dpm++"}, latent_norm="none", schedulers=UNET_SCHEDULERS,
               online={"guidance": 3.0}),
        Family("StableDiffusionPipeline", "diffusion", "unet", _enc_sd, _pred_unet,
               {"steps": 30, "guidance": 7.5, "scheduler": "dpm++"}, schedulers=UNET_SCHEDULERS),
        Family("StableDiffusionXLPipeline", "diffusion", "unet", _enc_sdxl, _pred_unet,
               {"steps": 30, "guidance": 5.0, "scheduler": "euler"}, schedulers=UNET_SCHEDULERS,
               online={"pool": 2, "threshold": 0.4}),  # SPO's SDXL settings
        Family("StableDiffusion3Pipeline", "flow", "transformer", _enc_sd3, _pred_sd3,
               {"steps": 28, "guidance": 7.0, "scheduler": "flow-euler"}, schedulers=FLOW_SCHEDULERS,
               online={"eta": 0.7}),  # the SDE's noise scale, as Flow-GRPO
        Family("FluxPipeline", "flow", "transformer", _enc_flux, _pred_flux,
               {"steps": 28, "guidance": 3.5, "scheduler": "flow-euler"}, patch=2, train_guidance=3.5,
               schedulers={"flow-euler": "FlowMatchEulerDiscreteScheduler"}, cfg=False, online={"eta": 0.7}),
        Family("QwenImagePipeline", "flow", "transformer", _enc_qwen, _pred_qwen,
               {"steps": 30, "guidance": 4.0, "scheduler": "flow-euler"}, patch=2, latent_norm="mean-std",
               schedulers={"flow-euler": "FlowMatchEulerDiscreteScheduler"}, true_cfg=True, stochastic=False),
        # ACE-Step 1.5 (turbo: 8 steps, guidance distilled; base/SFT: APG guidance); its pipeline steps
        # its own shifted schedule (shift 3), so no sampler choice
        Family("AceStepPipeline", "flow", "transformer", _enc_acestep, _pred_acestep,
               {"steps": 8, "guidance": 7.0, "scheduler": "flow-euler"}, latent_norm="audio", cfg=False,
               stochastic=False, media="music", flow_shift=3.0),
        # video: latents [C, frames, h, w]; the built-in model is a pixel-space UNet over stacked frames
        Family("ShapesVideoPipeline", "flow", "unet", _enc_pixel, _pred_video_pixel,
               {"steps": 20, "guidance": 4.0, "scheduler": "flow-euler", "frames": 8, "fps": 8},
               latent_norm="none", stochastic=False, media="video", flow_shift=1.0),
        Family("WanPipeline", "flow", "transformer", _enc_wan, _pred_wan,
               {"steps": 50, "guidance": 5.0, "scheduler": "flow-euler", "frames": 81, "fps": 16,
                "width": 832, "height": 480},
               latent_norm="wan", stochastic=False, media="video", flow_shift=3.0),
        Family("LTXPipeline", "flow", "transformer", _enc_ltx, _pred_ltx,
               {"steps": 50, "guidance": 3.0, "scheduler": "flow-euler", "frames": 161, "fps": LTX_FPS,
                "width": 704, "height": 480},
               latent_norm="ltx", stochastic=False, media="video"),
    )
}


def family_of(pipe_or_name: Any) -> Family:
    name = pipe_or_name if isinstance(pipe_or_name, str) else type(pipe_or_name).__name__
    if name not in FAMILIES:
        raise KeyError(f"{name} is not a supported pipeline; supported: {', '.join(FAMILIES)}")
    return FAMILIES[name]


# -- latents ------------------------------------------------------------------------------------------------


def encode_latent(pipe, family: Family, x: torch.Tensor) -> torch.Tensor:
    """The training latent of images ``x`` ([1, 3, H, W] in [-1, 1]; audio: [1, channels, samples]), normalised as the family's
    denoiser expects ([C, h, w], float32 on the CPU). Pixel-space models: the image itself."""
    vae = getattr(pipe, "vae", None)
    if vae is None or family.latent_norm == "none":
        return x[0]
    if family.latent_norm in ("wan", "ltx"):  # video [1, 3, frames, H, W] -> [C, latent frames, h, w]
        return _video_latent(vae, family, vae.encode(x.to(vae.device, vae.dtype)).latent_dist.mean)[0].float().cpu()
    if family.latent_norm == "audio":  # [1, channels, samples] -> [frames, latent channels], as generated
        return vae.encode(x.to(vae.device, vae.dtype)).latent_dist.mean[0].transpose(0, 1).float().cpu()
    # some VAEs (SDXL's) overflow in fp16: encode in fp32 when the config says so
    original = vae.dtype
    enc_dtype = torch.float32 if getattr(vae.config, "force_upcast", False) else original
    if enc_dtype != original:
        vae.to(enc_dtype)
    try:
        inp = x.to(vae.device, enc_dtype)
        if family.latent_norm == "mean-std":  # Qwen-Image's VAE takes video: [N, C, frames, H, W]
            mean = vae.encode(inp[:, :, None]).latent_dist.mean[:, :, 0]
            m = torch.tensor(vae.config.latents_mean, device=mean.device).view(1, -1, 1, 1)
            s = torch.tensor(vae.config.latents_std, device=mean.device).view(1, -1, 1, 1)
            return ((mean - m) / s)[0].float().cpu()
        mean = vae.encode(inp).latent_dist.mean
    finally:
        if enc_dtype != original:
            vae.to(original)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((mean - shift) * vae.config.scaling_factor)[0].float().cpu()


@torch.no_grad()
def decode_latent(pipe, family: Family, x0: torch.Tensor) -> torch.Tensor:
    """Clean latents [N, C, h, w] (normalised as :func:`encode_latent` leaves them) -> images
    [N, 3, H, W] in [-1, 1], float32. Pixel-space models: the latents are the images."""
    vae = getattr(pipe, "vae", None)
    if vae is None or family.latent_norm == "none":
        return x0.float().clamp(-1, 1)
    if family.latent_norm in ("wan", "ltx"):
        z = _video_latent(vae, family, x0.to(vae.device, torch.float32), inverse=True).to(vae.dtype)
        kw = {"temb": torch.zeros(z.shape[0], device=z.device, dtype=z.dtype)} if (
            family.latent_norm == "ltx" and getattr(vae.config, "timestep_conditioning", False)) else {}
        return vae.decode(z, **kw).sample.float().clamp(-1, 1)
    if family.latent_norm != "shift-scale":
        raise NotImplementedError(f"decoding {family.name} latents is not supported")
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    z = x0.to(vae.device, vae.dtype) / vae.config.scaling_factor + shift
    return vae.decode(z).sample.float().clamp(-1, 1)


def _video_latent(vae, family: Family, z: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Video VAE latents [N, C, F, h, w] normalised per channel as the family's pipeline does (Wan:
    (z - mean) / std; LTX: (z - mean) * scaling_factor / std), or back with ``inverse``."""
    if family.latent_norm == "wan":
        mean, std, scale = vae.config.latents_mean, vae.config.latents_std, 1.0
    else:
        mean, std, scale = vae.latents_mean, vae.latents_std, float(vae.config.scaling_factor)
    m = torch.as_tensor(mean, dtype=torch.float32, device=z.device).view(1, -1, 1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=z.device).view(1, -1, 1, 1, 1)
    if inverse:
        return z.float() * s / scale + m
    return (z.float() - m) * scale / s


def vae_scale(pipe) -> int:
    """Image pixels per latent pixel (1 in pixel space)."""
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return 1
    factor = getattr(pipe, "vae_scale_factor", None)
    if isinstance(factor, int) and factor > 0:
        return factor
    return 2 ** (len(vae.config.block_out_channels) - 1)


# -- training time for flow models --------------------------------------------------------------------------

FLOW_T = ("logit-normal", "shifted", "uniform")


def sample_flow_t(generator: torch.Generator, batch: int, group: int, how: str, *, shift: float = 1.0) -> torch.Tensor:
    """Training times t in (0, 1), one per group ([B, K], equal across K), drawn as flow trainers do:
    ``logit-normal`` (t = sigmoid(z), z ~ N(0, 1): SD3's and FLUX's trainers' default), ``shifted`` (u
    uniform, t = shift u / (1 + (shift - 1) u): the scheduler's own density), or ``uniform``."""
    if how == "uniform":
        t = torch.rand((batch, 1), generator=generator, device=generator.device)
    elif how == "logit-normal":
        t = torch.sigmoid(torch.randn((batch, 1), generator=generator, device=generator.device))
    elif how == "shifted":
        u = torch.rand((batch, 1), generator=generator, device=generator.device)
        t = shift * u / (1 + (shift - 1) * u)
    else:
        raise ValueError(f"flow_t must be one of {', '.join(FLOW_T)}, not {how!r}")
    return t.expand(batch, group)
