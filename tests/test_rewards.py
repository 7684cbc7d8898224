"""Reward models: Bradley-Terry with ties against closed forms, the programmatic rewards modalities
declare, ensembles, a learned reward model that picks up a simulated taste from votes on the built-in
models, the store's versioned records, and the CLI with its refusals."""
from __future__ import annotations

import io
import json
import math
import random

import numpy as np
import pytest
import torch

from alignment.rewards import Ensemble, bt_ties_nll, log_outcome_probabilities, preference_probability, win_share
from alignment.rewards import service
from alignment.rewards.base import programmatic
from alignment.rewards.learned import HeadConfig, LearnedReward, kfold_accuracy
from app.cli import main
from modalities.image import shapes
from storage import Store


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# -- Bradley-Terry with ties ---------------------------------------------------------------------

@pytest.mark.parametrize("theta", [1.5, 2.0, 5.0])
def test_outcome_probabilities_are_a_distribution_with_the_closed_form_tie(theta):
    d = torch.linspace(-6, 6, 41, dtype=torch.float64)
    la, lb, lt = log_outcome_probabilities(d, theta)
    assert torch.allclose(la.exp() + lb.exp() + lt.exp(), torch.ones_like(d), atol=1e-12)
    at0 = log_outcome_probabilities(torch.zeros(1, dtype=torch.float64), theta)[2].exp().item()
    assert at0 == pytest.approx((theta - 1) / (theta + 1), rel=1e-12)
    ra, rb = torch.tensor([0.7], dtype=torch.float64), torch.tensor([-0.2], dtype=torch.float64)
    ea, eb = math.exp(0.7), math.exp(-0.2)  # Rao-Kupper, written out
    assert log_outcome_probabilities(ra - rb, theta)[0].exp().item() == pytest.approx(ea / (ea + theta * eb))
    tie = (theta ** 2 - 1) * ea * eb / ((ea + theta * eb) * (eb + theta * ea))
    assert log_outcome_probabilities(ra - rb, theta)[2].exp().item() == pytest.approx(tie)


def test_a_tie_is_minimised_at_equal_rewards_and_swapping_flips_the_gradient():
    half = torch.tensor([0.5], dtype=torch.float64)
    values = [bt_ties_nll(torch.tensor([d], dtype=torch.float64), torch.zeros(1, dtype=torch.float64), half).item()
              for d in np.linspace(-3, 3, 61)]
    assert int(np.argmin(values)) == 30  # d = 0
    for d in (0.3, -1.2, 2.5):
        ra = torch.tensor([d], dtype=torch.float64, requires_grad=True)
        rb = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        bt_ties_nll(ra, rb, torch.ones(1, dtype=torch.float64)).backward()  # a won
        ga = ra.grad.clone()
        ra2 = torch.tensor([d], dtype=torch.float64, requires_grad=True)
        rb2 = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        bt_ties_nll(rb2, ra2, torch.ones(1, dtype=torch.float64)).backward()  # the same pair, b won
        assert ga.item() < 0  # a won: raising a's reward lowers the loss
        # winner and loser swapped: the gradient on the same reward difference changes sign
        assert torch.sign(ra2.grad).item() == -torch.sign(ga).item()
    # theta = 1 and decisive votes: plain Bradley-Terry
    d = torch.tensor([0.4, -0.9], dtype=torch.float64)
    p = torch.tensor([1.0, 0.0], dtype=torch.float64)
    plain = -(torch.nn.functional.logsigmoid(d[0]) + torch.nn.functional.logsigmoid(-d[1])) / 2
    assert bt_ties_nll(d, torch.zeros(2, dtype=torch.float64), p, theta=1.0).item() == pytest.approx(plain.item())
    with pytest.raises(ValueError, match="ties need"):
        bt_ties_nll(d, torch.zeros(2, dtype=torch.float64), torch.tensor([0.5, 1.0], dtype=torch.float64), theta=1.0)
    assert preference_probability(torch.zeros(1), torch.zeros(1)).item() == pytest.approx(0.5)


def test_win_share_is_rankdpos_phi():
    table = np.array([[3.0, 1.0, 2.0], [1.0, 1.0, 0.0]])
    # member 1: c0 beats both, c2 beats c1; member 2: c0 ties c1, both beat c2
    assert win_share(table) == pytest.approx([(2 + 1.5) / 4, (0 + 1.5) / 4, (1 + 0) / 4])


# -- programmatic rewards --------------------------------------------------------------------------

