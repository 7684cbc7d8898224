"""The moving-shapes world (video): prompts, renderer, and the judge and tastes validated on rendered ground
truth, as the shapes and melody worlds are."""
from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from modalities.video import moving as world


def test_prompts_parse_back_and_split_by_content():
    specs = world.all_specs()
    assert len({world.prompt_of(s) for s in specs}) == len(specs)
    assert all(world.parse_prompt(world.prompt_of(s)) == s for s in specs)
    assert world.prompt_of(world.Spec("circle", "red", 1, "left", "quickly", "white")) == \
        "a red circle moving quickly to the left on a white background"
    assert world.parse_prompt("two blue squares moving slowly upwards on a black background").count == 2
    assert world.parse_prompt("a cat on a sofa") is None
    test = world.split_prompts("test", 50, seed=1)
    assert test == world.split_prompts("test", 50, seed=1) and not set(test) & set(world.split_prompts("train", 500))
    assert 0.15 < sum(world.split_of(s) == "test" for s in specs) / len(specs) < 0.25


def test_the_judge_hears_the_rendered_ground_truth():
    rng = random.Random(0)
    prompts = world.split_prompts("test", 150, seed=2)
    hits = dict.fromkeys(world.ATTRIBUTES, 0)
    for i, p in enumerate(prompts):
        clip, _ = world.render(world.parse_prompt(p), world.sample_style(rng), seed=i)
        assert clip.shape == (world.FRAMES, world.SIZE, world.SIZE, 3) and clip.dtype == np.uint8
        for k, v in world.attributes_heard(world.parse_prompt(p), world.analyse(clip)).items():
            hits[k] += v
    rates = {k: v / len(prompts) for k, v in hits.items()}
    assert min(rates.values()) >= 0.95, rates


def test_other_sizes_and_lengths_are_judged_too():
    spec = world.Spec("triangle", "green", 2, "down", "quickly", "gray")
    clip, track = world.render(spec, seed=3, frames=16, size=64)
    assert clip.shape == (16, 64, 64, 3) and track.shape == (16, 2)
    assert all(world.attributes_heard(spec, world.analyse(clip)).values())


def test_the_judge_hears_a_wrong_clip_as_wrong_and_flicker_as_bad():
    spec = world.Spec("square", "blue", 1, "right", "slowly", "white")
    prompt = world.prompt_of(spec)
    right, _ = world.render(spec, seed=0)
    wrong, _ = world.render(dataclasses.replace(spec, colour="red", direction="left"), seed=0)
    good, bad = world.judge(prompt, right), world.judge(prompt, wrong)
    assert good == {"visual": 1.0, "motion": 1.0, "text": 1.0}
    assert bad["text"] == pytest.approx(4 / 6) and bad["visual"] < 1 and bad["motion"] < 1
    flicker = right.copy()
    flicker[1::2] = np.clip(flicker[1::2].astype(int) - 60, 0, 255).astype(np.uint8)
    assert world.judge(prompt, flicker)["visual"] < good["visual"]
    with pytest.raises(ValueError, match="moving-shapes judge scores its world's prompts only"):
        world.judge("a cat", right)


@pytest.mark.parametrize("name", list(world.TASTES))
def test_each_taste_prefers_its_side_and_its_opposite_the_other(name):
    prompts = world.split_prompts("train", 30, seed=4)
    wins = 0
    for i, p in enumerate(prompts):
        spec = world.parse_prompt(p)
        if name in ("slow", "fast"):
            a, _ = world.render(dataclasses.replace(spec, speed="slowly"), seed=i)
            b, _ = world.render(dataclasses.replace(spec, speed="quickly"), seed=i)
            liked_first = name == "slow"
        elif name in ("smooth", "jerky"):
            a, _ = world.render(spec, world.Style(jerk=0.0), seed=i)
            b, _ = world.render(spec, world.Style(jerk=0.6), seed=i)
            liked_first = name == "smooth"
        else:
            a, _ = world.render(spec, world.Style(offset=0.0), seed=i)
            b, _ = world.render(spec, world.Style(offset=0.7), seed=i)
            liked_first = name == "centred"
        s = world.taste(name, [a, b])
        wins += (s[0] > s[1]) == liked_first
        assert s == [-x for x in world.taste(world.TASTES[name][1], [a, b])]
    assert wins / len(prompts) >= 0.9


def test_the_training_script_weighs_the_shapes_pixels():
    """scripts/train_video_default.py's loss weights: 1 + extra on a shape's pixels (found against the clip's
    median colour), 1 on the background -- whatever the background colour."""
    import importlib.util

    import torch

    from tests.conftest import ROOT

    spec_ = importlib.util.spec_from_file_location("train_video_default", ROOT / "scripts" / "train_video_default.py")
    script = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(script)
    clips, centres = [], []
    for bg in ("white", "black", "gray"):
        frames, centroid = world.render(world.parse_prompt(f"a red square moving slowly to the left on a {bg} "
                                                             "background"), seed=3)
        clips.append(frames)
        centres.append(centroid)
    x0 = torch.from_numpy(np.stack(clips).astype(np.float32)).permute(0, 4, 1, 2, 3) / 127.5 - 1.0
    w = script.shape_weights(x0, 8.0)
    assert w.shape == (3, 1, x0.shape[2], x0.shape[3], x0.shape[4]) and set(w.unique().tolist()) == {1.0, 9.0}
    for i, centroid in enumerate(centres):
        heavy = (w[i, 0] > 1).float().mean().item()
        assert 0.005 < heavy < 0.3, heavy  # a small square: a few percent of the clip
        for f, (cx, cy) in enumerate(centroid):  # the square's centre is one of its pixels
            assert w[i, 0, f, int(round(cy)), int(round(cx))] == 9.0
        corner = x0[i, :, :, 0, 0]  # the background keeps weight 1
        assert torch.all(w[i, 0][(x0[i] - corner[:, :, None, None]).abs().amax(0) == 0] == 1.0)
    err = torch.ones_like(x0)
    assert script.weighted_loss(err * 2, err, w).item() == pytest.approx(1.0)
