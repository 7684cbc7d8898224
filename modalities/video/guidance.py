"""Flow-NRG (Liu et al. 2025, "Improving Video Generation with Human Feedback"): reward guidance at
inference. At each denoising step, after classifier-free guidance, the velocity is moved against the
gradient of a weighted reward of the noisy latent: ``v <- v - w * grad_x R(x_t, t)`` with ``R = sum_d
w_d r_d`` over the reward model's dimensions (visual, motion, text, overall) at the user's weights.

A pipeline's step callback sees the latent after the step; the step was ``x' = x + (s' - s) v`` (flow
time ``s`` falls to ``s'``), so guiding the velocity is adding ``(s - s') * grad R(x, s)`` to ``x'`` with
the gradient taken at the latent the step started from -- exact for Euler steps (the built-in model, LTX,
Wan with a flow-Euler scheduler); with a multistep solver (Wan's UniPC) the guided velocity does not enter
the solver's history, so there it is the same move applied after the step.

``guide`` is anything with ``gradient(adapter, prompts, latents, t) -> tensor`` (the weighted reward's
gradient in the latent layout ``[N, C, F, h, w]``, at flow times ``t``) and ``describe() -> dict``, and
optionally ``acts_at(noise_level) -> bool`` (which steps it guides; default every one);
:class:`alignment.rewards.guidance.RewardGuide` is the one the app builds from a noise-aware reward model.
"""
from __future__ import annotations

from typing import Any

import torch


class NRGCallback:
    """``callback_on_step_end`` for a video pipeline: keeps the latent after every step (the last one is the
    sample) and, with a ``guide``, applies Flow-NRG (module docstring). Stops with a message when the guided
    latents stop being finite."""

    def __init__(self, adapter: Any, prompt: str, guide: Any, params: dict[str, Any], start: torch.Tensor,
                 keep: list[torch.Tensor]):
        self.adapter, self.prompt, self.guide, self.params = adapter, prompt, guide, params
        self.previous = start
        self.keep = keep
        self.applied = 0

    def __call__(self, pipe, i: int, t, kw: dict[str, Any]) -> dict[str, Any]:
        x = kw["latents"]
        s, s_next = (float(v) for v in pipe.scheduler.sigmas[i:i + 2]) if self.guide is not None else (None, None)
        if s is not None and getattr(self.guide, "acts_at", lambda _s: True)(s):
            grad = self._gradient(self.previous, s)
            x = x + (s - s_next) * grad.to(x.dtype)
            if not torch.isfinite(x).all():
                raise ValueError(f"reward guidance made the latents non-finite at step {i + 1}: lower its weights "
                                 f"({self.guide.describe()['weights']})")
            self.applied += 1
        self.previous = x
        self.keep[:] = [x]
        return {"latents": x}

    def _gradient(self, latents: torch.Tensor, s: float) -> torch.Tensor:
        adapter = self.adapter
        layout = adapter.to_latent_layout(latents.detach().float(), self.params)
        t = torch.full((layout.shape[0],), s, device=layout.device)
        grad = self.guide.gradient(adapter, [self.prompt] * layout.shape[0], layout, t)
        if not torch.isfinite(grad).all():
            raise ValueError("the reward model's gradient is not finite here; lower the guidance weights")
        return adapter.from_latent_layout(grad, latents)
