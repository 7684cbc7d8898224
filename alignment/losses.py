"""Preference losses: small pure functions of scores, and a registry.

Inputs (see ``modalities.protocol`` for what a score is):

- ``policy``: scores of the model being trained, float32 ``[B, K]``, column 0
  the preferred sample (for listwise losses: columns in rank order, best first);
- ``reference``: the same for the reference model (the policy with its adapter
  disabled), or None for reference-free losses;
- ``labels``: optional ``[B]`` soft labels, the share of votes for column 0
  (iREPO needs them; pairwise hard votes are 1.0);
- ``ranks``: optional ``[B, K]`` ranks (1 = best; equal ranks are ties) for
  listwise losses; by default column i has rank i + 1.

The implicit reward of a sample is ``policy - reference`` (or the policy score
alone when reference-free). Every loss returns ``(loss, metrics)`` with
metrics ``reward_accuracy`` (share of pairs whose implicit reward orders them
as the user did), ``margin`` (mean chosen-minus-rejected implicit reward),
``chosen_reward`` and ``rejected_reward``.

**beta** is always a float (never parsed as an integer) and multiplies the
implicit-reward difference inside the loss; each entry states its scale.
Ties never reach a loss (storage leaves them out), so no loss treats a tie as
a win for the first sample.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from .methods import LOSSES, LossSpec, Preset, get_loss, losses_for, methods_for  # noqa: F401  (the registry)

Metrics = dict[str, float]
LossFn = Callable[..., tuple[torch.Tensor, Metrics]]


def _pair(policy: torch.Tensor, reference: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    if policy.dim() != 2 or policy.shape[1] < 2:
        raise ValueError(f"scores must be [B, K>=2] with the preferred sample in column 0, got {tuple(policy.shape)}")
    if policy.dtype != torch.float32:
        raise ValueError(f"scores must be float32, got {policy.dtype}")
    if reference is not None and reference.shape != policy.shape:
        raise ValueError(f"reference scores {tuple(reference.shape)} do not match policy {tuple(policy.shape)}")
    rewards = policy if reference is None else policy - reference
    return rewards[:, 0], rewards[:, 1]


def _metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> Metrics:
    with torch.no_grad():
        return {
            "reward_accuracy": (chosen > rejected).float().mean().item(),
            "margin": (chosen - rejected).mean().item(),
            "chosen_reward": chosen.mean().item(),
            "rejected_reward": rejected.mean().item(),
        }


def _need_reference(reference: torch.Tensor | None, name: str) -> torch.Tensor:
    if reference is None:
        raise ValueError(f"{name} needs reference scores (the policy with its adapter disabled)")
    return reference


# -- pairwise, with a reference ----------------------------------------------


def dpo(policy, reference, *, beta: float, **_) -> tuple[torch.Tensor, Metrics]:
    """DPO, sigmoid loss (Rafailov et al. 2023, "Direct Preference Optimization", eq. 7):
    -log sigmoid(beta * h), h = (pi_w - ref_w) - (pi_l - ref_l). beta ~ 0.1 for LMs."""
    w, l = _pair(policy, _need_reference(reference, "dpo"))
    return -F.logsigmoid(float(beta) * (w - l)).mean(), _metrics(w, l)


def ipo(policy, reference, *, beta: float, **_) -> tuple[torch.Tensor, Metrics]:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm...", eq. 17):
    (h - 1 / (2 beta))^2. Here beta is IPO's tau: smaller beta, larger target margin.
    On summed log-probabilities by default (the paper's sequence likelihoods); TRL's
    ``loss_type="ipo"`` uses per-token means -- train with ``score_reduction="mean"`` for that."""
    w, l = _pair(policy, _need_reference(reference, "ipo"))
    return ((w - l) - 1.0 / (2.0 * float(beta))).pow(2).mean(), _metrics(w, l)


def hinge(policy, reference, *, beta: float, **_) -> tuple[torch.Tensor, Metrics]:
    """Hinge (SLiC-HF, Zhao et al. 2023): relu(1 - beta * h)."""
    w, l = _pair(policy, _need_reference(reference, "hinge"))
    return F.relu(1.0 - float(beta) * (w - l)).mean(), _metrics(w, l)