def test_the_shapes_world_offers_its_judge_and_tastes():
    rewards = programmatic("image")
    assert {"shapes-judge", "taste-saturated", "taste-large"} <= set(rewards)
    spec = shapes.parse_prompt("a small red circle on a blue background")
    vivid = _png(shapes.render(spec, shapes.Style(saturation=1.0), seed=1))
    dull = _png(shapes.render(spec, shapes.Style(saturation=0.3), seed=1))
    sat = rewards["taste-saturated"].score("a small red circle on a blue background", [vivid, dull])["overall"]
    assert sat[0] > sat[1]
    judge = rewards["shapes-judge"].score("a small red circle on a blue background", [vivid])
    assert judge == {"prompt": pytest.approx([1.0])}
    with pytest.raises(ValueError, match="shapes-world prompts"):
        rewards["shapes-judge"].score("a cat", [vivid])
    ens = Ensemble([rewards["taste-saturated"], rewards["taste-clean"]], how="win-share")
    assert ens.dimensions == ("overall",) and ens.score("p", [vivid, dull])["overall"].shape == (2,)
    with pytest.raises(ValueError, match="two or more"):
        Ensemble([rewards["taste-clean"]])


def test_the_arithmetic_world_offers_correctness_and_brevity():
    rewards = programmatic("text")
    right, wrong = b"3 + 4 = 7\nAnswer: 7", b"3 + 4 = 8\nAnswer: 8"
    assert list(rewards["arith-correct"].score("What is 3 + 4?", [right, wrong])["prompt"]) == [1.0, 0.0]
    assert list(rewards["brief"].score("What is 3 + 4?", [b"Answer: 7", right])["overall"]) == [-2.0, -7.0]
    with pytest.raises(ValueError, match="expression prompts"):
        rewards["arith-correct"].score("Tom has 3 apples", [right])


# -- learned reward models ---------------------------------------------------------------------------

def _saturation_votes(store: Store, n_images: int = 36, n_votes: int = 60, seed: int = 0):
    """Renders of train prompts at random saturations, stored as the built-in model's candidates, and
    votes cast by the saturated taste (ties when the renders are equally vivid)."""
    rng = random.Random(seed)
    prompts = shapes.split_prompts()[0][:6]
    ids, sat = [], {}
    for i in range(n_images):
        prompt = prompts[i % len(prompts)]
        style = shapes.Style(saturation=rng.choice([0.35, 0.55, 0.75, 1.0]), spread=0.3)
        g = store.add_generation(prompt=prompt, modality="image", model="shapes-diffusion", seed=i, params={},
                                 media=_png(shapes.render(shapes.parse_prompt(prompt), style, seed=i)), mime="image/png")
        ids.append(g.id)
        sat[g.id] = style.saturation
    by_prompt = {}
    for g in store.get_generations(ids):
        by_prompt.setdefault(g.prompt, []).append(g.id)
    for _ in range(n_votes):
        a, b = rng.sample(by_prompt[rng.choice(list(by_prompt))], 2)
        choice = "tie" if sat[a] == sat[b] else ("a" if sat[a] > sat[b] else "b")
        store.vote(a, b, choice, annotator="me")
    return ids, sat


def test_a_learned_reward_model_picks_up_a_taste_from_votes_on_the_built_in_image_model(tmp_path):
    from modalities.image.adapter import ImageAdapter
    from modalities.protocol import ModelRef

    adapter = ImageAdapter.load(ModelRef("shapes-diffusion"), device="cpu", cache_dir=tmp_path / "cache")
    with Store.open(tmp_path / "data") as store:
        ids, sat = _saturation_votes(store)
        record, metrics = service.train(store, adapter, modality="image", name="vivid", folds=4,
                                        cfg=HeadConfig(epochs=200))
        assert record.version == 1 and record.base_model == "shapes-diffusion" and metrics["ties"] > 0
        assert metrics["heldout_accuracy"] > 0.75, metrics  # chance is 0.5
        reward = service.load(store, "vivid", "image", adapter)
        # unseen renders: more saturated scores higher, mostly
        spec = shapes.parse_prompt(shapes.split_prompts()[1][0])
        pics = [_png(shapes.render(spec, shapes.Style(saturation=s, spread=0.3), seed=100 + k))
                for k, s in enumerate((0.35, 1.0, 0.4, 0.95, 0.3, 1.0))]
        r = reward.overall(shapes.prompt_of(spec), pics)
        assert sum(r[i + 1] > r[i] for i in (0, 2, 4)) >= 2
        again, _ = service.train(store, adapter, modality="image", name="vivid", folds=4, cfg=HeadConfig(epochs=50))
        assert again.version == 2 and store.get_reward_model("vivid").version == 2
        assert service.load(store, "vivid@v1", "image", adapter).version == 1
        meta = LearnedReward.read_meta(tmp_path / "data" / record.path)
        assert meta["data_hash"] == record.data_hash and meta["base_model"] == "shapes-diffusion"
        # its features read noisy latents too: the same candidates at another noise level differ
        f0 = adapter.reward_features(["p"] * 2, pics[:2], noise_level=0.0)
        f9 = adapter.reward_features(["p"] * 2, pics[:2], noise_level=0.9)
        assert f0.shape == f9.shape and not torch.allclose(f0, f9)


