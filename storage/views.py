"""Training views: votes, pairs, soft labels and rankings derived from the judgments, and counts.

A mixin of :class:`storage.Store` (``store.preference_pairs(...)`` and so on)."""
from __future__ import annotations

from typing import Any, Iterator, Sequence

from . import derive
from .browse import COMPARE_CONTEXT
from .records import (
    DEFAULT_DIMENSION,
    PreferencePair,
    RankedGroup,
    SoftLabel,
    check_dimension,
    check_modality as _check_modality,
    sql_filters as _filters,
)
from .schema import CHOICES


class TrainingViewsMixin:
    """What the trainer reads: votes from pairwise judgments and rankings, pairs, soft labels, ranked
    groups; and the counts of ``stats``."""

    # -- training views ----------------------------------------------------
    def votes(
        self,
        *,
        modality: str,
        model: str | None = None,
        derivation: derive.Derivation = "all",
        contexts: Sequence[str] | None = None,
        dimension: str | None = DEFAULT_DIMENSION,
    ) -> list[derive.Vote]:
        """Every vote on a pair of candidates of ``modality`` (and ``model``),
        from pairwise judgments and derived from rankings, about ``dimension``
        (None: every dimension)."""
        _check_modality(modality)
        derive._check_derivation(derivation)
        with self.read():
            return self._votes(modality, model, derivation, contexts, dimension)

    def _votes(
        self, modality: str, model: str | None, derivation: derive.Derivation, contexts: Sequence[str] | None,
        dimension: str | None = DEFAULT_DIMENSION,
    ) -> list[derive.Vote]:
        gen_ok = self._eligible_generations(modality, model)
        ctx_sql, ctx_params = _context_filter(contexts, dimension)
        out: list[derive.Vote] = []
        for r in self.query(
            "SELECT judgment_id, generation_a, generation_b, choice, strength FROM pairwise_votes j"
            f" WHERE 1=1{ctx_sql} ORDER BY judgment_id",
            ctx_params,
        ):
            if r["generation_a"] in gen_ok and r["generation_b"] in gen_ok:
                v = derive.pairwise_vote(
                    r["generation_a"], r["generation_b"], r["choice"], r["strength"], r["judgment_id"]
                )
                if v is not None:
                    out.append(v)
        for jid, ranks in self._rankings(ctx_sql, ctx_params):
            ranks = {g: r for g, r in ranks.items() if g in gen_ok}
            out.extend(derive.ranking_to_votes(ranks, derivation, jid))
        return out

    def preference_pairs(
        self,
        *,
        modality: str,
        model: str | None = None,
        derivation: derive.Derivation = "all",
        aggregate: bool = True,
        contexts: Sequence[str] | None = None,
        dimension: str | None = DEFAULT_DIMENSION,
    ) -> list[PreferencePair]:
        """Training pairs (winner first) for a modality and model.

        ``aggregate=True`` (default): one pair per pair of candidates, oriented
        by the majority of its votes, with ``label`` the winner's share; pairs
        whose votes balance out (ties, split votes) are left out.
        ``aggregate=False``: one pair per decisive vote, repeats included.
        Ties and both-bad judgments never become pairs; they stay in the store.
        Only judgments about ``dimension`` count (None: every dimension).
        """
        with self.read():
            votes = self.votes(modality=modality, model=model, derivation=derivation, contexts=contexts,
                               dimension=dimension)
            return self._pairs(votes, aggregate)

    def _pairs(self, votes: list[derive.Vote], aggregate: bool) -> list[PreferencePair]:
        if aggregate:
            rows = [
                (w, l, share, n, a.judgment_ids)
                for a in derive.aggregate_votes(votes)
                for (w, l, share, n) in derive.decisive_pairs([a])
            ]
        else:
            rows = []
            for v in votes:
                if abs(v.p - 0.5) <= derive._TIE_EPS:
                    continue
                w, l, share = (v.x, v.y, v.p) if v.p > 0.5 else (v.y, v.x, 1.0 - v.p)
                rows.append((w, l, share, 1, (v.judgment_id,) if v.judgment_id is not None else ()))
        prompts = self._prompts_of([w for w, *_ in rows])
        return [
            PreferencePair(prompts[w][0], prompts[w][1], w, l, share, n, ids) for (w, l, share, n, ids) in rows
        ]

    def soft_labels(
        self,
        *,
        modality: str,
        model: str | None = None,
        min_votes: int = 2,
        derivation: derive.Derivation = "all",
        contexts: Sequence[str] | None = None,
        dimension: str | None = DEFAULT_DIMENSION,
    ) -> list[SoftLabel]:
        """Pairs judged at least ``min_votes`` times, with the share of votes
        for the smaller id (ties count half; both-bad is not a vote)."""
        with self.read():
            votes = self.votes(modality=modality, model=model, derivation=derivation, contexts=contexts,
                               dimension=dimension)
            agg = [a for a in derive.aggregate_votes(votes) if a.n_votes >= min_votes]
            prompts = self._prompts_of([a.x for a in agg])
        return [SoftLabel(prompts[a.x][0], prompts[a.x][1], a.x, a.y, a.p_x, a.n_votes, a.judgment_ids) for a in agg]

    def ranked_groups(
        self,
        *,
        modality: str,
        model: str | None = None,
        min_size: int = 2,
        contexts: Sequence[str] | None = None,
        dimension: str | None = DEFAULT_DIMENSION,
    ) -> list[RankedGroup]:
        """Rankings of K >= ``min_size`` candidates, best first, for listwise losses (those about
        ``dimension``; None: every dimension)."""
        _check_modality(modality)
        with self.read():
            return self._ranked_groups(modality, model, min_size, contexts, dimension)

    def _ranked_groups(
        self, modality: str, model: str | None, min_size: int, contexts: Sequence[str] | None,
        dimension: str | None = DEFAULT_DIMENSION,
    ) -> list[RankedGroup]:
        gen_ok = self._eligible_generations(modality, model)
        ctx_sql, ctx_params = _context_filter(contexts, dimension)
        groups = []
        for jid, ranks in self._rankings(ctx_sql, ctx_params):
            ranks = {g: r for g, r in ranks.items() if g in gen_ok}
            if len(ranks) < min_size or len(set(ranks.values())) < 2 or all(r is None for r in ranks.values()):
                continue  # an all-tied ranking has no winner to put first
            order = sorted(ranks, key=lambda g: (ranks[g] is None, ranks[g] or 0, g))
            groups.append((jid, tuple(order), tuple(ranks[g] for g in order)))
        prompts = self._prompts_of([g[1][0] for g in groups])
        return [RankedGroup(jid, prompts[ids[0]][0], prompts[ids[0]][1], ids, rk) for jid, ids, rk in groups]

    def _rankings(self, ctx_sql: str, ctx_params: list[Any]) -> Iterator[tuple[int, dict[int, int | None]]]:
        """``(judgment id, {generation id: rank})`` for every ranking."""
        current, ranks = None, {}
        for r in self.query(
            "SELECT i.judgment_id, i.generation_id, i.rank FROM judgment_items i"
            f" JOIN judgments j ON j.id = i.judgment_id WHERE j.kind = 'ranking'{ctx_sql}"
            " ORDER BY i.judgment_id, i.position",
            ctx_params,
        ):
            if r["judgment_id"] != current:
                if current is not None:
                    yield current, ranks
                current, ranks = r["judgment_id"], {}
            ranks[r["generation_id"]] = r["rank"]
        if current is not None:
            yield current, ranks

    def _eligible_generations(self, modality: str, model: str | None) -> set[int]:
        where, params = _filters(modality=modality, model=model, alias="g")
        return {r["id"] for r in self.query("SELECT g.id FROM generations g" + where, params)}

    def _prompts_of(self, generation_ids: Sequence[int]) -> dict[int, tuple[int, str]]:
        if not generation_ids:
            return {}
        ids = sorted(set(generation_ids))
        out = {}
        for chunk_start in range(0, len(ids), 500):
            chunk = ids[chunk_start : chunk_start + 500]
            for r in self.query(
                "SELECT g.id, g.prompt_id, p.text FROM generations g JOIN prompts p ON p.id = g.prompt_id"
                f" WHERE g.id IN ({','.join('?' * len(chunk))})",
                chunk,
            ):
                out[r["id"]] = (r["prompt_id"], r["text"])
        return out

    # -- stats -------------------------------------------------------------
    def stats(self, *, modality: str | None = None, model: str | None = None) -> list[dict[str, Any]]:
        """Counts per (modality, model): prompts, generations, judgments by
        kind, choice and dimension, derived training pairs (overall), and agreement on
        pairs judged more than once (overall)."""
        with self.read():
            return self._stats(modality, model)

    def _stats(self, modality: str | None, model: str | None) -> list[dict[str, Any]]:
        where, params = _filters(modality=modality, model=model, alias="g")
        groups = self.query(
            "SELECT g.modality, g.model, COUNT(*) AS generations, COUNT(DISTINCT g.prompt_id) AS prompts"
            f" FROM generations g{where} GROUP BY g.modality, g.model ORDER BY g.modality, g.model",
            params,
        )
        out = []
        for grp in groups:
            gen_ok = self._eligible_generations(grp["modality"], grp["model"])
            choices = {c: 0 for c in CHOICES}
            by_dimension: dict[str, int] = {}
            for r in self.query("SELECT generation_a, generation_b, choice, dimension FROM pairwise_votes"
                                " WHERE context != ?", (COMPARE_CONTEXT,)):
                if r["generation_a"] in gen_ok and r["generation_b"] in gen_ok:
                    choices[r["choice"]] += 1
                    by_dimension[r["dimension"]] = by_dimension.get(r["dimension"], 0) + 1
            ranking_dimension = {r["id"]: r["dimension"]
                                 for r in self.query("SELECT id, dimension FROM judgments WHERE kind = 'ranking'")}
            rankings = 0
            for jid, ranks in self._rankings("", []):
                if sum(1 for g in ranks if g in gen_ok) >= 2:
                    rankings += 1
                    by_dimension[ranking_dimension[jid]] = by_dimension.get(ranking_dimension[jid], 0) + 1
            votes = self.votes(modality=grp["modality"], model=grp["model"])
            agg = derive.aggregate_votes(votes)
            repeated = [a for a in agg if a.n_votes >= 2]
            agree = _agreement([v for v in votes], {(a.x, a.y) for a in repeated})
            pairs = derive.decisive_pairs(agg)
            out.append(
                {
                    "modality": grp["modality"],
                    "model": grp["model"],
                    "prompts": grp["prompts"],
                    "generations": grp["generations"],
                    "pairwise_votes": sum(choices.values()),
                    "choices": {k.replace("_", "-"): v for k, v in choices.items()},
                    "rankings": rankings,
                    "judgments_by_dimension": dict(sorted(by_dimension.items())),
                    "training_pairs": len(pairs),
                    "pairs_judged_twice_or_more": len(repeated),
                    "agreement": agree,
                }
            )
        return out



