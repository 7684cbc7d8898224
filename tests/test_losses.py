"""Every registered loss against closed forms; generated from the registry, so a new loss
without a closed-form entry here fails this file."""
from __future__ import annotations

import math

import pytest
import torch

from alignment.losses import LOSSES, get_loss, losses_for

S = -0.7  # a score (log-likelihood-like, <= 0)


def _expected_at_equal(name: str, beta: float, spec) -> float:
    """The loss when winner and loser (and their references) score the same."""
    d = spec.defaults
    return {
        "dpo": math.log(2),
        "dpo-self": math.log(2),  # DPO on pairs an online source makes
        "diffusion-dpo": math.log(2),
        "flow-dpo": math.log(2),
        "conservative-dpo": math.log(2),
        "rankdpo": math.log(2),
        "ipo": 1 / (4 * beta**2),
        "hinge": 1.0,
        "simpo": math.log1p(math.exp(d.get("gamma", 0.5))),
        "irepo": 0.0,  # labels 0.5: logit 0, and h = 0
        "mapo": -S + math.log(2),
        "flow-rwr": -S,
        "sft": -S,
        "spo": math.log(2),  # every ratio 1: -log sigmoid(0)
    }[name]


# losses of preference orders (MusicRL's reads rewards instead; its own tests are below)
PAIRWISE = sorted(n for n, s in LOSSES.items() if not s.takes_rewards)


def _call(spec, policy, reference, beta, labels=None, **kw):
    kwargs = dict(spec.defaults)
    kwargs.update(kw)
    if labels is not None:
        kwargs["labels"] = labels
    return spec.fn(policy, reference if spec.needs_reference else None, beta=beta, **kwargs)


@pytest.mark.parametrize("name", PAIRWISE)
def test_equal_scores_give_the_closed_form(name):
    spec = get_loss(name)
    beta = spec.default_beta
    policy = torch.full((3, 2), S)
    reference = torch.full((3, 2), S - 0.2)
    labels = torch.full((3,), 0.5)
    loss, metrics = _call(spec, policy, reference, beta, labels=labels if spec.needs_labels else None)
    assert loss.item() == pytest.approx(_expected_at_equal(name, beta, spec), rel=1e-5, abs=1e-6)
    assert metrics["margin"] == pytest.approx(0.0, abs=1e-6)
    extra = {"clip_fraction"} if name == "spo" else set()  # SPO also says how many ratios left the clip band
    assert set(metrics) == {"reward_accuracy", "margin", "chosen_reward", "rejected_reward"} | extra


@pytest.mark.parametrize("name", PAIRWISE)
def test_swapping_winner_and_loser_flips_the_margin(name):
    spec = get_loss(name)
    policy = torch.tensor([[-0.2, -0.9], [-0.4, -0.6]])
    reference = torch.tensor([[-0.5, -0.5], [-0.5, -0.5]])
    labels = torch.tensor([0.8, 0.7]) if spec.needs_labels else None
    _, m = _call(spec, policy, reference, spec.default_beta, labels=labels)
    _, m_swapped = _call(spec, policy.flip(1), reference.flip(1), spec.default_beta, labels=labels)
    assert m["margin"] > 0 and m_swapped["margin"] == pytest.approx(-m["margin"])
    assert m["reward_accuracy"] == 1.0 and m_swapped["reward_accuracy"] == 0.0


@pytest.mark.parametrize("name", PAIRWISE)
def test_raising_the_winner_lowers_the_loss(name):
    spec = get_loss(name)
    policy = torch.full((2, 2), S, requires_grad=True)
    reference = torch.full((2, 2), S)
    labels = torch.full((2,), 0.9) if spec.needs_labels else None
    loss, _ = _call(spec, policy, reference, spec.default_beta, labels=labels)
    loss.backward()
    assert (policy.grad[:, 0] < 0).all(), policy.grad  # gradient descent raises the winner's score
    assert torch.isfinite(policy.grad).all()


@pytest.mark.parametrize("name", PAIRWISE)
def test_integer_beta_is_a_float_beta(name):
    """A beta of 5000 parsed as an int must not change anything (no integer arithmetic)."""
    spec = get_loss(name)
    policy = torch.tensor([[-0.3, -0.4]])
    reference = torch.tensor([[-0.35, -0.35]])
    labels = torch.tensor([0.75]) if spec.needs_labels else None
    a, _ = _call(spec, policy, reference, 2, labels=labels)
    b, _ = _call(spec, policy, reference, 2.0, labels=labels)
    assert a.item() == b.item()


