"""Reward models behind one signature: a prompt and its candidates in, one score per candidate per
dimension out (higher is better).

Four kinds: programmatic (a modality's world judge or simulated taste, declared in its spec's
``rewards``), learned (:mod:`.learned`: the generator's own features plus a head trained on the user's
judgments), similarity (a pretrained encoder's prompt agreement, zero-shot: CLIPScore, PickScore, CLAP
score) and ensembles of any (the mean of standardised scores, or RankDPO's win share).
"""
from __future__ import annotations

import abc
import importlib
from typing import Any, Callable, Sequence

import numpy as np

ENSEMBLES = ("mean", "win-share")
SIMILARITY_PREFIX = "similarity:"


class RewardModel(abc.ABC):
    """``score(prompt, media)`` -> ``{dimension: array of one score per candidate}``."""

    name: str
    modality: str
    kind: str  # "programmatic", "learned" or "ensemble"
    dimensions: tuple[str, ...]
    version: int | None = None

    @property
    def annotator(self) -> str:
        """The annotator name of judgments this reward model casts (name and version)."""
        return f"reward:{self.name}" + (f"@v{self.version}" if self.version is not None else "")

    @abc.abstractmethod
    def score(self, prompt: str, media: Sequence[bytes]) -> dict[str, np.ndarray]:
        ...

    def overall(self, prompt: str, media: Sequence[bytes]) -> np.ndarray:
        """The ``overall`` dimension if it has one, else its only (or first) dimension."""
        scores = self.score(prompt, media)
        return scores.get("overall", scores[self.dimensions[0]])


class Programmatic(RewardModel):
    """A reward a modality declares (``modalities.spec.Reward``)."""

    kind = "programmatic"

    def __init__(self, modality: str, reward: Any):
        self.name, self.modality, self.description = reward.name, modality, reward.description
        self.dimensions = (reward.dimension,)
        module, _, attr = reward.score.partition(":")
        self._fn: Callable[[str, Sequence[bytes]], Sequence[float]] = getattr(importlib.import_module(module), attr)

    def score(self, prompt: str, media: Sequence[bytes]) -> dict[str, np.ndarray]:
        return {self.dimensions[0]: np.asarray(self._fn(prompt, list(media)), dtype=np.float64)}


class Similarity(RewardModel):
    """How well a candidate agrees with its prompt by a pretrained encoder the user has (``similarity:<hub id
    or folder>``): the cosine between the normalised embeddings of the candidate and of the prompt --
    CLIPScore with a CLIP model, PickScore with PickScore_v1 (a CLIP fine-tune on human picks; the same
    order as its logit-scaled score), the CLAP score with a CLAP model (text adherence for music, as
    MusicRL's MuLan score). Zero-shot: nothing is trained; the encoder must read the modality's media."""

    kind = "similarity"

    def __init__(self, modality: str, source: str, media_family: str, label: str, device: str | None = None):
        from modalities import encoders

        self.encoder = encoders.load(source, device)
        self.encoder.check_reads(media_family, label)
        self.name, self.modality, self.source = SIMILARITY_PREFIX + source, modality, source
        self.dimensions = ("prompt",)

    def score(self, prompt: str, media: Sequence[bytes]) -> dict[str, np.ndarray]:
        f = self.encoder.features([prompt] * len(media), media)  # [N, 3d]: media, text, their product
        d = f.shape[1] // 3
        return {"prompt": f[:, 2 * d:].sum(dim=1).double().numpy()}


class Ensemble(RewardModel):
    """Several reward models as one, on the dimensions they share: ``mean`` of their scores
    standardised over the candidates of the prompt (weighted by ``weights``), or ``win-share`` (RankDPO's phi: the share of
    (member, other candidate) comparisons a candidate wins, ties counting half)."""

    kind = "ensemble"

    def __init__(self, members: Sequence[RewardModel], how: str = "mean", weights: Sequence[float] | None = None):
        if how not in ENSEMBLES:
            raise ValueError(f"unknown ensemble {how!r}; use {' or '.join(ENSEMBLES)}")
        if len(members) < 2:
            raise ValueError("an ensemble needs two or more reward models")
        modalities = {m.modality for m in members}
        if len(modalities) > 1:
            raise ValueError(f"an ensemble's reward models must score one modality; got {sorted(modalities)}")
        shared = [d for d in members[0].dimensions if all(d in m.dimensions for m in members[1:])]
        w = [1.0] * len(members) if weights is None else [float(x) for x in weights]
        if len(w) != len(members) or any(not x > 0 for x in w):
            raise ValueError(f"an ensemble needs one positive weight per member, got {weights!r}")
        if how != "mean" and len(set(w)) > 1:
            raise ValueError("weights apply to the mean of standardised scores, not to the win share")
        self.members, self.how, self.modality, self.weights = list(members), how, members[0].modality, w
        self.dimensions = tuple(shared) or ("overall",)
        self.name = "+".join(("" if x == 1.0 else f"{x:g}*") + m.name for x, m in zip(w, members)) + \
            ("" if how == "mean" else f"[{how}]")

    def _member_scores(self, m: RewardModel, prompt: str, media: Sequence[bytes], dim: str) -> np.ndarray:
        scores = m.score(prompt, media)
        return scores[dim] if dim in scores else m.overall(prompt, media)

    def score(self, prompt: str, media: Sequence[bytes]) -> dict[str, np.ndarray]:
        out = {}
        for dim in self.dimensions:
            table = np.stack([self._member_scores(m, prompt, media, dim) for m in self.members])  # [M, N]
            if self.how == "mean":
                sd = table.std(axis=1, keepdims=True)
                z = (table - table.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1.0)
                out[dim] = np.average(z, axis=0, weights=self.weights)
            else:
                out[dim] = win_share(table)
        return out


def win_share(table: np.ndarray) -> np.ndarray:
    """[M members, N candidates] scores -> each candidate's share of wins over the others, over members."""
    M, N = table.shape
    if N < 2:
        return np.full(N, 0.5)
    diff = table[:, :, None] - table[:, None, :]  # [M, N, N]
    wins = (diff > 0).sum(axis=(0, 2)) + 0.5 * ((diff == 0).sum(axis=(0, 2)) - M)  # not against itself
    return wins / (M * (N - 1))


def programmatic(modality: str) -> dict[str, Programmatic]:
    """The programmatic rewards modality ``modality`` declares."""
    from modalities import registry

    return {r.name: Programmatic(modality, r) for r in registry.spec(modality).rewards}
