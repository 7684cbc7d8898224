"""The shapes world: prompts, renderer, judge and tastes, validated on ground truth."""
from __future__ import annotations

import random

import pytest

from modalities.image.shapes import (
    BACKGROUNDS,
    SHAPE_COLOURS,
    SHAPES,
    TASTE_MARGINS,
    TASTES,
    Judge,
    Spec,
    evaluate,
    parse_prompt,
    prompt_of,
    render,
    render_with_truth,
    sample_spec,
    split_prompts,
    true_taste_value,
)


def test_vocabulary_sizes():
    assert len(SHAPE_COLOURS) >= 8 and len(SHAPES) >= 3 and len(BACKGROUNDS) >= 3


def test_prompts_round_trip():
    rng = random.Random(0)
    for _ in range(300):
        spec = sample_spec(rng)
        assert parse_prompt(prompt_of(spec)) == spec
    assert prompt_of(Spec(2, "small", "red", "circle", "blue")) == "two small red circles on a blue background"
    assert parse_prompt("a cat in a hat") is None
    assert parse_prompt("a small red circle on a red background") is None  # shape colour = background


def test_split_is_fixed_and_disjoint():
    train, held = split_prompts()
    assert not set(train) & set(held)
    assert 0.07 < len(held) / (len(train) + len(held)) < 0.13
    assert split_prompts() == (train, held)


def test_render_is_deterministic_per_seed():
    spec = Spec(3, "large", "blue", "triangle", "white")
    assert render(spec, seed=5).tobytes() == render(spec, seed=5).tobytes()
    assert render(spec, seed=5).tobytes() != render(spec, seed=6).tobytes()
    assert render(spec, seed=5).size == (32, 32)


def test_judge_is_near_perfect_on_ground_truth():
    rng = random.Random(42)
    pairs = []
    for i in range(300):
        spec = sample_spec(rng)
        pairs.append((render(spec, seed=i), prompt_of(spec)))
    scores = evaluate(Judge(), pairs)
    for attr in ("colour", "shape", "count", "size", "background", "position"):
        assert scores[attr] >= 0.97, (attr, scores)
    assert scores["overall"] >= 0.95


def test_judge_catches_wrong_images():
    """The judge is not a yes-man: renders of another spec fail the changed attribute."""
    judge = Judge()
    base = Spec(2, "small", "red", "circle", "blue")
    variants = {
        "colour": Spec(2, "small", "green", "circle", "blue"),
        "shape": Spec(2, "small", "red", "square", "blue"),
        "count": Spec(3, "small", "red", "circle", "blue"),
        "size": Spec(2, "large", "red", "circle", "blue"),
        "background": Spec(2, "small", "red", "circle", "white"),
    }
    for attr, other in variants.items():
        wrong = sum(not judge(render(other, seed=s), base).scores[attr] for s in range(20))
        assert wrong >= 18, attr
    blank = render(Spec(1, "small", "red", "circle", "blue"), seed=0).point(lambda _: 128)
    assert not judge(blank, base).overall


@pytest.mark.parametrize("taste", sorted(TASTES))
def test_each_taste_prefers_what_it_should(taste):
    rng = random.Random(7)
    agree = n = 0
    for i in range(300):
        spec = sample_spec(rng)
        a, ta = render_with_truth(spec, seed=2 * i)
        b, tb = render_with_truth(spec, seed=2 * i + 1)
        va, vb = true_taste_value(taste, spec, ta), true_taste_value(taste, spec, tb)
        if abs(va - vb) < TASTE_MARGINS[taste]:
            continue
        n += 1
        agree += TASTES[taste].prefers(a, b) == ("a" if va > vb else "b")
    assert n >= 30
    assert agree / n >= 0.95, (taste, agree, n)


def test_tastes_disagree_with_each_other_sometimes():
    """A taste is not prompt adherence in disguise: tastes rank the same pairs differently."""
    rng = random.Random(3)
    verdicts = {t: [] for t in TASTES}
    for i in range(100):
        spec = sample_spec(rng)
        a, b = render(spec, seed=2 * i), render(spec, seed=2 * i + 1)
        for t in TASTES:
            verdicts[t].append(TASTES[t].prefers(a, b))
    names = sorted(TASTES)
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            same = sum(p == q for p, q in zip(verdicts[x], verdicts[y])) / 100
            assert same < 0.9, (x, y, same)


def test_noisy_annotators_disagree_but_lean_the_right_way():
    spec = Spec(1, "small", "red", "circle", "white")
    from modalities.image.shapes import Style

    dull = render(spec, Style(saturation=0.55), seed=1)
    vivid = render(spec, Style(saturation=0.75), seed=1)
    rng = random.Random(0)
    votes = [TASTES["saturated"].prefers(vivid, dull, temperature=2.0, rng=rng) for _ in range(200)]
    share = votes.count("a") / 200
    assert 0.55 < share < 0.99