@pytest.mark.parametrize("name", sorted(n for n, s in LOSSES.items() if s.needs_reference))
def test_reference_is_required(name):
    spec = get_loss(name)
    with pytest.raises(ValueError, match="needs reference scores"):
        spec.fn(torch.zeros(1, 2) - 1, None, beta=1.0, labels=torch.tensor([0.7]))


def test_dpo_and_diffusion_dpo_values():
    policy = torch.tensor([[-0.1, -0.5]])
    reference = torch.tensor([[-0.3, -0.3]])
    h = (-0.1 + 0.3) - (-0.5 + 0.3)  # 0.4
    loss, m = get_loss("dpo").fn(policy, reference, beta=0.5)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.5 * h)), rel=1e-6)
    assert m["margin"] == pytest.approx(h)
    loss, _ = get_loss("diffusion-dpo").fn(policy, reference, beta=10.0)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-5.0 * h)), rel=1e-6)


def test_irepo_regresses_onto_the_logit_of_the_soft_label():
    policy = torch.tensor([[-0.1, -0.5]])
    reference = torch.tensor([[-0.3, -0.3]])
    for p in (0.6, 0.9, 1.0):
        loss, _ = get_loss("irepo").fn(policy, reference, beta=1.0, labels=torch.tensor([p]), clip=0.05)
        q = min(p, 0.95)
        assert loss.item() == pytest.approx((0.4 - math.log(q / (1 - q))) ** 2, rel=1e-4, abs=1e-6)
    with pytest.raises(ValueError, match="soft labels"):
        get_loss("irepo").fn(policy, reference, beta=1.0)


def test_mapo_margin_sign_prefers_the_more_likely_winner():
    """The preferred sample being more likely (higher score) must lower the margin term."""
    good = torch.tensor([[-0.1, -0.9]])
    bad = torch.tensor([[-0.9, -0.1]])
    lg, mg = get_loss("mapo").fn(good, None, beta=1.0)
    lb, mb = get_loss("mapo").fn(bad, None, beta=1.0)
    margin_term = lambda loss, winner: loss.item() - (-winner)  # noqa: E731
    assert margin_term(lg, -0.1) < math.log(2) < margin_term(lb, -0.9)


