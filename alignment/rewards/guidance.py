"""Reward guidance (Flow-NRG) from a noise-aware learned reward model: the gradient of a weighted sum of
its dimensions with respect to a noisy latent, read through the generator's own features (the
denoiser's pooled block and its predicted clean latent, at the latent's flow time). The modality's
sampler calls :meth:`RewardGuide.gradient` once per step (see ``modalities.video.guidance``)."""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

MAX_WEIGHT = 1000.0


@dataclass
class RewardGuide:
    reward: Any  # a LearnedReward over the loaded model's features, trained noise-aware
    weights: Mapping[str, float] = field(default_factory=dict)
    min_noise: float = 0.0  # guide only the steps at or above this noise level (0: every step, as the paper)

    def __post_init__(self) -> None:
        if getattr(self.reward, "encoder", None) is not None or not getattr(self.reward, "noise_aware", False):
            raise ValueError(f"reward model {getattr(self.reward, 'name', '?')!r} cannot guide sampling: guidance needs a "
                             "noise-aware reward model on this model's own features (train one with noise-aware on)")
        dims = tuple(self.reward.dimensions)
        clean = {}
        for d, w in self.weights.items():
            if d not in dims:
                raise ValueError(f"reward model {self.reward.name!r} has no {d!r} dimension; it has {', '.join(dims)}")
            w = float(w)
            if not math.isfinite(w) or abs(w) > MAX_WEIGHT:
                raise ValueError(f"the guidance weight of {d} must be a finite number within +-{MAX_WEIGHT:g}, got {w}")
            if w:
                clean[d] = w
        if not clean:
            raise ValueError("every guidance weight is 0: set a weight for at least one dimension")
        self.weights = clean
        level = float(self.min_noise)
        if not 0.0 <= level < 1.0:
            raise ValueError(f"the lowest noise level to guide at must be in [0, 1), got {self.min_noise}")
        self.min_noise = level

    def acts_at(self, noise_level: float) -> bool:
        """Whether a step starting at ``noise_level`` (0 clean .. 1 pure noise) is guided."""
        return noise_level >= self.min_noise

    def describe(self) -> dict[str, Any]:
        out = {"reward": self.reward.name, "version": getattr(self.reward, "version", None),
               "weights": dict(self.weights)}
        return {**out, "min_noise": self.min_noise} if self.min_noise else out

    def gradient(self, adapter: Any, prompts: Sequence[str], latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """d/dx of sum_d w_d r_d(x, t) (the base model's view: an applied LoRA is switched off)."""
        head = self.reward.head.to(latents.device)
        with torch.enable_grad(), _base_model(adapter):
            x = latents.detach().requires_grad_(True)
            feats = adapter.latent_features(list(prompts), x, t.to(x.device),
                                            **({"summary": True} if getattr(self.reward, "summary", False) else {}))
            level = adapter.noise_level_of(t).to(feats.device).view(-1, 1).float()
            feats = torch.cat([feats, level], dim=1)
            self.reward.check_width(feats)
            scores = head(feats)
            index = {d: i for i, d in enumerate(self.reward.dimensions)}
            total = sum(w * scores[:, index[d]].sum() for d, w in self.weights.items())
            (grad,) = torch.autograd.grad(total, x)
        return grad.detach()


@contextmanager
def _base_model(adapter: Any):
    pipe = getattr(adapter, "pipe", None)
    switch = pipe is not None and getattr(adapter, "adapter_name", None) and hasattr(pipe, "disable_lora")
    if switch:
        pipe.disable_lora()
    try:
        yield
    finally:
        if switch:
            pipe.enable_lora()


def guide_from_params(store: Any, modality: str, adapter: Any, params: dict[str, Any],
                      prefix: str = "guide_") -> RewardGuide | None:
    """Take the guidance settings out of ``params`` (``guide_reward``: a reward model's name; ``guide_min_noise``:
    the lowest noise level guided; ``guide_<dim>``: weights) and build the guide, or None when every weight is
    0 or empty."""
    name = params.pop(prefix + "reward", None)
    min_noise = params.pop(prefix + "min_noise", None)
    weights = {k[len(prefix):]: float(params.pop(k)) for k in list(params) if k.startswith(prefix)}
    if not any(weights.values()):
        return None
    if not name:
        raise ValueError("reward guidance needs a reward model: name a noise-aware reward model of this model "
                         "(--guide-reward NAME; the app: Guide reward under Settings; `reward train NAME --noise-aware` "
                         "makes one)")
    from .service import load

    return RewardGuide(load(store, name, modality, adapter), weights, float(min_noise or 0.0))
