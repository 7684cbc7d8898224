"""Where a clip's content is and how it moves, read from a latent clip ``[N, C, F, h, w]`` (pixels for the
built-in model, the VAE's latent for Wan and LTX): ten numbers per clip that a reward model appends to the
denoiser's pooled features. Pooling over positions and channels loses exactly what a taste for composition
or motion is about (a shape in the middle or along an edge, even or wobbling motion), so these keep it: per
frame, the content is what differs from the frame's mean (its energy per position: the squared difference
summed over channels, which a faint background barely weighs), and its centroid and spread are taken in
coordinates from -1 to 1; over frames, the centroid's mean place, mean distance from the centre, step size
(mean and spread) and change of step, the change between frames, and the content's energy. Smooth in the
latent (so reward guidance can follow their gradient) and cheap."""
from __future__ import annotations

import torch

NAMES = ("centroid_x", "centroid_y", "spread_from_centre", "distance_from_centre", "step", "step_spread",
         "step_change", "frame_change", "energy", "energy_spread")


def layout_features(clip: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``[N, C, F, h, w]`` -> ``[N, len(NAMES)]`` (see the module docstring)."""
    if clip.dim() != 5:
        raise ValueError(f"layout features read clips as [N, C, F, h, w], got shape {tuple(clip.shape)}")
    x = clip.float()
    _, _, frames, h, w = x.shape
    deviation = x - x.mean(dim=(-2, -1), keepdim=True)
    energy = deviation.pow(2).sum(1) + eps  # [N, F, h, w]
    weight = energy / energy.sum(dim=(-2, -1), keepdim=True)
    ys = torch.linspace(-1, 1, h, device=x.device).view(1, 1, h, 1)
    xs = torch.linspace(-1, 1, w, device=x.device).view(1, 1, 1, w)
    cx, cy = (weight * xs).sum((-2, -1)), (weight * ys).sum((-2, -1))  # [N, F]
    spread = (weight * (xs ** 2 + ys ** 2)).sum((-2, -1))
    centre = torch.stack([cx, cy], -1)
    distance = (centre.pow(2).sum(-1) + eps).sqrt()
    per_frame = energy.mean((-2, -1))
    zero = torch.zeros_like(cx[:, 0])
    if frames > 1:
        step = centre[:, 1:] - centre[:, :-1]
        size = (step.pow(2).sum(-1) + eps).sqrt()
        change = (x[:, :, 1:] - x[:, :, :-1]).abs().mean((1, 3, 4)).mean(1)
        step_mean, step_spread, turn = size.mean(1), zero, zero
        if frames > 2:
            step_spread = size.std(1)
            turn = ((step[:, 1:] - step[:, :-1]).pow(2).sum(-1) + eps).sqrt().mean(1)
    else:
        step_mean = step_spread = turn = change = zero
    return torch.stack([cx.mean(1), cy.mean(1), spread.mean(1), distance.mean(1), step_mean, step_spread, turn, change,
                        per_frame.mean(1), per_frame.std(1) if frames > 1 else zero], 1)