def _context_filter(contexts: Sequence[str] | None, dimension: str | None = None) -> tuple[str, list[Any]]:
    """SQL restricting judgments (aliased ``j``) to the given contexts and dimension. Contexts None:
    every context but the blind comparisons of base and tuned models (``compare``), which are
    evaluations, never training data. Dimension None: every dimension."""
    if contexts is None:
        sql, params = " AND j.context != ?", [COMPARE_CONTEXT]
    else:
        sql, params = f" AND j.context IN ({','.join('?' * len(contexts))})", list(contexts)
    if dimension is not None:
        sql += " AND j.dimension = ?"
        params.append(check_dimension(dimension))
    return sql, params


def _agreement(votes: Sequence[derive.Vote], repeated: set[tuple[int, int]]) -> float | None:
    """Share of vote pairs on the same candidates that agree (both prefer the
    same side, or both tie), over every pair judged twice or more."""
    by_pair: dict[tuple[int, int], list[float]] = {}
    for v in votes:
        o = v.oriented()
        if (o.x, o.y) in repeated:
            by_pair.setdefault((o.x, o.y), []).append(o.p)
    agree = total = 0
    for ps in by_pair.values():
        sides = [0 if abs(p - 0.5) <= derive._TIE_EPS else (1 if p > 0.5 else -1) for p in ps]
        for i in range(len(sides)):
            for j in range(i + 1, len(sides)):
                total += 1
                agree += sides[i] == sides[j]
    return None if total == 0 else agree / total