def test_rankdpo_weights_and_ties():
    policy = torch.tensor([[-0.1, -0.2, -0.3, -0.4]])
    reference = torch.full((1, 4), -0.25)
    loss, m = get_loss("rankdpo").fn(policy, reference, beta=2.0)
    # closed form: DCG-weighted mean of -log sigmoid(beta/2 * (h_i - h_j)) over i < j
    K = 4
    gains = [2 ** (K - r) - 1 for r in range(1, K + 1)]
    disc = [1 / math.log2(1 + p) for p in range(1, K + 1)]
    h = [-0.1 + 0.25, -0.2 + 0.25, -0.3 + 0.25, -0.4 + 0.25]
    pairs = [(i, j) for i in range(K) for j in range(i + 1, K)]
    w = [abs(gains[i] - gains[j]) * abs(disc[i] - disc[j]) for i, j in pairs]
    expected = sum(wi * math.log1p(math.exp(-(h[i] - h[j]))) for wi, (i, j) in zip(w, pairs)) / sum(w)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert m["reward_accuracy"] == 1.0
    tied, m_tied = get_loss("rankdpo").fn(policy, reference, beta=2.0, ranks=torch.tensor([[1, 1, 1, 1]]))
    assert tied.item() == 0.0 and m_tied["reward_accuracy"] == 0.0  # a tie is never a win


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\[B, K>=2\]"):
        get_loss("dpo").fn(torch.zeros(3), torch.zeros(3), beta=0.1)
    with pytest.raises(ValueError, match="float32"):
        get_loss("dpo").fn(torch.zeros(1, 2, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64), beta=0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        get_loss("conservative-dpo").fn(torch.zeros(1, 2), torch.zeros(1, 2), beta=0.1, label_smoothing=0.7)
    with pytest.raises(KeyError, match="unknown method 'dpo2'"):
        get_loss("dpo2")


def test_methods_by_score_family():
    assert "diffusion-dpo" in losses_for("diffusion") and "dpo" not in losses_for("diffusion")
    assert {"simpo", "dpo", "irepo"} <= set(losses_for("autoregressive"))
    assert {"flow-dpo", "flow-rwr", "mapo"} <= set(losses_for("flow"))
    for spec in LOSSES.values():
        assert spec.paper and isinstance(spec.default_beta, float)


@pytest.mark.parametrize("name", [n for n in losses_for("autoregressive") if n in PAIRWISE])
def test_nll_term_adds_alpha_times_the_chosen_nll(name):
    """RPO's term (loss_kwargs {"nll": alpha}): the loss grows by alpha * mean(-policy[:, 0]), and
    its gradient raises the chosen sample's score; off by default."""
    spec = get_loss(name)
    policy = torch.tensor([[-1.0, -2.0], [-0.5, -0.2]], requires_grad=True)
    reference = torch.tensor([[-1.2, -1.9], [-0.4, -0.3]])
    kw = {**spec.defaults, "beta": spec.default_beta}
    if spec.needs_labels:
        kw["labels"] = torch.tensor([0.8, 0.7])
    ref = reference if spec.needs_reference else None
    base, m0 = spec.fn(policy, ref, **kw)
    with_term, m1 = spec.fn(policy, ref, nll=0.3, **kw)
    assert "chosen_nll" not in m0 and m1["chosen_nll"] == pytest.approx(0.75)
    assert with_term.item() == pytest.approx(base.item() + 0.3 * 0.75)
    g0 = torch.autograd.grad(base, policy)[0]
    g1 = torch.autograd.grad(spec.fn(policy, ref, nll=0.3, **kw)[0], policy)[0]
    assert torch.allclose(g1[:, 0] - g0[:, 0], torch.full((2,), -0.3 / 2))
    assert torch.allclose(g1[:, 1], g0[:, 1])


def test_nll_term_is_only_for_language_models():
    from alignment.config import TrainConfig

    base = {"modality": "image", "model": "m", "data_dir": "d"}
    with pytest.raises(ValueError, match=r"loss_kwargs \['nll'\] do not apply to diffusion-dpo"):
        TrainConfig(method="diffusion-dpo", loss_kwargs={"nll": 0.3}, **base)
    with pytest.raises(ValueError, match="do not apply to dpo"):
        TrainConfig(method="dpo", loss_kwargs={"gama": 1.0}, **{**base, "modality": "text"})
    assert TrainConfig(method="simpo", loss_kwargs={"nll": 1.0, "gamma": 0.3}, **{**base, "modality": "text"})


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "lots"])
def test_nll_weight_must_be_a_finite_non_negative_number(bad):
    from alignment.config import TrainConfig

    with pytest.raises(ValueError, match="nll must be a finite number >= 0"):
        TrainConfig(modality="text", method="simpo", model="m", data_dir="d", loss_kwargs={"nll": bad})


@pytest.mark.parametrize("per_token_scores", [False, True])
def test_nll_per_token_is_trls_cross_entropy_over_chosen_tokens(per_token_scores):
    """nll_reduction "token" (TRL's rpo_alpha): sum of the chosen answers' -log p over the sum of their
    token counts -- not the mean of per-answer NLLs. Closed form: answers of 5 and 1 tokens with summed
    log-probs -10 and -2 give 12 / 6 = 2.0 (the score reduction would give 6.0)."""
    spec = get_loss("dpo")
    sums = torch.tensor([[-10.0, -11.0], [-2.0, -3.0]])
    tokens = torch.tensor([5.0, 1.0])
    policy = sums / torch.tensor([[5.0, 4.0], [1.0, 2.0]]) if per_token_scores else sums
    ref = policy - 0.1
    base, _ = spec.fn(policy, ref, beta=0.1)
    loss, m = spec.fn(policy, ref, beta=0.1, nll=0.5, nll_tokens=tokens, scores_per_token=per_token_scores)
    assert m["chosen_nll"] == pytest.approx(2.0)
    assert loss.item() == pytest.approx(base.item() + 0.5 * 2.0)
    _, by_score = spec.fn(sums, sums - 0.1, beta=0.1, nll=0.5)
    assert by_score["chosen_nll"] == pytest.approx(6.0)


