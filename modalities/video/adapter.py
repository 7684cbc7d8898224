"""The video modality: text-to-video diffusers pipelines behind the modality contract.

Loading, training latents, prompt conditioning, the flow-matching score and LoRA files are the shared
diffusers plumbing (:mod:`modalities.diffusion`; rows ``WanPipeline`` -- Wan 2.1 and Wan 2.2 TI2V --,
``LTXPipeline`` and the built-in ``ShapesVideoPipeline`` of
:data:`modalities.diffusion.families.FAMILIES`). What is video's own is here: the settings (frames, fps,
size, steps, guidance) and the frame counts each family takes, clips as H.264 MP4 carrying the latent
they were sampled as (:mod:`.mp4`), clips as training pixels, Flow-NRG reward guidance while sampling
(:mod:`.guidance`), and the exports (diffusers format, which the pipeline's own ``load_lora_weights``
loads, and PEFT).

The built-in model is the folder ``models/moving-shapes-video`` (alias ``moving-shapes-video``).
"""
from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..diffusion.adapter import DiffusersAdapter
from ..loading import ModelLoadError
from ..protocol import GenerationRequest, ModelRef, Provenance, Sample
from . import mp4

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILTIN_MODELS = {"moving-shapes-video": REPO_ROOT / "models" / "moving-shapes-video"}
FORMATS = ("diffusers", "peft")
MAX_STEPS = 200
MAX_GUIDANCE = 30.0
MAX_SIDE = 2048
MAX_FPS = 60
SETTINGS = ("steps", "guidance", "frames", "fps", "width", "height")
PROBE = "a red circle moving quickly to the left on a white background"


def _number(params: dict[str, Any], key: str) -> float:
    value = params[key]
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(out):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    return out


