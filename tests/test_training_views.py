"""What training reads from the store: pairs, ranked groups, soft labels."""
from __future__ import annotations

import pytest

from tests.conftest import add_images


def test_ties_and_both_bad_are_kept_but_never_pairs(store):
    a, b, c, d = add_images(store, "p", 4)
    store.vote(a.id, b.id, "tie")
    store.vote(c.id, d.id, "both-bad")
    assert store.preference_pairs(modality="image") == []
    assert store.preference_pairs(modality="image", aggregate=False) == []
    assert store.query("SELECT COUNT(*) AS n FROM judgments")[0]["n"] == 2
    (s,) = store.stats()
    assert s["choices"] == {"a": 0, "b": 0, "tie": 1, "both-bad": 1}


def test_pairs_are_winner_first_with_labels(store):
    a, b = add_images(store, "p", 2)
    store.vote(b.id, a.id, "a")  # b shown first and chosen
    store.vote(a.id, b.id, "b")
    (p,) = store.preference_pairs(modality="image")
    assert (p.winner_id, p.loser_id, p.label, p.n_votes, p.prompt) == (b.id, a.id, 1.0, 2, "p")
    raw = store.preference_pairs(modality="image", aggregate=False)
    assert [(r.winner_id, r.loser_id) for r in raw] == [(b.id, a.id)] * 2


def test_rankings_give_pairs_by_derivation(store):
    g = [x.id for x in add_images(store, "p", 4)]
    store.rank([g[2], g[0], g[3], g[1]])
    all_pairs = {(p.winner_id, p.loser_id) for p in store.preference_pairs(modality="image")}
    assert all_pairs == {(g[2], g[0]), (g[2], g[3]), (g[2], g[1]), (g[0], g[3]), (g[0], g[1]), (g[3], g[1])}
    best = {(p.winner_id, p.loser_id) for p in store.preference_pairs(modality="image", derivation="best-vs-rest")}
    assert best == {(g[2], g[0]), (g[2], g[3]), (g[2], g[1])}
    with pytest.raises(ValueError, match="unknown derivation"):
        store.preference_pairs(modality="image", derivation="random")


def test_ranked_groups_best_first(store):
    g = [x.id for x in add_images(store, "p", 5)]
    jid = store.rank([g[3], [g[1], g[4]]], unranked=[g[0], g[2]])
    (grp,) = store.ranked_groups(modality="image")
    assert grp.judgment_id == jid
    assert grp.generation_ids == (g[3], g[1], g[4], g[0], g[2])
    assert grp.ranks == (1, 2, 2, None, None)
    assert store.ranked_groups(modality="image", min_size=6) == []


def test_filters_by_modality_and_model(store):
    a, b = add_images(store, "p", 2, model="model-a")
    c, d = add_images(store, "p", 2, model="model-b", offset=10)
    store.vote(a.id, b.id, "a")
    store.vote(c.id, d.id, "b")
    store.vote(a.id, c.id, "a")  # across models: a blind base-vs-tuned comparison
    assert [(p.winner_id, p.loser_id) for p in store.preference_pairs(modality="image", model="model-a")] == [(a.id, b.id)]
    assert [(p.winner_id, p.loser_id) for p in store.preference_pairs(modality="image", model="model-b")] == [(d.id, c.id)]
    assert len(store.preference_pairs(modality="image")) == 3
    assert store.preference_pairs(modality="text") == []


def test_contexts_filter(store):
    a, b = add_images(store, "p", 2)
    store.vote(a.id, b.id, "a", context="blind_compare")
    assert store.preference_pairs(modality="image", contexts=["collect"]) == []
    assert len(store.preference_pairs(modality="image", contexts=["blind_compare"])) == 1


def test_soft_labels_from_several_annotators(store):
    a, b, c = add_images(store, "p", 3)
    for who, choice in [("ann", "a"), ("bob", "a"), ("cy", "tie"), ("dee", "both-bad")]:
        store.vote(a.id, b.id, choice, annotator=who)
    store.vote(b.id, c.id, "a", strength=0.9, annotator="judge", annotator_kind="ai")
    labels = store.soft_labels(modality="image", min_votes=1)
    by_pair = {(s.a_id, s.b_id): s for s in labels}
    assert by_pair[(a.id, b.id)].p_a == pytest.approx((1 + 1 + 0.5) / 3)  # both-bad is not a vote
    assert by_pair[(a.id, b.id)].n_votes == 3
    assert by_pair[(b.id, c.id)].p_a == pytest.approx(0.9)
    assert [(s.a_id, s.b_id) for s in store.soft_labels(modality="image")] == [(a.id, b.id)]


def test_stats_agreement(store):
    a, b, c = add_images(store, "p", 3)
    store.vote(a.id, b.id, "a", annotator="x")
    store.vote(a.id, b.id, "a", annotator="y")
    store.vote(b.id, c.id, "a", annotator="x")
    store.vote(c.id, b.id, "a", annotator="y")  # disagreement
    (s,) = store.stats()
    assert s["pairs_judged_twice_or_more"] == 2
    assert s["agreement"] == pytest.approx(0.5)
    assert s["training_pairs"] == 1