def test_ipo_on_per_token_means_is_trls_ipo():
    """TRL's loss_type="ipo" averages log-probs per token before the IPO loss: with score_reduction
    "mean" the trainer scores that way; the loss is then (h - 1/(2 tau))^2 on the means."""
    from alignment.config import TrainConfig

    base = {"modality": "text", "model": "m", "data_dir": "d"}
    assert not TrainConfig(method="ipo", **base).per_token_scores
    assert TrainConfig(method="ipo", score_reduction="mean", **base).per_token_scores
    assert TrainConfig(method="simpo", **base).per_token_scores
    assert not TrainConfig(method="simpo", score_reduction="sum", **base).per_token_scores
    means = torch.tensor([[-1.0, -1.5]])
    ref = torch.tensor([[-1.1, -1.4]])
    loss, _ = get_loss("ipo").fn(means, ref, beta=0.5)
    h = (-1.0 + 1.1) - (-1.5 + 1.4)
    assert loss.item() == pytest.approx((h - 1.0) ** 2)
    with pytest.raises(ValueError, match="score_reduction must be auto, sum or mean"):
        TrainConfig(method="ipo", score_reduction="avg", **base)
    with pytest.raises(ValueError, match="nll_reduction must be score or token"):
        TrainConfig(method="ipo", nll_reduction="tokens", **base)
    with pytest.raises(ValueError, match="are for language-model methods"):
        TrainConfig(method="diffusion-dpo", score_reduction="mean", **{**base, "modality": "image"})
    # older runs' checkpoints keep their digest (the new keys at their defaults do not enter it)
    cfg = TrainConfig(method="ipo", **base)
    d = cfg.to_dict()
    for key in ("score_reduction", "nll_reduction", "modality_source", "modality_options", "run_id", "device",
                "reward_model", "prompts", "reward_mode"):
        d.pop(key)
    import hashlib
    import json

    assert cfg.digest() == hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def test_rloo_kl_by_hand():
    """REINFORCE leave-one-out with the KL in the reward: rewards standardised within the prompt's samples,
    r' = z - beta (pi - ref), A_k = r'_k - mean of the others, loss -mean(A * pi)."""
    import numpy as np

    spec = get_loss("musicrl")
    policy = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    reference = torch.tensor([[-1.5, -2.0, -2.0]])
    rewards = torch.tensor([[1.0, 2.0, 4.0]])
    beta = 0.3
    loss, m = spec.fn(policy, reference, beta=beta, rewards=rewards)
    r = rewards.numpy()[0]
    z = (r - r.mean()) / r.std()
    shaped = z - beta * (policy.detach().numpy()[0] - reference.numpy()[0])
    adv = np.array([shaped[k] - np.delete(shaped, k).mean() for k in range(3)])
    assert loss.item() == pytest.approx(float(-(adv * policy.detach().numpy()[0]).mean()), rel=1e-5)
    assert m["kl"] == pytest.approx(float((policy.detach() - reference).mean()))
    loss.backward()
    assert torch.allclose(policy.grad[0], torch.tensor(-adv / 3, dtype=torch.float32), atol=1e-6)
    assert policy.grad[0, 2] < 0  # gradient descent raises the best-rewarded sample


def test_rloo_kl_pulls_towards_the_reference_when_rewards_are_equal():
    spec = get_loss("musicrl")
    policy = torch.tensor([[-1.0, -2.0]], requires_grad=True)  # sample 0 is likelier than the reference finds it
    reference = torch.tensor([[-2.0, -2.0]])
    loss, _ = spec.fn(policy, reference, beta=0.5, rewards=torch.tensor([[1.0, 1.0]]))
    loss.backward()
    assert policy.grad[0, 0] > 0  # gradient descent lowers it back
    with pytest.raises(ValueError, match="rewards"):
        spec.fn(policy, reference, beta=0.5)
    from alignment.config import TrainConfig

    with pytest.raises(ValueError, match="do not apply to musicrl"):  # no chosen sample to add an NLL of
        TrainConfig(modality="music", method="musicrl", model="m", data_dir="d", reward_model="taste-bright",
                    loss_kwargs={"nll": 0.3})