def conservative_dpo(policy, reference, *, beta: float, label_smoothing: float = 0.1, **_):
    """Conservative / label-smoothed DPO (Mitchell 2023, "A note on DPO with noisy preferences"):
    -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h), eps the assumed flip rate."""
    eps = float(label_smoothing)
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {eps}")
    w, l = _pair(policy, _need_reference(reference, "conservative-dpo"))
    z = float(beta) * (w - l)
    return (-(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)).mean(), _metrics(w, l)


def diffusion_dpo(policy, reference, *, beta: float, **_) -> tuple[torch.Tensor, Metrics]:
    """Diffusion-DPO (Wallace et al. 2023, eq. 14): with scores = minus denoising MSE,
    -log sigmoid(-beta/2 * ((mse_w - ref_mse_w) - (mse_l - ref_mse_l))) = -log sigmoid(beta/2 * h).
    beta absorbs the paper's T * omega(lambda_t); ~2000-5000 for SD-size models."""
    w, l = _pair(policy, _need_reference(reference, "diffusion-dpo"))
    return -F.logsigmoid(0.5 * float(beta) * (w - l)).mean(), _metrics(w, l)


def flow_dpo(policy, reference, *, beta: float, **_) -> tuple[torch.Tensor, Metrics]:
    """Flow-DPO (Liu et al. 2025, "Improving Video Generation with Human Feedback"): Diffusion-DPO's
    loss on velocity-MSE scores with a *constant* beta (not scaled by the timestep)."""
    w, l = _pair(policy, _need_reference(reference, "flow-dpo"))
    return -F.logsigmoid(0.5 * float(beta) * (w - l)).mean(), _metrics(w, l)


def irepo(policy, reference, *, beta: float, labels: torch.Tensor | None = None, clip: float = 0.01, **_):
    """iREPO (Le et al. 2024): regress the implicit-reward difference onto the logit of the
    empirical soft label p (share of votes for column 0), clipped to [clip, 1 - clip]:
    (beta * h - logit(p))^2."""
    if labels is None:
        raise ValueError("irepo needs soft labels (share of votes for the preferred sample)")
    w, l = _pair(policy, _need_reference(reference, "irepo"))
    p = labels.to(policy).clamp(float(clip), 1.0 - float(clip))
    target = torch.log(p) - torch.log1p(-p)
    return (float(beta) * (w - l) - target).pow(2).mean(), _metrics(w, l)


# -- reference-free ------------------------------------------------------------


def simpo(policy, reference=None, *, beta: float, gamma: float = 0.5, **_):
    """SimPO (Meng et al. 2024, eq. 6): -log sigmoid(beta * (s_w - s_l) - gamma), with s the
    length-normalised (per-token mean) log-probability; reference-free. beta ~ 2-2.5."""
    w, l = _pair(policy, None)
    return -F.logsigmoid(float(beta) * (w - l) - float(gamma)).mean(), _metrics(w, l)