class VideoAdapter(DiffusersAdapter):
    """Text-to-video flow pipelines behind the modality contract (see the module docstring)."""

    name = "video"
    MEDIA = "video"
    BUILTIN_MODELS = BUILTIN_MODELS
    LOCAL_PIPELINES = {"ShapesVideoPipeline": "modalities.video.pixel_pipeline:ShapesVideoPipeline"}
    RESTORE_HINT = ("restore it with `git checkout -- models/` or retrain it with "
                    "`python scripts/train_video_default.py`")

    def __init__(self, pipe, **kw):
        if getattr(pipe, "transformer_2", None) is not None:
            raise ModelLoadError("this is a two-expert Wan 2.2 checkpoint (A14B: transformer and transformer_2); Palate "
                                 "trains one denoiser -- use Wan 2.1 or Wan 2.2 TI2V-5B")
        super().__init__(pipe, **kw)

    @classmethod
    def load(cls, ref: ModelRef, *, device: str | None = None, dtype: torch.dtype | None = None,
             cache_dir: Path | None = None, trust_remote_code: bool = False) -> "VideoAdapter":
        return super().load(ref, device=device, dtype=dtype, cache_dir=cache_dir)  # type: ignore[return-value]

    # -- what each family takes ---------------------------------------------------------------------------
    @property
    def temporal_step(self) -> int:
        """Frames per latent frame (Wan 4, LTX 8); 1 in pixel space."""
        if self.is_pixel_space:
            return 1
        return int(getattr(self.pipe, "vae_scale_factor_temporal", None)
                   or getattr(self.pipe, "vae_temporal_compression_ratio", 1))

    @property
    def time_patch(self) -> int:
        if self.fam.denoiser == "unet":  # the built-in model: a fixed number of frames
            return 1
        cfg = self.trainable_module().config
        p = getattr(cfg, "patch_size_t", None)
        if p is None:
            p = cfg.patch_size[0] if isinstance(cfg.patch_size, (list, tuple)) else 1
        return int(p or 1)

    @property
    def size_multiple(self) -> int:
        if self.fam.denoiser == "unet":
            return int(self.pipe.size_multiple)
        cfg = self.trainable_module().config
        patch = cfg.patch_size[1] if isinstance(cfg.patch_size, (list, tuple)) else int(cfg.patch_size)
        if self.is_pixel_space:
            return int(patch)
        spatial = int(getattr(self.pipe, "vae_scale_factor_spatial", None)
                      or getattr(self.pipe, "vae_spatial_compression_ratio", 8))
        if self.fam.name == "LTXPipeline":  # its pipeline takes multiples of 32 whatever the VAE
            return math.lcm(32, spatial * int(patch))
        return spatial * int(patch)

    @property
    def native_size(self) -> int:
        return int(getattr(self.pipe, "sample_size", 0) or 0) if self.is_pixel_space else 0

    def frames_rule(self) -> str:
        if self.fam.denoiser == "unet":
            return f"exactly {self.pipe.frames} (the model sees a clip's frames as channels)"
        s, p = self.temporal_step, self.time_patch
        if s == 1:
            return f"a multiple of {p}" if p > 1 else "any number"
        if p > 1:
            return f"{s}k+1 frames with k+1 a multiple of {p}"
        return f"{s}k+1 (e.g. {s + 1}, {2 * s + 1}, {4 * s + 1})"

    def frames_ok(self, frames: int) -> bool:
        if self.fam.denoiser == "unet":
            return frames == self.pipe.frames
        s, p = self.temporal_step, self.time_patch
        if frames < 1:
            return False
        if s == 1:
            return frames % p == 0
        return (frames - 1) % s == 0 and ((frames - 1) // s + 1) % p == 0

    def default_params(self) -> dict[str, Any]:
        d = self.fam.defaults
        size = self.native_size
        return {"steps": d["steps"], "guidance": d["guidance"], "frames": d["frames"], "fps": d["fps"],
                "width": size or d["width"], "height": size or d["height"]}

    def _params(self, request: GenerationRequest) -> dict[str, Any]:
        given = {("guidance" if k == "guidance_scale" else k): v for k, v in dict(request.params).items()
                 if v not in (None, "")}
        unknown = set(given) - set(SETTINGS)
        if unknown:
            raise ValueError(f"unknown video setting(s) {sorted(unknown)}; use {', '.join(SETTINGS)}")
        params = {**self.default_params(), **given}
        values = {k: _number(params, k) for k in SETTINGS}
        for k in ("steps", "frames", "width", "height"):
            if values[k] != int(values[k]):
                raise ValueError(f"{k} must be a whole number, got {params[k]!r}")
        steps, frames, width, height = (int(values[k]) for k in ("steps", "frames", "width", "height"))
        if not 1 <= steps <= MAX_STEPS:
            raise ValueError(f"steps must be between 1 and {MAX_STEPS}, got {steps}")
        if not 0.0 <= values["guidance"] <= MAX_GUIDANCE:
            raise ValueError(f"guidance must be between 0 and {MAX_GUIDANCE:g}, got {values['guidance']:g}")
        if not self.frames_ok(frames):
            raise ValueError(f"{frames} frames is impossible for this model ({self.fam.name}): use {self.frames_rule()}")
        m = self.size_multiple
        for side, v in (("width", width), ("height", height)):
            if v % m or not m <= v <= MAX_SIDE:
                raise ValueError(f"{side} {v} is impossible for this model: its VAE and patches take multiples of {m} "
                                 f"between {m} and {MAX_SIDE}")
        fps = values["fps"]
        if not 1 <= fps <= MAX_FPS:
            raise ValueError(f"fps must be between 1 and {MAX_FPS}, got {fps:g}")
        if self.fam.name == "LTXPipeline" and fps != self.fam.defaults["fps"]:
            raise ValueError(f"LTX conditions its positions on the frame rate and Palate trains it at "
                             f"{self.fam.defaults['fps']} fps: leave fps at {self.fam.defaults['fps']}")
        return {"steps": steps, "guidance": values["guidance"], "frames": frames, "fps": fps, "width": width,
                "height": height}

    # -- generation -----------------------------------------------------------------------------------------
    def _call_kwargs(self, params: dict[str, Any]) -> dict[str, Any]:
        kw: dict[str, Any] = {"height": params["height"], "width": params["width"], "num_frames": params["frames"],
                              "num_inference_steps": params["steps"], "guidance_scale": params["guidance"]}
        if self.fam.name == "LTXPipeline":
            kw["frame_rate"] = int(params["fps"])
        return kw

    def to_latent_layout(self, latents: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        """The pipeline's latents mid-sampling as [N, C, F, h, w] (LTX packs them into tokens)."""
        if latents.dim() == 5:
            return latents
        f = (params["frames"] - 1) // self.temporal_step + 1
        vs, p, pt = self.pipe.vae_spatial_compression_ratio, self.pipe.transformer_spatial_patch_size, self.time_patch
        return self.pipe._unpack_latents(latents, f // pt, params["height"] // vs // p, params["width"] // vs // p, p, pt)

    def from_latent_layout(self, latents: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """[N, C, F, h, w] latents in the layout of the pipeline's ``like``."""
        if like.dim() == 5:
            return latents
        return self.pipe._pack_latents(latents, self.pipe.transformer_spatial_patch_size, self.time_patch)

    def initial_latents(self, params: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
        """The starting noise the pipeline itself would draw from ``generator`` (in its layout)."""
        channels = 3 if self.fam.denoiser == "unet" else self.trainable_module().config.in_channels
        return self.pipe.prepare_latents(1, channels, params["height"],
                                         params["width"], params["frames"], torch.float32, self.device, generator)

    @torch.no_grad()
    def generate(self, request: GenerationRequest) -> list[Sample]:
        """``request.n`` clips (one generator per seed, so a seed gives the same clip whatever ``n``) as MP4
        carrying their sampled latents; with ``request.guide`` (Flow-NRG), each step's velocity is moved
        by the reward model's gradient (see :mod:`.guidance`)."""
        from .guidance import NRGCallback

        params = self._params(request)
        seeds = request.resolved_seeds()
        guide = getattr(request, "guide", None)
        samples = []
        for seed in seeds:  # one call per seed: batched calls differ in the last bits
            kw = self._call_kwargs(params)
            kw["latents"] = self.initial_latents(params, torch.Generator("cpu").manual_seed(seed))
            final: list[torch.Tensor] = []
            callback = NRGCallback(self, request.prompt, guide, params, kw["latents"], final)
            if request.negative_prompt:
                kw["negative_prompt"] = request.negative_prompt
            frames = self.pipe(prompt=request.prompt, generator=torch.Generator("cpu").manual_seed(seed),
                               output_type="np", callback_on_step_end=callback, **kw).frames
            clip = np.asarray(frames[0], dtype=np.float32)
            clip = (np.clip(clip, 0, 1) * 255).round().astype(np.uint8)
            latent = self.to_latent_layout(final[0], params)[0].float().cpu().numpy()
            record = {**params, "negative_prompt": request.negative_prompt or "",
                      "dtype": str(self.dtype).replace("torch.", ""), "device": self.device.type}
            if guide is not None:
                record["guide"] = guide.describe()
                record["guide_steps"] = callback.applied
            prov = Provenance("video", self.model_name, seed, record, revision=self.revision, adapter=self.adapter_name)
            box = {"prompt": request.prompt, "model": self.model_name, "family": self.fam.name, "seed": seed,
                   "params": record, "shape": list(latent.shape),
                   "latent": base64.b64encode(np.ascontiguousarray(latent, dtype="<f4").tobytes()).decode()}
            samples.append(Sample(mp4.encode(clip, params["fps"], box), "video/mp4", prov))
        return samples

    # -- reward features ---------------------------------------------------------------------------------------
    def clean_features(self, clean: torch.Tensor) -> torch.Tensor:
        """The per-channel mean and spread, then where the clip's content is and how it moves
        (:mod:`.features`): pooled features cannot tell a shape in the middle from one along an edge."""
        from .features import layout_features

        return torch.cat([super().clean_features(clean), layout_features(clean)], dim=-1)

    # -- training tensors -------------------------------------------------------------------------------------
    def stored_latent(self, data: bytes) -> torch.Tensor | None:
        """The latent a clip of this model was sampled as ([C, F, h, w]), or None."""
        box = mp4.read_box(data)
        if not box or box.get("family") != self.fam.name or box.get("model") != self.model_name:
            return None
        try:
            shape = [int(x) for x in box["shape"]]
            flat = np.frombuffer(base64.b64decode(box["latent"]), dtype="<f4")
            latent = torch.from_numpy(flat.copy()).reshape(shape)
        except (KeyError, TypeError, ValueError, RuntimeError):
            return None
        channels = 3 if self.fam.denoiser == "unet" else self.trainable_module().config.in_channels
        if latent.dim() != 4 or latent.shape[0] != channels or not torch.isfinite(latent).all():
            return None
        return latent

    def _latent(self, data: bytes) -> torch.Tensor:
        stored = self.stored_latent(data)
        return stored if stored is not None else super()._latent(data)

    def media_tensor(self, data: bytes) -> torch.Tensor:
        """A clip as the VAE (or the pixel model) takes it: [3, frames, H, W] in [-1, 1]; an imported clip
        must already have a frame count and size this model takes."""
        frames, _ = mp4.decode(data)
        f, h, w, _ = frames.shape
        if not self.frames_ok(f):
            raise ValueError(f"a clip of {f} frames cannot train this model ({self.fam.name}): it takes "
                             f"{self.frames_rule()} frames")
        m = self.size_multiple
        if h % m or w % m:
            raise ValueError(f"a clip of {w}x{h} cannot train this model: its sides must be multiples of {m}")
        x = torch.from_numpy(frames.astype(np.float32)).permute(3, 0, 1, 2)
        return x / 127.5 - 1.0

    def clip_pixels(self, data: bytes) -> np.ndarray:
        return mp4.decode(data)[0]

    # -- exports -----------------------------------------------------------------------------------------------
    @classmethod
    def export_adapter(cls, adapter_dir: Path, out: Path, fmt: str, *, base_model: str,
                       metadata: dict[str, Any]) -> Path:
        """diffusers format (the pipeline's ``load_lora_weights``) or a PEFT folder for the transformer."""
        from ..diffusion.export import export_adapter

        if fmt not in FORMATS:
            raise ValueError(f"video adapters export as {' or '.join(FORMATS)}, not {fmt!r}")
        return export_adapter(adapter_dir, out, fmt, metadata=metadata)

    @classmethod
    def verify_export(cls, base_model: str, adapter_dir: Path, exported: Path, fmt: str, *,
                      atol: float = 1e-4) -> float:
        """The clip (float frames, before MP4) the export makes against the trained adapter's: one prompt,
        one seed, two steps, the model's smallest frame count and size."""
        from ..diffusion.export import verify_export

        def load(model: str, adapter: str | None):
            return cls.load_pipeline(ModelRef(model, adapter=adapter), device="cpu")[0]

        def clip(pipe) -> torch.Tensor:
            probe = cls(pipe, model=base_model)
            kw = probe._call_kwargs(probe._params(GenerationRequest(PROBE, n=1, seeds=(0,), params={
                "steps": 2, "frames": _smallest_frames(probe), "width": probe.size_multiple,
                "height": probe.size_multiple})))
            return torch.as_tensor(np.asarray(pipe(prompt=PROBE, generator=torch.Generator("cpu").manual_seed(0),
                                                   output_type="np", **kw).frames, dtype=np.float32))

        return verify_export(load, clip, base_model, adapter_dir, exported, fmt, atol=atol)


def _smallest_frames(adapter: VideoAdapter) -> int:
    return next(f for f in range(1, 200) if adapter.frames_ok(f) and f > 1)
