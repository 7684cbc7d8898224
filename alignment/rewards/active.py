"""Active questions: ask the user about the pair the reward model is least sure of.

A vote on a pair the reward model already predicts with confidence teaches it little; one where it
hesitates (scores close together), or where the members of an ensemble disagree, teaches it most.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .base import Ensemble, RewardModel
from .bt import DEFAULT_THETA


def preference(ra: float, rb: float, theta: float = DEFAULT_THETA) -> float:
    """P(A preferred), ties counting half, under Bradley-Terry with ties (learned rewards are on that scale)."""
    k = math.log(theta)
    pa = 1.0 / (1.0 + math.exp(-(ra - rb - k)))
    pb = 1.0 / (1.0 + math.exp(-(rb - ra - k)))
    return pa + 0.5 * (1.0 - pa - pb)


def soft_preferences(reward: RewardModel, prompt: str, media: Sequence[bytes]) -> np.ndarray:
    """[N, N] P(candidate i preferred over j), ties counting half: for an ensemble the share of its
    members that prefer i (empirical AI-annotator preferences, what iREPO regresses on); for a learned
    reward model its Bradley-Terry-with-ties probability; for a programmatic reward 1, 0 or 1/2."""
    if isinstance(reward, Ensemble):
        table = np.stack([np.asarray(m.overall(prompt, media), dtype=np.float64) for m in reward.members])
        return (table[:, :, None] > table[:, None, :]).mean(0) + 0.5 * (table[:, :, None] == table[:, None, :]).mean(0)
    r = np.asarray(reward.overall(prompt, media), dtype=np.float64)
    if reward.kind == "learned":
        return np.array([[preference(a, b) for b in r] for a in r])
    return (r[:, None] > r[None, :]) + 0.5 * (r[:, None] == r[None, :])


def uncertainty(pair: tuple[int, int], scores: np.ndarray, member_scores: np.ndarray | None = None) -> tuple[float, float]:
    """Sort key, smallest = least sure: (how far the ensemble's members are from a split vote, how far
    apart the two scores are). Without members only the second part counts."""
    i, j = pair
    gap = abs(float(scores[i]) - float(scores[j]))
    if member_scores is None or len(member_scores) < 2:
        return (0.0, gap)
    share = float(np.mean(member_scores[:, i] > member_scores[:, j]) + 0.5 * np.mean(member_scores[:, i] == member_scores[:, j]))
    return (abs(share - 0.5), gap)


def least_sure_first(pairs: Sequence[tuple[int, int]], reward: RewardModel, prompt: str,
                     media: Sequence[bytes]) -> tuple[list[tuple[int, int]], np.ndarray]:
    """``pairs`` (indices into ``media``) reordered least-sure first, and the candidates' scores."""
    scores = np.asarray(reward.overall(prompt, media), dtype=np.float64)
    members = None
    if isinstance(reward, Ensemble):
        members = np.stack([np.asarray(m.overall(prompt, media), dtype=np.float64) for m in reward.members])
    return sorted(pairs, key=lambda p: uncertainty(p, scores, members)), scores
