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
    scene = lambda p: (lambda s: (s.count, s.size, s.colour, s.shape, s.background))(parse_prompt(p))  # noqa: E731
    assert not {scene(p) for p in train} & {scene(p) for p in held}, "a held-out scene leaked into training"
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


def test_judge_holds_up_on_soft_images():
    """Model outputs are blurrier than renders: the judge must still read them."""
    from PIL import ImageFilter

    rng = random.Random(5)
    pairs = []
    for i in range(200):
        spec = sample_spec(rng)
        pairs.append((render(spec, seed=i).filter(ImageFilter.GaussianBlur(1.0)), prompt_of(spec)))
    scores = evaluate(Judge(), pairs)
    assert scores["colour"] >= 0.95 and scores["background"] >= 0.95 and scores["shape"] >= 0.85, scores


def test_specks_do_not_please_the_large_or_clean_tastes():
    from modalities.image.shapes import Style

    spec = Spec(1, "large", "red", "circle", "white")
    img = render(spec, Style(noise=0.0), seed=3)
    speckled = img.copy()
    bg = img.getpixel((0, 0))
    free = [(x, y) for y in range(2, 30, 3) for x in range(2, 30, 3)
            if all(img.getpixel((x + dx, y + dy)) == bg for dx in (-2, -1, 0, 1, 2) for dy in (-2, -1, 0, 1, 2))]
    assert len(free) >= 15
    for x, y in free[:15]:
        speckled.putpixel((x, y), (0, 0, 0))
    assert TASTES["large"].prefers(img, speckled) in ("a", "tie")
    assert TASTES["clean"].prefers(img, speckled) == "a"
