"""Turning stored judgments into what training consumes. Pure functions.

Conventions (the same everywhere in Palate):
- winner first: a pair is ``(winner, loser)``;
- a *vote* is ``(x, y, p)`` with ``p`` the probability that ``x`` is preferred
  over ``y``: 1.0 for "x", 0.0 for "y", 0.5 for a tie, the annotator's
  strength when one was given. "Both bad" is not a vote about the order and is
  never turned into one (nor is a tie ever turned into a win);
- a ranking is a mapping ``generation id -> rank`` with 1 = best, equal ranks
  for ties and ``None`` for candidates shown but left unranked. Ranked
  candidates beat unranked ones; two unranked candidates say nothing about
  each other.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Literal, Mapping

Derivation = Literal["all", "best-vs-rest"]
DERIVATIONS: tuple[str, ...] = ("all", "best-vs-rest")
_TIE_EPS = 1e-9  # soft labels this close to 0.5 count as a tie


@dataclass(frozen=True)
class Vote:
    x: int
    y: int
    p: float  # probability that x is preferred over y
    judgment_id: int | None = None

    def oriented(self) -> "Vote":
        """The same vote with the smaller id first (p flipped accordingly)."""
        if self.x < self.y:
            return self
        return Vote(self.y, self.x, 1.0 - self.p, self.judgment_id)


def _check_derivation(derivation: str) -> None:
    if derivation not in DERIVATIONS:
        raise ValueError(f"unknown derivation {derivation!r}; use one of {', '.join(DERIVATIONS)}")


def ranking_to_pairs(ranks: Mapping[int, int | None], derivation: Derivation = "all") -> list[tuple[int, int]]:
    """Strict preferences implied by a (possibly partial, possibly tied) ranking.

    ``all``: every ordered pair whose ranks differ, ranked over unranked.
    ``best-vs-rest``: the best candidate(s) over every candidate ranked
    strictly worse or unranked (what a "pick the best of N" vote gives).
    Output order is deterministic: by winner's rank, then by id.
    """
    _check_derivation(derivation)
    ranked = sorted((r, g) for g, r in ranks.items() if r is not None)
    unranked = sorted(g for g, r in ranks.items() if r is None)
    if not ranked:
        return []
    pairs: list[tuple[int, int]] = []
    if derivation == "all":
        for i, (ri, gi) in enumerate(ranked):
            for rj, gj in ranked[i + 1 :]:
                if ri < rj:
                    pairs.append((gi, gj))
            pairs.extend((gi, u) for u in unranked)
    else:
        best_rank = ranked[0][0]
        best = [g for r, g in ranked if r == best_rank]
        rest = [g for r, g in ranked if r != best_rank] + unranked
        pairs = [(b, o) for b in best for o in rest]
    return pairs


def ranking_to_votes(
    ranks: Mapping[int, int | None], derivation: Derivation = "all", judgment_id: int | None = None
) -> list[Vote]:
    """Votes implied by a ranking: the strict pairs of ``ranking_to_pairs``,
    plus (for ``all``) a 0.5 vote for each pair the user ranked equal."""
    votes = [Vote(w, l, 1.0, judgment_id) for w, l in ranking_to_pairs(ranks, derivation)]
    if derivation == "all":
        ranked = sorted((r, g) for g, r in ranks.items() if r is not None)
        for i, (ri, gi) in enumerate(ranked):
            for rj, gj in ranked[i + 1 :]:
                if ri == rj:
                    votes.append(Vote(gi, gj, 0.5, judgment_id))
    return votes


def pairwise_vote(a: int, b: int, choice: str, strength: float | None, judgment_id: int | None = None) -> Vote | None:
    """The vote a pairwise judgment casts, or None for "both bad"."""
    if choice == "both_bad":
        return None
    if strength is not None:
        return Vote(a, b, float(strength), judgment_id)
    p = {"a": 1.0, "b": 0.0, "tie": 0.5}.get(choice)
    if p is None:
        raise ValueError(f"unknown choice {choice!r}")
    return Vote(a, b, p, judgment_id)


@dataclass(frozen=True)
class AggregatedPair:
    """All votes cast on one unordered pair ``{x, y}`` with ``x < y``."""

    x: int
    y: int
    p_x: float  # mean probability that x is preferred
    n_votes: int
    judgment_ids: tuple[int, ...]


def aggregate_votes(votes: Iterable[Vote]) -> list[AggregatedPair]:
    """Group votes by unordered pair; the soft label is the mean of ``p``."""
    groups: dict[tuple[int, int], list[Vote]] = defaultdict(list)
    for v in votes:
        if v.x == v.y:
            raise ValueError(f"a vote compares generation {v.x} with itself")
        o = v.oriented()
        groups[(o.x, o.y)].append(o)
    out = []
    for (x, y), vs in sorted(groups.items()):
        ids = tuple(sorted({v.judgment_id for v in vs if v.judgment_id is not None}))
        out.append(AggregatedPair(x, y, sum(v.p for v in vs) / len(vs), len(vs), ids))
    return out


def decisive_pairs(aggregated: Iterable[AggregatedPair]) -> list[tuple[int, int, float, int]]:
    """``(winner, loser, share of votes for the winner, n_votes)`` for every
    pair whose votes lean one way; pairs at exactly 0.5 (ties, or a split
    vote) are left out."""
    out = []
    for a in aggregated:
        if abs(a.p_x - 0.5) <= _TIE_EPS:
            continue
        if a.p_x > 0.5:
            out.append((a.x, a.y, a.p_x, a.n_votes))
        else:
            out.append((a.y, a.x, 1.0 - a.p_x, a.n_votes))
    return out
