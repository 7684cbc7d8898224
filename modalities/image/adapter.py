"""The image modality: one adapter over diffusers text-to-image pipelines.

Families (see :mod:`modalities.protocol` for the score conventions):

- ``unet``: UNet with epsilon or v prediction -- Stable Diffusion 1.5 / 2.x,
  SDXL (two text encoders, added time/text conditioning), and the built-in
  pixel-space shapes model. Score: minus the per-sample MSE between the UNet's
  prediction and its target (noise, or v) at a timestep t drawn once per group.
- ``flow``: flow-matching transformers -- SD3 style (MMDiT +
  ``FlowMatchEulerDiscreteScheduler``). Score: minus the per-sample MSE of the
  predicted velocity ``noise - x0`` at ``x_t = (1 - t) x0 + t noise`` (t = 1 is
  pure noise), t drawn once per group.

Models load by hub id or local folder. The built-in model is the folder
``models/shapes-diffusion`` of this repository, also reachable by the alias
``shapes-diffusion``; it loads through the same code.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .. import loading
from ..loading import (ModelLoadError, adapter_mismatch, check_adapter_base, check_device, folder_revision,
                       hub_unavailable)
from ..protocol import GenerationRequest, Group, ModalityAdapter, ModelRef, Provenance, Sample, ScoreKind, TrainingBatch
from ..scoring import denoising_score, flow_interpolate, flow_velocity_target, group_noise, group_timesteps, group_uniform_t

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILTIN_MODELS = {"shapes-diffusion": REPO_ROOT / "models" / "shapes-diffusion"}
DEFAULT_MODEL = "shapes-diffusion"

UNET_SCHEDULERS = {
    "dpm++": "DPMSolverMultistepScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler",
    "pndm": "PNDMScheduler",
}
FLOW_SCHEDULERS = {"flow-euler": "FlowMatchEulerDiscreteScheduler", "flow-heun": "FlowMatchHeunDiscreteScheduler"}
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# Pipelines whose score this adapter knows how to compute, by family.
SUPPORTED_PIPELINES = {
    "ShapesPixelPipeline": "unet",
    "StableDiffusionPipeline": "unet",
    "StableDiffusionXLPipeline": "unet",
    "StableDiffusion3Pipeline": "flow",
}
MAX_SIDE = 4096
TEXT_CACHE_SIZE = 512  # prompts whose text conditioning the trainer keeps in memory


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------


def resolve_model(model: str) -> tuple[str, Path | None]:
    """(name to record, local folder or None for a hub id); the built-in alias included."""
    return loading.resolve_model(model, BUILTIN_MODELS)


def _check_pipeline_folder(folder: Path) -> dict[str, Any]:
    if not folder.exists():
        raise ModelLoadError(f"model folder {folder} does not exist")
    index = folder / "model_index.json"
    if not index.is_file():
        hint = ""
        if (folder / "config.json").is_file():
            hint = " It holds a single model (config.json), not a whole pipeline: point --model at the pipeline folder."
        raise ModelLoadError(
            f"{folder} is not a diffusers pipeline folder (no model_index.json).{hint} "
            "Use a folder saved with pipeline.save_pretrained(), or a hub id such as "
            "stable-diffusion-v1-5/stable-diffusion-v1-5."
        )
    config = json.loads(index.read_text())
    for name, value in config.items():
        if name.startswith("_") or not isinstance(value, list) or value[0] is None:
            continue
        if not (folder / name).is_dir():
            raise ModelLoadError(
                f"model folder {folder} is missing its {name!r} component (no {name}/ folder, but model_index.json "
                f"lists {value[1]}); copy the whole pipeline folder"
            )
    return config


def load_pipeline(ref: ModelRef, *, device: str | None = None, dtype: torch.dtype | None = None):
    """Load a text-to-image pipeline by hub id or local folder, with a sensible
    device (CUDA when present) and dtype (fp16/bf16 on GPU, fp32 on CPU)."""
    from diffusers import DiffusionPipeline

    device = check_device(device)
    name, folder = resolve_model(ref.id)
    if folder is not None:
        if name in BUILTIN_MODELS and not folder.exists():
            raise ModelLoadError(
                f"the built-in model is missing from {folder}; restore it with `git checkout -- models/` "
                "or retrain it with `python scripts/train_image_default.py`"
            )
        config = _check_pipeline_folder(folder)
        source: str = str(folder)
    else:
        try:
            config, commit = DiffusionPipeline.load_config(ref.id, revision=ref.revision, return_commit_hash=True)
        except Exception as e:  # huggingface_hub raises many types; all mean "cannot get it"
            raise hub_unavailable(ref.id, e, "pipeline folder") from None
        source = ref.id
        # record the exact commit, so the provenance says which weights made an image
        ref = ModelRef(ref.id, revision=commit or ref.revision, adapter=ref.adapter)
    class_name = config.get("_class_name", "")
    if class_name not in SUPPORTED_PIPELINES:
        raise ModelLoadError(
            f"{source!r} is a {class_name or 'pipeline of unknown class'}, which Palate cannot train yet; "
            f"supported: {', '.join(SUPPORTED_PIPELINES)}"
        )
    is_flow = SUPPORTED_PIPELINES[class_name] == "flow"
    if dtype is None:
        dtype = torch.float32 if device == "cpu" else (torch.bfloat16 if is_flow else torch.float16)
    # components listed as [null, null] (e.g. SD3 without T5) must be passed as None
    missing = {k: None for k, v in config.items() if not k.startswith("_") and isinstance(v, list) and v[0] is None}
    try:
        if class_name == "ShapesPixelPipeline":
            from .pixel_pipeline import ShapesPixelPipeline

            pipe = ShapesPixelPipeline.from_pretrained(source, dtype=dtype, use_safetensors=True, **missing)
        else:
            # safetensors only: never unpickle .bin weights from a folder or the hub
            pipe = DiffusionPipeline.from_pretrained(
                source, revision=ref.revision, dtype=dtype, use_safetensors=True, **missing
            )
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(f"cannot load pipeline {source!r} ({class_name}): {type(e).__name__}: {e}") from None
    if not (hasattr(pipe, "unet") or hasattr(pipe, "transformer")):
        raise ModelLoadError(f"{source!r} is a {class_name}, not a text-to-image pipeline with a UNet or transformer")
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    revision = ref.revision or (folder_revision(folder) if folder is not None else None)
    if ref.adapter:
        check_adapter_base(Path(ref.adapter).expanduser(), name, revision)
        _load_lora(pipe, ref.adapter, ref.id)
    pipe.to(device)
    return pipe, name, revision


def _load_lora(pipe, adapter: str, model: str = "this model") -> None:
    """Apply a LoRA adapter (diffusers/PEFT safetensors folder or file) to the pipeline."""
    path = Path(adapter).expanduser()
    if not path.exists():
        raise ModelLoadError(f"adapter {adapter!r} does not exist")
    if not hasattr(pipe, "load_lora_weights"):
        raise ModelLoadError(f"{type(pipe).__name__} cannot load LoRA adapters")
    import logging
    import warnings

    # diffusers logs a failed load's whole error (a line per mismatched weight) and peft warns about it
    # before the exception arrives; the exception becomes one line below instead
    quiet = logging.getLogger("diffusers.loaders.peft")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="While injecting the PEFT adapters, an inconsistency")
            pipe.load_lora_weights(str(path), adapter_name="palate")
    except Exception as e:
        raise adapter_mismatch(adapter, model, e) from None
    finally:
        quiet.setLevel(level)


# ---------------------------------------------------------------------------
# the adapter
# ---------------------------------------------------------------------------


class ImageAdapter(ModalityAdapter):
    """Text-to-image diffusion and flow pipelines behind the modality contract."""

    name = "image"
    score_kind = ScoreKind.DIFFUSION  # per instance: FLOW for transformer pipelines
    default_lora_targets = ATTENTION_TARGETS

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
        self.family = SUPPORTED_PIPELINES[cls_name]
        self.score_kind = ScoreKind.FLOW if self.family == "flow" else ScoreKind.DIFFUSION
        if self.family == "unet":
            from diffusers import DDPMScheduler

            # the training noise schedule of the model (whatever sampler it ships with)
            train_sched = DDPMScheduler.from_config(pipe.scheduler.config)
            self._alphas_cumprod = train_sched.alphas_cumprod.float()
            self.prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")
            if self.prediction_type not in ("epsilon", "v_prediction"):
                raise ModelLoadError(f"prediction type {self.prediction_type!r} is not supported (epsilon or v_prediction)")

    @classmethod
    def load(cls, ref: ModelRef, *, device: str | None = None, dtype: torch.dtype | None = None,
             cache_dir: Path | None = None) -> "ImageAdapter":
        """Load a pipeline (hub id or local folder); training latents are cached under
        ``cache_dir/latents`` (by model, revision and image hash)."""
        pipe, name, revision = load_pipeline(ref, device=device, dtype=dtype)
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
    def max_batch(self) -> int:
        """Candidates per pipeline call."""
        return 8 if self.device.type == "cpu" or self.is_pixel_space else 4

    @property
    def is_pixel_space(self) -> bool:
        return getattr(self.pipe, "vae", None) is None

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this."""
        if self.is_pixel_space:
            return 2 ** (len(self.pipe.unet.config.block_out_channels) - 1)
        vae_factor = 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)
        patch = getattr(getattr(self.pipe, "transformer", None), "config", {}).get("patch_size", 1) if self.family == "flow" else 1
        return vae_factor * patch

    @property
    def native_size(self) -> int:
        module = self.trainable_module()
        latent = module.config.sample_size
        return latent if self.is_pixel_space else latent * 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)

    def default_params(self) -> dict[str, Any]:
        cls = type(self.pipe).__name__
        steps, guidance, sched = {
            "ShapesPixelPipeline": (20, 3.0, "dpm++"),
            "StableDiffusionXLPipeline": (30, 5.0, "euler"),
            "StableDiffusion3Pipeline": (28, 7.0, "flow-euler"),
        }.get(cls, (30, 7.5, "dpm++") if self.family == "unet" else (28, 5.0, "flow-euler"))
        return {"steps": steps, "guidance": guidance, "width": self.native_size, "height": self.native_size,
                "scheduler": sched}

    def schedulers(self) -> dict[str, str]:
        return FLOW_SCHEDULERS if self.family == "flow" else UNET_SCHEDULERS

    # -- generation ----------------------------------------------------------
    def _params(self, request: GenerationRequest) -> dict[str, Any]:
        params = {**self.default_params(), **dict(request.params)}
        unknown = set(params) - {"steps", "guidance", "width", "height", "scheduler"}
        if unknown:
            raise ValueError(f"unknown image setting(s) {sorted(unknown)}; use steps, guidance, width, height, scheduler")
        steps = int(params["steps"])
        if not 1 <= steps <= 200:
            raise ValueError(f"steps must be between 1 and 200, got {steps}")
        guidance = float(params["guidance"])
        if not 0.0 <= guidance <= 30.0:
            raise ValueError(f"guidance must be between 0 and 30, got {guidance}")
        m = self.size_multiple
        for side in ("width", "height"):
            v = int(params[side])
            if v % m or not m <= v <= MAX_SIDE:
                raise ValueError(
                    f"{side} {v} is impossible for this model: use a multiple of {m} between {m} and {MAX_SIDE} "
                    f"(its native size is {self.native_size})"
                )
            params[side] = v
        if params["scheduler"] not in self.schedulers():
            raise ValueError(
                f"unknown scheduler {params['scheduler']!r} for a {self.family} model; "
                f"use one of {', '.join(self.schedulers())}"
            )
        params["steps"], params["guidance"] = steps, guidance
        return params

    def _set_scheduler(self, name: str) -> None:
        import diffusers

        cls = getattr(diffusers, self.schedulers()[name])
        if type(self.pipe.scheduler) is not cls:
            self.pipe.scheduler = cls.from_config(self.pipe.scheduler.config)

    @torch.no_grad()
    def generate(self, request: GenerationRequest) -> list[Sample]:
        params = self._params(request)
        seeds = request.resolved_seeds()
        self._set_scheduler(params["scheduler"])
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        kwargs: dict[str, Any] = dict(
            prompt=[request.prompt] * request.n,
            num_inference_steps=params["steps"],
            guidance_scale=params["guidance"],
            generator=generators,
            height=params["height"],
            width=params["width"],
        )
        if request.negative_prompt:
            kwargs["negative_prompt"] = [request.negative_prompt] * request.n
        images = []
        chunk = self.max_batch
        for start in range(0, request.n, chunk):  # bounded batches: SDXL x 64 would not fit a GPU
            part = {k: (v[start:start + chunk] if isinstance(v, list) else v) for k, v in kwargs.items()}
            images += self.pipe(**part).images
        out = []
        for seed, image in zip(seeds, images):
            record = {**params, "negative_prompt": request.negative_prompt or "", "dtype": str(self.dtype).replace("torch.", ""),
                      "device": self.device.type}
            prov = Provenance("image", self.model_name, seed, record, revision=self.revision, adapter=self.adapter_name)
            out.append(Sample(_png(image, request.prompt, prov), "image/png", prov))
        return out

    # -- training tensors ------------------------------------------------------
    def _to_tensor(self, data: bytes) -> torch.Tensor:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        arr = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)
        return arr / 127.5 - 1.0

    @torch.no_grad()
    def _latent(self, data: bytes) -> torch.Tensor:
        """Training latent of one image (cached on disk by model and image hash)."""
        vae = getattr(self.pipe, "vae", None)
        vae_dtype = "pixel" if vae is None else str(vae.dtype)
        ident = f"{self.model_name}@{self.revision}|{vae_dtype}".encode()
        key = hashlib.sha256(ident + hashlib.sha256(data).digest()).hexdigest()
        path = self.latent_cache / f"{key[:2]}/{key}.safetensors" if self.latent_cache else None
        if path is not None and path.exists():
            from safetensors.torch import load_file

            return load_file(path)["latent"]
        x = self._to_tensor(data)[None]
        if self.is_pixel_space:
            lat = x[0]
        else:
            # some VAEs (SDXL's) overflow in fp16: encode in fp32 when the config says so
            original = vae.dtype
            enc_dtype = torch.float32 if getattr(vae.config, "force_upcast", False) else original
            vae.to(enc_dtype)
            try:
                dist = vae.encode(x.to(vae.device, enc_dtype)).latent_dist
            finally:
                vae.to(original)
            shift = getattr(vae.config, "shift_factor", None) or 0.0
            lat = ((dist.mean - shift) * vae.config.scaling_factor)[0].float().cpu()
        if not torch.isfinite(lat).all():
            raise ValueError("the VAE produced non-finite latents for an image; try fp32 (--device cpu)")
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
            raise ValueError(f"images of one batch must share a size; got latent shapes {sorted(shapes)}")
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
        out = {k: torch.stack([cache[(p, hw)][k] for p in prompts]) for k in cache[(prompts[0], hw)]}
        while len(cache) > TEXT_CACHE_SIZE:
            cache.popitem(last=False)
        return out

    def _encode_conditioning(self, prompts: list[str], latent_hw) -> dict[str, torch.Tensor]:
        pipe, device = self.pipe, self.device
        cls = type(pipe).__name__
        if cls == "ShapesPixelPipeline":
            return {"encoder_hidden_states": pipe.encode_prompt(prompts).float().cpu()}
        if cls == "StableDiffusionXLPipeline":
            emb, _, pooled, _ = pipe.encode_prompt(prompts, device=device, do_classifier_free_guidance=False)
            scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
            h, w = int(latent_hw[0]) * scale, int(latent_hw[1]) * scale
            time_ids = pipe._get_add_time_ids(
                (h, w), (0, 0), (h, w), dtype=emb.dtype, text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim
            ).repeat(len(prompts), 1)
            return {"encoder_hidden_states": emb.float().cpu(), "text_embeds": pooled.float().cpu(),
                    "time_ids": time_ids.float().cpu()}
        if self.family == "flow":
            emb, _, pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, device=device, do_classifier_free_guidance=False)
            return {"encoder_hidden_states": emb.float().cpu(), "pooled_projections": pooled.float().cpu()}
        emb = pipe.encode_prompt(prompts, device, 1, False)[0]
        return {"encoder_hidden_states": emb.float().cpu()}

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
            extra = {}
            if "time_ids" in cond:
                extra["added_cond_kwargs"] = {"text_embeds": cond["text_embeds"].to(dtype), "time_ids": cond["time_ids"].to(dtype)}
            pred = model(
                noisy.flatten(0, 1).to(dtype), t.flatten(), encoder_hidden_states=cond["encoder_hidden_states"].to(dtype),
                **extra,
            ).sample
        else:
            # 2. Flow matching: x_t = (1 - t) x0 + t noise, t = 1 pure noise; target velocity noise - x0
            t = group_uniform_t(generator, B, K, device=generator.device).to(device)
            xt = flow_interpolate(x0, noise, t)
            target = flow_velocity_target(x0, noise)
            pred = model(
                # the timestep stays float32: bf16 would round t*1000 to steps of 4 near 1000
                hidden_states=xt.flatten(0, 1).to(dtype), timestep=t.flatten() * 1000,
                encoder_hidden_states=cond["encoder_hidden_states"].to(dtype),
                pooled_projections=cond["pooled_projections"].to(dtype),
            ).sample
        return denoising_score(pred.view(B, K, *pred.shape[1:]), target)

    def trainable_module(self) -> torch.nn.Module:
        return self.pipe.transformer if self.family == "flow" else self.pipe.unet

    def save_lora(self, module: torch.nn.Module, out: Path, state: dict[str, torch.Tensor],
                  config: dict[str, Any]) -> None:
        """diffusers' LoRA file (``pytorch_lora_weights.safetensors``, what
        ``pipeline.load_lora_weights`` loads), with the LoraConfig in its metadata: without it
        a loader would assume alpha = rank."""
        out.mkdir(parents=True, exist_ok=True)
        if self.family == "flow":
            type(self.pipe).save_lora_weights(out, transformer_lora_layers=state, transformer_lora_adapter_metadata=config,
                                              safe_serialization=True)
        else:
            type(self.pipe).save_lora_weights(out, unet_lora_layers=state, unet_lora_adapter_metadata=config,
                                              safe_serialization=True)

    def load_lora(self, module: torch.nn.Module, path: Path, adapter_name: str) -> None:
        self.pipe.load_lora_weights(str(path), adapter_name=adapter_name)

    @classmethod
    def export_adapter(cls, adapter_dir: Path, out: Path, fmt: str, *, base_model: str,
                       metadata: dict[str, Any]) -> Path:
        """diffusers, PEFT or kohya files; see :mod:`.export`."""
        from .export import export_adapter

        return export_adapter(adapter_dir, out, fmt, metadata=metadata)

    @classmethod
    def verify_export(cls, base_model: str, adapter_dir: Path, exported: Path, fmt: str) -> float:
        from .export import verify_export

        return verify_export(base_model, adapter_dir, exported, fmt)

    def lora_target_modules(self) -> list[str]:
        return list(ATTENTION_TARGETS)


def _png(image: Image.Image, prompt: str, prov: Provenance) -> bytes:
    """PNG bytes with the generation parameters in text chunks (A1111 style and JSON)."""
    p = prov.params
    info = PngInfo()
    a1111 = (
        f"{prompt}\nNegative prompt: {p.get('negative_prompt', '')}\n"
        f"Steps: {p['steps']}, Sampler: {p['scheduler']}, CFG scale: {p['guidance']}, Seed: {prov.seed}, "
        f"Size: {p['width']}x{p['height']}, Model: {prov.model}"
        + (f", Model hash: {prov.revision}" if prov.revision else "")
    )
    info.add_text("parameters", a1111)
    info.add_text("palate", json.dumps({"prompt": prompt, "model": prov.model, "revision": prov.revision,
                                        "adapter": prov.adapter, "seed": prov.seed, **dict(p)}, sort_keys=True))
    buf = io.BytesIO()
    image.save(buf, "PNG", pnginfo=info)
    return buf.getvalue()
