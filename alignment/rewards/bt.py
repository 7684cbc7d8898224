"""Bradley-Terry with ties (Rao and Kupper's form, as VideoAlign trains VideoReward): ties are evidence
that two rewards are close, instead of votes thrown away.

With rewards r_a, r_b, d = r_a - r_b and a tie parameter theta > 1 (k = log theta):

    P(a wins) = sigmoid(d - k),   P(b wins) = sigmoid(-d - k),
    P(tie)    = 1 - P(a wins) - P(b wins) = (theta^2 - 1) sigmoid(d - k) sigmoid(-d - k),

so a tie is most likely at equal rewards and theta = 1 is plain Bradley-Terry without ties. A soft vote
(a share p of annotators for a) is the mixture p * (a wins) + (1 - p) * (b wins).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

TIE_EPS = 1e-9  # a vote this close to 0.5 is a tie (as storage.derive counts it)
DEFAULT_THETA = 2.0  # P(tie) at equal rewards = (theta - 1) / (theta + 1) = 1/3


def log_outcome_probabilities(d: torch.Tensor, theta: float = DEFAULT_THETA) -> tuple[torch.Tensor, ...]:
    """log P(a wins), log P(b wins), log P(tie) for reward differences ``d`` = r_a - r_b."""
    if theta < 1.0:
        raise ValueError(f"the tie parameter theta must be >= 1, got {theta}")
    k = math.log(theta)
    la, lb = F.logsigmoid(d - k), F.logsigmoid(-d - k)
    lt = (math.log(theta * theta - 1.0) if theta > 1.0 else -math.inf) + la + lb
    return la, lb, lt


def bt_ties_nll(r_a: torch.Tensor, r_b: torch.Tensor, p: torch.Tensor, theta: float = DEFAULT_THETA,
                weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean negative log-likelihood of votes ``p`` (the share for a: 1 a wins, 0 b wins, 0.5 a tie,
    anything else a soft vote) under rewards ``r_a``, ``r_b``; optional per-vote ``weight``."""
    la, lb, lt = log_outcome_probabilities(r_a - r_b, theta)
    tie = (p - 0.5).abs() <= TIE_EPS
    if theta == 1.0 and bool(tie.any()):
        raise ValueError("ties need a tie parameter theta > 1")
    decisive = -(p * la + (1.0 - p) * lb)
    nll = torch.where(tie, -torch.where(tie, lt, torch.zeros_like(lt)), decisive)
    if weight is not None:
        return (nll * weight).sum() / weight.sum().clamp(min=1e-12)
    return nll.mean()


def preference_probability(r_a: torch.Tensor, r_b: torch.Tensor, theta: float = DEFAULT_THETA) -> torch.Tensor:
    """P(a preferred over b) with a tie counted half: how sure the model is that a wins."""
    la, lb, lt = log_outcome_probabilities(r_a - r_b, theta)
    return la.exp() + 0.5 * lt.exp()
