"""Image adapter exports: the diffusers plumbing's formats (:mod:`modalities.diffusion.export`), checked by
generating the same image from the exported file as from the trained adapter."""
from __future__ import annotations

from pathlib import Path

import torch

from ..diffusion.export import FORMATS, WEIGHTS, export_adapter
from ..diffusion.export import verify_export as _verify

__all__ = ["FORMATS", "WEIGHTS", "export_adapter", "verify_export"]


def verify_export(base_model: str, reference_adapter: str | Path, exported: str | Path, fmt: str, *,
                  prompt: str = "a small red circle on a blue background", seed: int = 0, steps: int = 2,
                  atol: float = 1e-5) -> float:
    """The image ``exported`` makes (float, before PNG rounding) against the diffusers-loaded
    ``reference_adapter``'s, for one prompt and seed; raises if they differ by more than ``atol``."""
    from modalities.image.adapter import load_pipeline
    from modalities.protocol import ModelRef

    def load(model: str, adapter: str | None):
        return load_pipeline(ModelRef(model, adapter=adapter), device="cpu")[0]

    def image(pipe) -> torch.Tensor:
        out = pipe(prompt, num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(seed),
                   output_type="pt")
        return (out if isinstance(out, torch.Tensor) else out.images).float().cpu()

    return _verify(load, image, base_model, reference_adapter, exported, fmt, atol=atol)