def test_kfold_refuses_fewer_decided_pairs_than_folds():
    feats = torch.randn(4, 3)
    a, b, p = torch.tensor([0, 2]), torch.tensor([1, 3]), torch.tensor([1.0, 0.5])
    with pytest.raises(ValueError, match="1 decided pair.*fewer than the 5 folds"):
        kfold_accuracy(feats, a, b, p, HeadConfig(), folds=5)


def test_a_learned_reward_model_on_the_built_in_text_model(tmp_path):
    from modalities.protocol import ModelRef
    from modalities.text.adapter import TextAdapter

    adapter = TextAdapter.load(ModelRef("arith-reasoner"), device="cpu")
    rng = random.Random(0)
    with Store.open(tmp_path / "data") as store:
        for i in range(12):
            x, y = rng.randint(2, 40), rng.randint(2, 40)
            prompt = f"What is {x} + {y}?"
            short = f"{x} + {y} = {x + y}\nAnswer: {x + y}"
            long = f"{x} + {y} = {x + y}\nCheck: {x + y} - {y} = {x}\n{x} + {y} = {x + y}\nAnswer: {x + y}"
            gs = [store.add_generation(prompt=prompt, modality="text", model=adapter.model_name, seed=s, params={},
                                       media=t.encode(), mime="text/plain") for s, t in enumerate((short, long))]
            store.vote(gs[0].id, gs[1].id, "a", annotator="me")
        record, metrics = service.train(store, adapter, modality="text", name="short", folds=3,
                                        cfg=HeadConfig(epochs=150))
        assert metrics["heldout_accuracy"] >= 0.75, metrics
        assert record.modality == "text" and record.dimensions == ("overall",)
        with pytest.raises(ValueError, match="noise_level applies to denoiser features only"):
            adapter.reward_features(["p"], [b"x"], noise_level=0.5)


# -- the CLI and its refusals -------------------------------------------------------------------------

