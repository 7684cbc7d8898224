"""The image modality: text-to-image diffusers pipelines behind the modality contract.

Loading, training latents, prompt conditioning, the score and LoRA files are the shared diffusers
plumbing (:mod:`modalities.diffusion`; one row of :data:`modalities.diffusion.families.FAMILIES` per
model family: SD 1.5/2.x, SDXL, SD3, FLUX.1, Qwen-Image and the built-in pixel model). What is the
image modality's own is here: the generation settings, PNG candidates with their parameters in text
chunks, images as training pixels, and the exports.

Models load by hub id or local folder. The built-in model is the folder
``models/shapes-diffusion`` of this repository, also reachable by the alias
``shapes-diffusion``; it loads through the same code.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..diffusion.adapter import ATTENTION_TARGETS, DiffusersAdapter
from ..loading import ModelLoadError
from ..protocol import GenerationRequest, ModelRef, Provenance, Sample

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILTIN_MODELS = {"shapes-diffusion": REPO_ROOT / "models" / "shapes-diffusion"}
DEFAULT_MODEL = "shapes-diffusion"
MAX_SIDE = 4096

__all__ = ["ATTENTION_TARGETS", "BUILTIN_MODELS", "DEFAULT_MODEL", "ImageAdapter", "ModelLoadError", "load_pipeline"]


def load_pipeline(ref: ModelRef, *, device: str | None = None, dtype: torch.dtype | None = None):
    """A text-to-image pipeline by hub id, local folder or the built-in alias: (pipe, name, revision)."""
    return ImageAdapter.load_pipeline(ref, device=device, dtype=dtype)


class ImageAdapter(DiffusersAdapter):
    """Text-to-image diffusion and flow pipelines behind the modality contract."""

    name = "image"
    BUILTIN_MODELS = BUILTIN_MODELS
    LOCAL_PIPELINES = {"ShapesPixelPipeline": "modalities.image.pixel_pipeline:ShapesPixelPipeline"}
    RESTORE_HINT = ("restore it with `git checkout -- models/` or retrain it with "
                    "`python scripts/train_image_default.py`")

    @property
    def max_batch(self) -> int:
        """Candidates per pipeline call."""
        return 8 if self.device.type == "cpu" or self.is_pixel_space else 4

    def default_params(self) -> dict[str, Any]:
        d = self.fam.defaults
        return {"steps": d["steps"], "guidance": d["guidance"], "width": self.native_size, "height": self.native_size,
                "scheduler": d["scheduler"]}

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

    @torch.no_grad()
    def generate(self, request: GenerationRequest) -> list[Sample]:
        params = self._params(request)
        seeds = request.resolved_seeds()
        self._set_scheduler(params["scheduler"])
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        kwargs: dict[str, Any] = dict(
            prompt=[request.prompt] * request.n,
            num_inference_steps=params["steps"],
            generator=generators,
            height=params["height"],
            width=params["width"],
            **self.fam.guidance_kwargs(params["guidance"], request.negative_prompt, request.n),
        )
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

    # -- training pixels -------------------------------------------------------
    def media_tensor(self, data: bytes) -> torch.Tensor:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        arr = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)
        return arr / 127.5 - 1.0

    def media_of_pixels(self, pixels: torch.Tensor) -> list[bytes]:
        """Images in [-1, 1] as PNG bytes (no parameters: they are a trajectory's intermediate views)."""
        arr = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        out = []
        for a in arr:
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, "PNG")
            out.append(buf.getvalue())
        return out

    # -- exports ---------------------------------------------------------------
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
