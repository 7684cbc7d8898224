"""Ranking-to-pairs derivation and vote aggregation: closed cases and properties."""
from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.derive import (
    Vote,
    aggregate_votes,
    decisive_pairs,
    pairwise_vote,
    ranking_to_pairs,
    ranking_to_votes,
)


@st.composite
def rankings(draw):
    """{generation id: rank or None} with ties and unranked candidates."""
    ids = draw(st.lists(st.integers(1, 10_000), min_size=2, max_size=9, unique=True))
    ranks = {g: draw(st.one_of(st.none(), st.integers(1, 5))) for g in ids}
    return ranks


def test_full_ranking_all_pairs():
    assert ranking_to_pairs({3: 1, 1: 2, 2: 3}) == [(3, 1), (3, 2), (1, 2)]
    assert ranking_to_pairs({3: 1, 1: 2, 2: 3}, "best-vs-rest") == [(3, 1), (3, 2)]


def test_partial_and_tied_ranking():
    ranks = {10: 1, 11: 2, 12: 2, 13: None, 14: None}
    assert ranking_to_pairs(ranks) == [(10, 11), (10, 12), (10, 13), (10, 14), (11, 13), (11, 14), (12, 13), (12, 14)]
    assert ranking_to_pairs(ranks, "best-vs-rest") == [(10, 11), (10, 12), (10, 13), (10, 14)]
    votes = ranking_to_votes(ranks)
    assert Vote(11, 12, 0.5, None) in votes  # the tie is a half vote, never a win
    assert ranking_to_pairs({1: None, 2: None}) == []


def test_unknown_derivation():
    with pytest.raises(ValueError, match="unknown derivation"):
        ranking_to_pairs({1: 1, 2: 2}, "every-other")


@given(rankings())
def test_all_pairs_agree_with_ranks(ranks):
    pairs = ranking_to_pairs(ranks)
    assert len(pairs) == len(set(pairs))
    for w, l in pairs:
        assert ranks[w] is not None, "an unranked candidate never wins"
        assert ranks[l] is None or ranks[w] < ranks[l], "winner ranked strictly better"
    # and every strictly ordered pair is there
    expected = {
        (a, b)
        for a, b in itertools.permutations(ranks, 2)
        if ranks[a] is not None and (ranks[b] is None or ranks[a] < ranks[b])
    }
    assert set(pairs) == expected


@given(rankings())
def test_best_vs_rest_is_the_best_rows_of_all_pairs(ranks):
    best = ranking_to_pairs(ranks, "best-vs-rest")
    allp = ranking_to_pairs(ranks, "all")
    assert set(best) <= set(allp)
    ranked = [r for r in ranks.values() if r is not None]
    if ranked:
        top = min(ranked)
        assert {w for w, _ in best} <= {g for g, r in ranks.items() if r == top}
        assert {l for _, l in best} == {g for g, r in ranks.items() if r != top}


@given(rankings())
def test_pairs_are_acyclic(ranks):
    pairs = ranking_to_pairs(ranks)
    assert not any((l, w) in set(pairs) for w, l in pairs)


@given(rankings(), st.permutations(list(range(9))))
def test_derivation_does_not_depend_on_input_order(ranks, perm):
    items = list(ranks.items())
    shuffled = dict(items[i] for i in perm if i < len(items))
    assert ranking_to_pairs(shuffled) == ranking_to_pairs(ranks)


@given(rankings())
def test_relabelling_ids_relabels_pairs(ranks):
    mapping = {g: 100_000 + g * 3 for g in ranks}
    relabelled = {mapping[g]: r for g, r in ranks.items()}
    assert {(mapping[w], mapping[l]) for w, l in ranking_to_pairs(ranks)} == set(ranking_to_pairs(relabelled))


def test_pairwise_vote_semantics():
    assert pairwise_vote(1, 2, "a", None) == Vote(1, 2, 1.0)
    assert pairwise_vote(1, 2, "b", None) == Vote(1, 2, 0.0)
    assert pairwise_vote(1, 2, "tie", None) == Vote(1, 2, 0.5)
    assert pairwise_vote(1, 2, "both_bad", None) is None
    assert pairwise_vote(1, 2, "a", 0.8) == Vote(1, 2, 0.8)


@given(st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6), st.sampled_from([0.0, 0.25, 0.5, 1.0])), max_size=30))
def test_aggregation_is_orientation_free(raw):
    votes = [Vote(x, y, p) for x, y, p in raw if x != y]
    flipped = [Vote(v.y, v.x, 1.0 - v.p) for v in votes]
    a1, a2 = aggregate_votes(votes), aggregate_votes(flipped)
    assert [(a.x, a.y, a.n_votes) for a in a1] == [(a.x, a.y, a.n_votes) for a in a2]
    for x, y in zip(a1, a2):
        assert x.p_x == pytest.approx(y.p_x)
    assert sum(a.n_votes for a in a1) == len(votes)
    for w, l, share, n in decisive_pairs(a1):
        assert share > 0.5 and n >= 1 and w != l


def test_split_votes_and_ties_make_no_pair():
    agg = aggregate_votes([Vote(1, 2, 1.0), Vote(2, 1, 1.0), Vote(3, 4, 0.5), Vote(5, 6, 0.3), Vote(5, 6, 0.7)])
    assert decisive_pairs(agg) == []


@settings(max_examples=50)
@given(rankings())
def test_ranking_votes_aggregate_back_to_the_ranking(ranks):
    pairs = decisive_pairs(aggregate_votes(ranking_to_votes(ranks)))
    assert {(w, l) for w, l, _, _ in pairs} == set(ranking_to_pairs(ranks))
