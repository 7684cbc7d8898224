"""The score families' shared arithmetic, so every adapter computes them alike.

See :mod:`modalities.protocol` for the conventions (winner first, float32
[B, K] scores, t = 1 is pure noise for flow matching, noise and t drawn once
per group from the caller's generator).
"""
from __future__ import annotations

from typing import Sequence

import torch


def group_noise(
    generator: torch.Generator, batch: int, group: int, sample_shape: Sequence[int], *,
    device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Gaussian noise drawn once per group: shape [B, K, *sample_shape], equal
    across the K columns of a row."""
    noise = torch.randn((batch, 1, *sample_shape), generator=generator, device=device or generator.device, dtype=dtype)
    return noise.expand(batch, group, *sample_shape)


def group_uniform_t(
    generator: torch.Generator, batch: int, group: int, *, low: float = 0.0, high: float = 1.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A continuous time per group in [low, high), shape [B, K], equal across K."""
    t = torch.rand((batch, 1), generator=generator, device=device or generator.device)
    return (low + (high - low) * t).expand(batch, group)


def group_timesteps(
    generator: torch.Generator, batch: int, group: int, num_train_timesteps: int, *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A discrete diffusion timestep per group in [0, T), shape [B, K], equal across K."""
    t = torch.randint(0, num_train_timesteps, (batch, 1), generator=generator, device=device or generator.device)
    return t.expand(batch, group)


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every dimension after [B, K], in float32."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    if pred.dim() < 2:
        raise ValueError(f"expected tensors shaped [B, K, ...], got {tuple(pred.shape)}")
    err = (pred.float() - target.float()).pow(2)
    return err.reshape(err.shape[0], err.shape[1], -1).mean(dim=-1)


def denoising_score(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Diffusion / flow score: minus the per-sample MSE, shape [B, K], float32."""
    return -per_sample_mse(pred, target)


def flow_interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t noise (t = 1 is pure noise); t broadcasts from [B, K]."""
    t = t.to(x0.dtype).reshape(*t.shape, *([1] * (x0.dim() - t.dim())))
    return (1.0 - t) * x0 + t * noise


def flow_velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """d x_t / d t = noise - x0 under :func:`flow_interpolate`."""
    return noise - x0


def token_logprob_score(
    logits: torch.Tensor, labels: torch.Tensor, response_mask: torch.Tensor, *, mean: bool = False
) -> torch.Tensor:
    """Autoregressive score from next-token logits.

    ``logits``: [B, K, L, V] predicting token ``l + 1`` at position ``l``;
    ``labels``: [B, K, L] token ids; ``response_mask``: [B, K, L], 1 on the
    response tokens (prompt and padding masked). Returns the sum (or, with
    ``mean``, the per-token mean) of the response tokens' log-probabilities,
    [B, K], float32.
    """
    if logits.shape[:3] != labels.shape or labels.shape != response_mask.shape:
        raise ValueError(
            f"shapes disagree: logits {tuple(logits.shape)}, labels {tuple(labels.shape)}, "
            f"mask {tuple(response_mask.shape)}"
        )
    logp = torch.log_softmax(logits[:, :, :-1].float(), dim=-1)
    target = labels[:, :, 1:].long()
    mask = response_mask[:, :, 1:].float()
    tok = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1) * mask
    total = tok.sum(dim=-1)
    if mean:
        return total / mask.sum(dim=-1).clamp_min(1.0)
    return total
