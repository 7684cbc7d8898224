"""Stochastic denoising steps with log-probabilities, for both score families (SPO, RL on samplers).

A step maps the current latent ``x_t`` to a Gaussian over the next one, ``N(mean, std^2)``; sampling it
gives the next latent, and its log-probability is what step-aware methods train. Two families:

- **DDIM with eta** (epsilon or v prediction; Song et al. 2021, eq. 12): with ``a_t``, ``a_prev`` the
  cumulative alphas of this step and the next, ``x0`` and ``eps`` from the prediction,
  ``std = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))`` and
  ``mean = sqrt(a_prev) x0 + sqrt(1 - a_prev - std^2) eps``. eta = 1 is the DDPM posterior step (SPO's
  setting), eta = 0 the deterministic DDIM sampler.
- **Flow SDE** (flow matching, t = 1 pure noise, velocity ``v = noise - x0``): the reverse-time SDE with
  the same marginals as the flow ODE, discretised as Flow-GRPO does (Liu et al. 2025): with
  ``dt = sigma_next - sigma < 0`` and ``s = noise * sqrt(sigma / (1 - sigma))``,
  ``mean = x (1 + s^2 dt / (2 sigma)) + v (1 + s^2 (1 - sigma) / (2 sigma)) dt`` and
  ``std = s sqrt(-dt)``. noise = 0 is the Euler step of the ODE.

The log-probability of a sample is the Gaussian log-density averaged over the sample's elements (as
DDPO's and SPO's code average it), so ratios of two models' probabilities stay near 1 at any latent
size. Pure functions of tensors: the adapter supplies predictions and schedules.
"""
from __future__ import annotations

import math

import torch

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
SIGMA_CAP = 0.99  # the flow SDE's noise scale divides by 1 - sigma: at sigma = 1 (pure noise) the caller's
# cap is used instead (Flow-GRPO: the schedule's largest sigma below 1), else this one


def _col(x: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A per-row value shaped to broadcast over a batch of latents like ``like``."""
    x = torch.as_tensor(x, dtype=torch.float32, device=like.device)
    return x.reshape(-1, *([1] * (like.dim() - 1))) if x.dim() else x


def gaussian_logprob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Log-density of ``x`` under N(mean, std^2), averaged over every dimension after the first: [N]."""
    std = std.expand_as(mean) if std.dim() else std
    if bool((std <= 0).any()):
        raise ValueError("a deterministic step (std 0) has no log-probability: use eta > 0 (or noise > 0)")
    lp = -((x.float() - mean.float()) ** 2) / (2 * std.float() ** 2) - torch.log(std.float()) - LOG_SQRT_2PI
    return lp.reshape(lp.shape[0], -1).mean(dim=1)


def x0_eps(pred: torch.Tensor, x_t: torch.Tensor, alpha_t, prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) from a UNet's prediction at cumulative alpha ``alpha_t``."""
    a = _col(alpha_t, x_t)
    pred, x_t = pred.float(), x_t.float()
    if prediction_type == "epsilon":
        eps = pred
        x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
    elif prediction_type == "v_prediction":
        x0 = a.sqrt() * x_t - (1 - a).sqrt() * pred
        eps = a.sqrt() * pred + (1 - a).sqrt() * x_t
    else:
        raise ValueError(f"prediction type {prediction_type!r} is not supported (epsilon or v_prediction)")
    return x0, eps


def ddim_moments(pred: torch.Tensor, x_t: torch.Tensor, alpha_t, alpha_prev, eta: float,
                 prediction_type: str = "epsilon") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, std, predicted x0) of the DDIM step with ``eta`` (see the module docstring)."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    x0, eps = x0_eps(pred, x_t, alpha_t, prediction_type)
    a_t, a_prev = _col(alpha_t, x_t), _col(alpha_prev, x_t)
    var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = float(eta) * var.clamp_min(0).sqrt()
    mean = a_prev.sqrt() * x0 + (1 - a_prev - std ** 2).clamp_min(0).sqrt() * eps
    return mean, std, x0


def flow_sde_moments(v: torch.Tensor, x_t: torch.Tensor, sigma, sigma_next, noise: float = 0.7,
                     sigma_cap: float = SIGMA_CAP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, std, predicted x0) of the flow SDE step from ``sigma`` to ``sigma_next`` (see the module
    docstring); ``noise`` scales the injected noise (0: the Euler step of the ODE). Where sigma is 1 the
    noise scale's denominator uses ``sigma_cap`` (Flow-GRPO: the schedule's largest sigma below 1)."""
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    s, s_next = _col(sigma, x_t), _col(sigma_next, x_t)
    if bool((s_next >= s).any()):
        raise ValueError("flow steps go from more noise to less: sigma_next must be below sigma")
    v, x_t = v.float(), x_t.float()
    dt = s_next - s
    scale = float(noise) * (s / (1 - torch.where(s >= 1, torch.full_like(s, float(sigma_cap)), s))).sqrt()
    mean = x_t * (1 + scale ** 2 / (2 * s) * dt) + v * (1 + scale ** 2 * (1 - s) / (2 * s)) * dt
    std = scale * (-dt).sqrt()
    return mean, std, x_t - s * v


def sample(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator, n: int = 1) -> torch.Tensor:
    """``n`` draws from N(mean, std^2) per row: [n * N, ...] (all draws of row 0, then of row 1, ...),
    the noise drawn on the generator's device in float32."""
    shape = (mean.shape[0], n, *mean.shape[1:])
    z = torch.randn(shape, generator=generator, device=generator.device).to(mean.device)
    std = std if std.dim() == 0 else std.unsqueeze(1)
    return (mean.unsqueeze(1) + std * z).flatten(0, 1)
