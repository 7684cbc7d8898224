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
    import torch

    script = _training_script()
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


def _training_script():
    import importlib.util

    from tests.conftest import ROOT

    spec_ = importlib.util.spec_from_file_location("train_video_default", ROOT / "scripts" / "train_video_default.py")
    script = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(script)
    return script


def test_the_training_script_adds_coordinates_spreads_words_and_draws_high_t(tmp_path):
    """--init of a folder without coordinate channels keeps its function (their weights start at 0);
    --spread-words pushes the named words apart and refuses unknown ones; --t-high draws that share of t
    from [--t-high-from, 1)."""
    import torch

    from modalities.video.default_model import DefaultModelConfig, build_pipeline
    from modalities.video.pixel_pipeline import velocity

    script = _training_script()
    small = dict(block_out_channels=(16, 16, 32), attention_heads=2, text_hidden=32, text_heads=2)
    old = build_pipeline(DefaultModelConfig(coordinates=False, **small), seed=1)
    old.save_pretrained(tmp_path / "old")
    new = build_pipeline(DefaultModelConfig(**small), seed=2)
    assert new.unet.config.in_channels == old.unet.config.in_channels + 2 and new.frames == old.frames == 8
    script.init_weights(new, tmp_path / "old")
    x = torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    states = old.encode_prompt(["a red circle moving quickly to the left on a white background"] * 2)
    with torch.no_grad():
        assert torch.allclose(velocity(old.unet, x, torch.tensor([900.0, 300.0]), states),
                              velocity(new.unet, x, torch.tensor([900.0, 300.0]), states), atol=1e-5)
    with pytest.raises(ValueError, match="takes 26 channels; clips of 7 frames need 21"):
        velocity(new.unet, x[:, :, :7], torch.tensor([900.0, 300.0]), states)

    table = new.text_encoder.get_input_embeddings().weight
    ids = new.tokenizer.convert_tokens_to_ids(["left", "right", "red"])
    before = table[ids].detach().clone()
    script.spread_words(new.text_encoder, new.tokenizer, ["left", "right"], 30.0, seed=0)
    moved = (table[ids].detach() - before).norm(dim=1)
    assert moved[:2].tolist() == pytest.approx([30.0, 30.0], rel=1e-4) and moved[2] == 0
    assert (table[ids[0]] - table[ids[1]]).norm() > 30
    with pytest.raises(SystemExit, match="not in the model's vocabulary: sideways"):
        script.spread_words(new.text_encoder, new.tokenizer, ["left", "sideways"], 30.0, seed=0)

    args = script.parse_args(["--batch-size", "4000", "--t-high", "0.25", "--t-high-from", "0.9"])
    t = script.sample_t(args, torch.Generator().manual_seed(0))
    assert t.shape == (4000,) and 0 < t.min() and t.max() < 1
    high = ((t >= 0.9).float().mean() - (torch.sigmoid(0.8 + 0.8 * torch.randn(100_000)) >= 0.9).float().mean() * 0.75)
    assert 0.22 < high < 0.28  # a quarter drawn high, plus the logit-normal's own tail
    args = script.parse_args(["--batch-size", "500", "--t-high", "1", "--t-high-from", "0.97"])
    assert script.sample_t(args, torch.Generator().manual_seed(1)).min() >= 0.97
