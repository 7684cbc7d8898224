"""What a video reward model reads besides the denoiser's pooled block (modalities.video.features): where a
clip's content is and how it moves, checked on rendered clips of the moving-shapes world whose truth is
known; and that the features are smooth enough to guide by (finite gradients)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from modalities.video import moving
from modalities.video.features import NAMES, layout_features


def _clip(prompt: str, **style) -> torch.Tensor:
    frames, _ = moving.render(moving.parse_prompt(prompt), moving.Style(**style), seed=3)
    return torch.from_numpy(frames.astype(np.float32) / 127.5 - 1).permute(3, 0, 1, 2)  # [C, F, H, W]


def _feature(clips: list[torch.Tensor], name: str) -> list[float]:
    return layout_features(torch.stack(clips))[:, NAMES.index(name)].tolist()


def test_the_features_tell_centred_from_roaming_and_fast_from_slow():
    prompt = "a red circle moving slowly to the right on a white background"
    centred, edge = _clip(prompt, offset=0.0), _clip(prompt, offset=0.9)
    near, far = _feature([centred, edge], "distance_from_centre")
    assert 3 * near < far  # a slow path through the middle strays 0.15 of the half-frame from it on average
    slow, fast = _clip(prompt), _clip(prompt.replace("slowly", "quickly"))
    assert _feature([slow], "step")[0] < _feature([fast], "step")[0]
    right, left = _clip(prompt), _clip(prompt.replace("to the right", "to the left"))
    # a path centred on the middle averages to the middle whichever way it runs
    assert abs(_feature([right], "centroid_x")[0]) < 0.05 and abs(_feature([left], "centroid_x")[0]) < 0.05
    even, wobbly = _clip(prompt, jerk=0.0), _clip(prompt, jerk=0.6)
    assert _feature([even], "step_change")[0] < _feature([wobbly], "step_change")[0]
    assert layout_features(torch.stack([right, left])).shape == (2, len(NAMES))


def test_the_features_have_gradients_and_refuse_other_shapes():
    x = _clip("two blue squares moving quickly upwards on a black background")[None].requires_grad_(True)
    layout_features(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    still = layout_features(torch.zeros(1, 3, 1, 8, 8))  # one flat frame: finite, no motion
    assert torch.isfinite(still).all() and still[0, NAMES.index("step")] == 0
    with pytest.raises(ValueError, match=r"\[N, C, F, h, w\]"):
        layout_features(torch.zeros(3, 8, 8, 8))