def test_reward_cli_trains_lists_scores_and_refuses_bad_input(tmp_path, capsys):
    data = tmp_path / "data"
    with Store.open(data) as store:
        ids, sat = _saturation_votes(store, n_images=18, n_votes=30, seed=1)
    base = ["--data-dir", str(data)]
    assert main(["reward", "train", "vivid", "--modality", "image", "--folds", "3", "--epochs", "100", *base]) == 0
    out = capsys.readouterr()
    assert "reward model vivid@v1" in out.out and "held-out pair accuracy" in out.out and "3-fold" in out.out
    assert main(["reward", "list", "--json", *base]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"modality": "image", "name": "vivid@v1", "kind": "learned"}.items() <= \
        next(r for r in rows if r["name"] == "vivid@v1").items() and any(r["name"] == "taste-saturated" for r in rows)
    assert main(["reward", "score", "vivid+taste-saturated", str(ids[0]), str(ids[1]), "--json", *base]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert main(["reward", "export", "vivid@v1", str(tmp_path / "out"), *base]) == 0
    assert "wrote" in capsys.readouterr().out
    meta = LearnedReward.read_meta(tmp_path / "out" / "vivid-v1.safetensors")
    assert meta["name"] == "vivid" and meta["base_model"] == "shapes-diffusion" and meta["data_hash"]
    assert sorted(r["generation"] for r in scored) == sorted(ids[:2])
    assert all(set(r) == {"generation", "overall"} for r in scored)
    # fewer votes than folds
    assert main(["reward", "train", "vivid", "--folds", "500", *base]) == 2
    assert "fewer than the 500 folds" in capsys.readouterr().err
    # a built-in name, a name with '+', no votes for a model
    assert main(["reward", "train", "taste-clean", *base]) == 2
    assert "built-in reward" in capsys.readouterr().err
    assert main(["reward", "train", "a+b", *base]) == 2
    assert "cannot hold '+'" in capsys.readouterr().err
    assert main(["reward", "train", "../outside", *base]) == 2
    assert "reward model names are words" in capsys.readouterr().err and not (tmp_path / "outside").exists()
    assert main(["reward", "train", "t", "--modality", "text", *base]) == 2
    assert "no votes on arith-reasoner's text candidates" in capsys.readouterr().err
    assert main(["reward", "score", "nope", str(ids[0]), *base]) == 2
    assert "no reward model 'nope'" in capsys.readouterr().err


def test_reward_model_files_are_checked(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "x.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a safetensors reward model file"):
        LearnedReward.read_meta(tmp_path / "x.safetensors")
    save_file({"w": torch.zeros(2)}, tmp_path / "lora.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not a Palate reward model"):
        LearnedReward.read_meta(tmp_path / "lora.safetensors")
    with pytest.raises(FileNotFoundError):
        LearnedReward.read_meta(tmp_path / "missing.safetensors")


def test_a_reward_model_refuses_another_base_model(tmp_path):
    from alignment.rewards.learned import Head

    head = Head(5, 1, 0)
    reward = LearnedReward(object(), head, {"name": "r", "modality": "image", "base_model": "model-a",
                                             "dimensions": ["overall"]})
    path = reward.save(tmp_path / "r.safetensors")

    class Other:
        model_name = "model-b"

    with pytest.raises(ValueError, match="reads the features of 'model-a', but the loaded model is 'model-b'"):
        LearnedReward.load(path, Other())


# -- synthetic labels --------------------------------------------------------------------------------

def test_ranking_of_groups_equal_scores():
    assert service.ranking_of([1, 2, 3, 4], [0.2, 0.9, 0.2, -1.0]) == [[2], [1, 3], [4]]


def test_reward_label_stores_an_ai_annotators_rankings_that_training_can_leave_out(tmp_path, capfd):
    data = tmp_path / "data"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a small red circle on a blue background\n\ntwo large green squares on a white background\n")
    base = ["--data-dir", str(data)]
    assert main(["reward", "label", "taste-saturated", "--prompts-file", str(prompts), "-k", "3", *base]) == 0
    assert "2 rankings of 3 candidates stored by reward:taste-saturated" in capfd.readouterr().out
    with Store.open(data) as store:
        rows = store.query("SELECT j.kind, j.context, a.name, a.kind AS akind FROM judgments j "
                           "JOIN annotators a ON a.id = j.annotator_id")
        assert rows == [{"kind": "ranking", "context": "reward-label", "name": "reward:taste-saturated",
                         "akind": "ai"}] * 2
        groups = store.ranked_groups(modality="image")
        assert len(groups) == 2 and all(len(g.generation_ids) == 3 for g in groups)
        # the best-ranked candidate is the most saturated one, by the taste itself
        taste = programmatic("image")["taste-saturated"]
        for g in groups:
            media = [store.media_bytes(x) for x in store.get_generations(list(g.generation_ids))]
            scores = taste.overall(g.prompt, media)
            assert scores[0] == max(scores)
        assert store.ranked_groups(modality="image", contexts=["collect"]) == []
    # train --contexts collect: the synthetic rankings are left out, so there is nothing to train on
    assert main(["train", "--method", "rankdpo", "--contexts", "collect", "--steps", "1", *base]) != 0
    err = capfd.readouterr().err
    assert "too few rankings for this run: 0" in err and "contexts collect" in err, err
    # soft labels: every pair of the K gets a vote whose strength is the ensemble's share of agreeing members
    one = tmp_path / "one.txt"
    one.write_text("a small red circle on a blue background\n")
    assert main(["reward", "label", "taste-saturated+taste-large+taste-clean", "--soft", "--prompts-file", str(one),
                 "-k", "3", "--seed", "100", *base]) == 0
    assert "3 soft pairwise votes" in capfd.readouterr().out
    with Store.open(data) as store:
        rows = store.query("SELECT generation_a, generation_b, choice, strength, annotator FROM pairwise_votes")
        assert len(rows) == 3 and {r["annotator"] for r in rows} == {"reward:taste-saturated+taste-large+taste-clean"}
        members = [programmatic("image")[n] for n in ("taste-saturated", "taste-large", "taste-clean")]
        for r in rows:
            a, b = store.get_generations([r["generation_a"], r["generation_b"]])
            media = [store.media_bytes(a), store.media_bytes(b)]
            share = np.mean([float(m.overall(a.prompt, media)[0] > m.overall(a.prompt, media)[1])
                             + 0.5 * float(m.overall(a.prompt, media)[0] == m.overall(a.prompt, media)[1])
                             for m in members])
            assert r["strength"] == pytest.approx(share)
            assert r["choice"] == ("a" if share > 0.5 else "b" if share < 0.5 else "tie")
        soft = store.preference_pairs(modality="image", contexts=["reward-label"])
        assert {round(p.label, 6) for p in soft} <= {round(x, 6) for x in (2 / 3, 5 / 6, 1.0)}
    # a learned reward model is needed by name; an unknown one is one line
    assert main(["reward", "label", "nope", "--prompts-file", str(prompts), *base]) == 2
    assert "no reward model 'nope'" in capfd.readouterr().err
    # no prompts: none given and none judged for that model
    empty = tmp_path / "empty"
    assert main(["reward", "label", "taste-clean", "--data-dir", str(empty)]) == 2
    assert "no prompts to label" in capfd.readouterr().err


# -- active questions --------------------------------------------------------------------------------

class _Fixed:
    """A reward model with given scores (for checking the selection alone)."""

    kind, modality, dimensions, version = "learned", "image", ("overall",), None

    def __init__(self, name, scores):
        self.name, self._scores = name, np.asarray(scores, dtype=np.float64)

    def score(self, prompt, media):
        return {"overall": self._scores[: len(media)]}

    def overall(self, prompt, media):
        return self.score(prompt, media)["overall"]


def test_active_selection_asks_the_least_sure_pair_first():
    from alignment.rewards import least_sure_first, preference

    pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    order, scores = least_sure_first(pairs, _Fixed("r", [0.0, 1.0, 1.1, 5.0]), "p", [b""] * 4)
    assert order[0] == (1, 2) and order[-1] == (0, 3) and list(scores) == [0.0, 1.0, 1.1, 5.0]
    assert preference(1.0, 1.0) == pytest.approx(0.5) and preference(3.0, 0.0) > 0.8
    # an ensemble: the pair its members split on comes first, even where their mean is sure
    ens = Ensemble([_Fixed("a", [0.0, 2.0, 1.0]), _Fixed("b", [0.0, -2.0, 1.0])])
    order, _ = least_sure_first([(0, 2), (0, 1), (1, 2)], ens, "p", [b""] * 3)
    assert order[0] in {(0, 1), (1, 2)} and order[-1] == (0, 2)


# -- prompt variations for labelling ---------------------------------------------------------------

def test_prompt_variations_change_one_attribute_or_the_numbers(tmp_path, capfd):
    from modalities.image.shapes import parse_prompt

    prompts = ["two small red circles on a blue background", "a large green square on a white background on the left"]
    out = service.prompts_with_variations("image", prompts + ["a photo of a cat"], 3, seed=1)
    assert out[:3] == prompts + ["a photo of a cat"] and len(out) == 3 + 6 and len(set(out)) == len(out)
    for varied in out[3:]:
        spec = parse_prompt(varied)
        assert spec is not None
        diffs = [min(sum(a != b for a, b in zip(spec.__dict__.values(), parse_prompt(p).__dict__.values()))
                     for p in prompts)]
        assert diffs == [1], varied
    text = service.prompts_with_variations("text", ["What is 12 + 7 * 3?", "Say hi."], 2, seed=0)
    assert text[:2] == ["What is 12 + 7 * 3?", "Say hi."] and len(text) == 4
    import re as _re

    assert all(_re.fullmatch(r"What is \d\d \+ \d \* \d\?", t) for t in text[2:]), text
    assert service.prompts_with_variations("image", prompts, 0) == prompts
    # labelling the judged prompts and their variations from the CLI
    one = tmp_path / "one.txt"
    one.write_text(prompts[0] + "\n")
    data = tmp_path / "data"
    assert main(["reward", "label", "taste-saturated", "--prompts-file", str(one), "--variations", "1", "-k", "2",
                 "--data-dir", str(data)]) == 0
    assert "2 rankings of 2 candidates" in capfd.readouterr().out
    with Store.open(data) as store:
        labelled = {g.prompt for g in store.list_generations(modality="image")}
        assert prompts[0] in labelled and len(labelled) == 2