def _log_odds(score: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)) for p = exp(score) <= 1, i.e. -log(expm1(-score))."""
    return -torch.log(torch.expm1((-score).clamp_min(1e-6)))


def mapo(policy, reference=None, *, beta: float, **_):
    """MaPO (Hong et al. 2024, "Margin-aware Preference Optimization"), reference-free:
    likelihood of the preferred sample plus a margin term on log-odds,
        -s_w - log sigmoid(beta * (logodds(s_w) - logodds(s_l))),
    with p = exp(s) the sample's likelihood proxy (s = minus MSE for diffusion). The margin is
    positive when the preferred sample is the more likely one (the sign some public scripts flip)."""
    w, l = _pair(policy, None)
    margin = _log_odds(w) - _log_odds(l)
    return (-w - F.logsigmoid(float(beta) * margin)).mean(), _metrics(w, l)


def flow_rwr(policy, reference=None, *, beta: float, labels: torch.Tensor | None = None, **_):
    """Flow-RWR (Liu et al. 2025): reward-weighted flow matching, -sum_i w_i s_i with
    w = softmax(reward / beta) over the batch's samples; rewards from the votes (column 0 gets
    the label p, column 1 gets 1 - p; p = 1 without labels). beta is the temperature."""
    w, l = _pair(policy, None)
    p = torch.ones_like(w) if labels is None else labels.to(policy)
    rewards = torch.cat([p, 1.0 - p])
    weights = torch.softmax(rewards / float(beta), dim=0) * rewards.numel()
    return -(weights * torch.cat([w, l])).mean(), _metrics(w, l)


def sft(policy, reference=None, *, beta: float, **_):
    """Supervised fine-tuning on the preferred samples (the baseline VideoAlign compares its methods with):
    -s_w, the plain flow-matching (or denoising) loss of the winner; the loser is not trained on (its
    score enters the metrics only). beta is unused."""
    w, l = _pair(policy, None)
    return -w.mean(), _metrics(w, l)


def spo(policy, reference, *, beta: float, clip: float = 0.1, **_):
    """SPO (Liang et al. 2024, "Step-aware Preference Optimization"): scores are one denoising step's
    transition log-probabilities (per element, mean over the latent) of the step-aware preference
    model's winner and loser of a pool drawn from the same latent. With the ratio to the reference
    r = clamp(p_theta / p_ref, 1 - clip, 1 + clip), the loss is -log sigmoid(beta (log r_w - log r_l));
    the clamp stops the gradient of a candidate whose ratio left the band. beta = 10 in the paper."""
    w, l = _pair(policy, _need_reference(reference, "spo"))
    eps = float(clip)
    if not 0.0 < eps < 1.0:
        raise ValueError(f"clip must be in (0, 1), got {eps}")
    lo, hi = math.log1p(-eps), math.log1p(eps)
    loss = -F.logsigmoid(float(beta) * (w.clamp(lo, hi) - l.clamp(lo, hi))).mean()
    metrics = _metrics(w, l)
    with torch.no_grad():
        metrics["clip_fraction"] = torch.cat([(w < lo) | (w > hi), (l < lo) | (l > hi)]).float().mean().item()
    return loss, metrics


# -- RL from sequence-level rewards ----------------------------------------------


def rloo_kl(policy, reference, *, beta: float, rewards: torch.Tensor | None = None, samples: float = 0,
            temperature: float = 1.0, **_):
    """REINFORCE with a leave-one-out baseline (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics")
    on K samples of each prompt drawn from the policy itself, with the KL to the reference inside the
    reward, as MusicRL (Cideron et al. 2024) regularises: per sample the shaped reward is
        r'_k = z_k - beta * (log pi(y_k) - log ref(y_k)),
    z the rewards standardised within the prompt's K samples (so beta means the same whatever the reward
    model's scale), the advantage A_k = r'_k - mean_{j != k} r'_j, and the loss -mean(A_k * log pi(y_k))
    (A held constant). Scores are sequence log-probabilities (sums). ``rewards``: [B, K]."""
    del samples, temperature  # the source's sampling options
    reference = _need_reference(reference, "musicrl")
    if rewards is None:
        raise ValueError("rloo_kl needs the samples' rewards (an online source gives them)")
    if policy.dim() != 2 or policy.shape[1] < 2 or policy.shape != reference.shape:
        raise ValueError(f"rloo_kl needs policy and reference scores of shape [B, K>=2], got {tuple(policy.shape)}")
    r = rewards.to(policy.device, torch.float32)
    if r.shape != policy.shape:
        raise ValueError(f"rewards {tuple(r.shape)} do not match the scores {tuple(policy.shape)}")
    K = policy.shape[1]
    with torch.no_grad():
        z = (r - r.mean(1, keepdim=True)) / r.std(1, keepdim=True, unbiased=False).clamp_min(1e-6)
        kl = policy - reference
        shaped = z - float(beta) * kl
        advantage = shaped - (shaped.sum(1, keepdim=True) - shaped) / (K - 1)
    loss = -(advantage * policy).mean()
    metrics = {"reward": r.mean().item(), "kl": kl.mean().item(), "advantage_abs": advantage.abs().mean().item(),
               "reward_accuracy": float((torch.argmax(policy - reference, 1) == torch.argmax(r, 1)).float().mean()),
               "margin": float((kl * z).mean())}
    return loss, metrics


# -- listwise -------------------------------------------------------------------


def rankdpo(policy, reference, *, beta: float, ranks: torch.Tensor | None = None, **_):
    """RankDPO (Karthik et al. 2024, "Scalable Ranked Preference Optimization"): DPO over every
    ordered pair of a ranking, each pair weighted by how much swapping it changes DCG,
        w_ij = |G_i - G_j| * |1/log2(1 + i) - 1/log2(1 + j)|,  G = 2^(K - rank) - 1,
    normalised per group. Uses Diffusion-DPO's beta/2 convention. Tied ranks make no pair."""
    reference = _need_reference(reference, "rankdpo")
    if policy.dim() != 2 or policy.shape != reference.shape:
        raise ValueError("rankdpo needs policy and reference scores of shape [B, K]")
    B, K = policy.shape
    ranks = torch.arange(1, K + 1, device=policy.device).expand(B, K) if ranks is None else ranks.to(policy.device)
    h = policy - reference
    gains = torch.pow(2.0, (K - ranks).float()) - 1.0
    pos = torch.arange(1, K + 1, device=policy.device, dtype=torch.float32)
    discount = 1.0 / torch.log2(1.0 + pos)
    i, j = torch.triu_indices(K, K, offset=1)
    better = ranks[:, i] < ranks[:, j]  # [B, P]; position i ranked strictly better than j
    worse = ranks[:, i] > ranks[:, j]
    sign = better.float() - worse.float()  # 0 for ties
    weight = (gains[:, i] - gains[:, j]).abs() * (discount[i] - discount[j]).abs() * sign.abs()
    weight = weight / weight.sum(dim=1, keepdim=True).clamp_min(1e-12)
    diff = sign * (h[:, i] - h[:, j])  # winner minus loser for every strict pair
    loss = -(weight * F.logsigmoid(0.5 * float(beta) * diff)).sum(dim=1).mean()
    with torch.no_grad():
        strict = sign != 0
        acc = ((diff > 0) & strict).float().sum() / strict.float().sum().clamp_min(1)
        metrics = {
            "reward_accuracy": acc.item(),
            "margin": (diff * strict).sum().item() / max(1, int(strict.sum())),
            "chosen_reward": h[:, 0].mean().item(),
            "rejected_reward": h[:, -1].mean().item(),
        }
    return loss, metrics


def with_nll(fn: LossFn) -> LossFn:
    """Add RPO's negative log-likelihood term on the preferred sample (Pang et al. 2024, "Iterative
    Reasoning Preference Optimization"): ``loss + nll * NLL(chosen)``, off unless
    ``loss_kwargs={"nll": alpha}``. The term keeps the chosen answer's own tokens likely while the
    preference term separates it from the rejected one (which, for reasoning traces, shares most of
    its steps). Two reductions of NLL(chosen):

    - ``nll_tokens`` None (Palate's default, "score"): the batch mean of ``-policy[:, 0]``, i.e. the
      whole answer's NLL for summed scores, the per-token NLL of each answer for length-normalised
      scores (SimPO);
    - ``nll_tokens`` given ("token", TRL's ``rpo_alpha``): the cross-entropy over every chosen token
      of the batch, ``sum(-logp) / sum(tokens)``; ``nll_tokens`` [B] holds each chosen answer's token
      count and ``scores_per_token`` says whether ``policy`` holds per-token means (then
      ``mean * count`` is the answer's summed log-probability)."""

    def wrapped(policy, reference=None, *, nll: float = 0.0, nll_tokens: torch.Tensor | None = None,
                scores_per_token: bool = False, **kw):
        loss, metrics = fn(policy, reference, **kw)
        if nll:
            if nll_tokens is None:
                chosen_nll = -policy[:, 0].mean()
            else:
                tokens = nll_tokens.to(policy).reshape(-1)
                summed = policy[:, 0] * tokens if scores_per_token else policy[:, 0]
                chosen_nll = -summed.sum() / tokens.sum().clamp_min(1.0)
            loss = loss + float(nll) * chosen_nll
            metrics = {**metrics, "chosen_nll": chosen_nll.item()}
        return loss, metrics

    wrapped.__name__, wrapped.__doc__ = fn.__name__, fn.__doc__
    return wrapped


FUNCTIONS: dict[str, LossFn] = {
    "dpo": with_nll(dpo), "ipo": with_nll(ipo), "hinge": with_nll(hinge),
    "conservative_dpo": with_nll(conservative_dpo), "simpo": with_nll(simpo), "irepo": with_nll(irepo),
    "diffusion_dpo": diffusion_dpo, "mapo": mapo, "rankdpo": rankdpo, "flow_dpo": flow_dpo, "flow_rwr": flow_rwr,
    "sft": sft, "spo": spo, "rloo_kl": rloo_kl,
}
