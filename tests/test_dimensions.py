"""Per-dimension judgments: a vote or ranking may say what it is about (overall, prompt, quality, style,
or a dimension a modality declares). Storage keeps it (migration 0007), the training views and runs read
one dimension at a time, exports keep it when asked and imports read it back, the app refuses a
dimension the modality does not declare, and a reward model learns one head per dimension."""
from __future__ import annotations

import sqlite3

import pyarrow.parquet as pq
import pytest
import torch

from app import services
from app.cli import main
from storage import InvalidJudgmentError, Store
from storage.exchange import export_dataset, import_dataset
from storage.schema import MIGRATIONS
from tests.conftest import add_images

IMAGE_DIMS = {"image": ("overall", "prompt", "quality", "style")}


def _judged(store):
    g = add_images(store, "a red circle", 3)
    a, b, c = (x.id for x in g)
    store.vote(a, b, "a")  # overall: a
    store.vote(a, b, "b", dimension="style")  # style: the other way
    store.rank([c, a], unranked=[b], dimension="quality")
    return a, b, c


def test_old_judgments_become_overall_and_new_ones_say_their_dimension(tmp_path):
    with Store.open(tmp_path / "d", migrations=MIGRATIONS[:6]) as old:
        g = add_images(old, "p", 2)
        with old.write() as db:  # as the version-6 code wrote it (today's vote() names the new column)
            db.execute("INSERT INTO annotators (kind, name, created_at) VALUES ('human', 'you', 't')")
            jid = db.execute("INSERT INTO judgments (kind, prompt_id, annotator_id, choice, created_at)"
                             " VALUES ('pairwise', ?, 1, 'a', 't')", (g[0].prompt_id,)).lastrowid
            db.execute("INSERT INTO judgment_items VALUES (?, 0, ?, NULL), (?, 1, ?, NULL)", (jid, g[0].id, jid, g[1].id))
    with Store.open(tmp_path / "d") as s:
        assert s.applied_migrations()[-1] == "0007_dimensions"
        assert s.get_judgment(jid).dimension == "overall"
        assert s.get_judgment(s.vote(g[0].id, g[1].id, "b", dimension="style")).dimension == "style"
        assert {r["dimension"] for r in s.query("SELECT dimension FROM pairwise_votes")} == {"overall", "style"}
        with pytest.raises(InvalidJudgmentError, match="not a dimension name"):
            s.vote(g[0].id, g[1].id, "a", dimension="Looks Good")
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):  # the schema itself refuses it too
            with s.write() as db:
                db.execute("UPDATE judgments SET dimension = 'Not An Id' WHERE id = ?", (jid,))


def test_training_views_read_one_dimension_at_a_time(store):
    a, b, c = _judged(store)
    (overall,) = store.preference_pairs(modality="image")
    assert (overall.winner_id, overall.loser_id) == (a, b)
    (style,) = store.preference_pairs(modality="image", dimension="style")
    assert (style.winner_id, style.loser_id) == (b, a)
    quality = store.preference_pairs(modality="image", dimension="quality")
    assert {(p.winner_id, p.loser_id) for p in quality} == {(c, a), (c, b), (a, b)}
    assert store.ranked_groups(modality="image") == []
    assert [g.generation_ids[0] for g in store.ranked_groups(modality="image", dimension="quality")] == [c]
    assert len(store.votes(modality="image", dimension=None)) == 2 + 3
    (row,) = store.stats(modality="image")
    assert row["judgments_by_dimension"] == {"overall": 1, "quality": 1, "style": 1}
    assert row["training_pairs"] == 1  # overall only


def test_a_run_trains_on_the_dimension_it_names(store):
    from alignment.config import TrainConfig
    from alignment.sources import build_examples
    from app.runs import create_run

    a, b, _ = _judged(store)
    cfg = TrainConfig(modality="image", method="diffusion-dpo", model="m", data_dir=str(store.data_dir),
                      dimension="style")
    assert [e["generation_ids"] for e in build_examples(store, cfg, None)] == [[b, a]]
    with pytest.raises(ValueError, match="dimension name"):
        TrainConfig(modality="image", method="diffusion-dpo", model="m", data_dir="d", dimension="Style!")
    with pytest.raises(ValueError, match="overall, prompt, quality, style; not 'motion'"):
        create_run(store, modality="image", method="diffusion-dpo", settings={"model": "m", "dimension": "motion"})


def test_the_app_refuses_a_dimension_the_modality_does_not_declare(store):
    g = add_images(store, "p", 2)
    with pytest.raises(ValueError, match="image judgments are about overall, prompt, quality, style; not 'motion'"):
        services.vote(store, g[0].id, g[1].id, "a", dimension="motion")
    jid = services.vote(store, g[0].id, g[1].id, "a", dimension="quality")
    assert store.get_judgment(jid).dimension == "quality"
    assert store.get_judgment(services.pick_best(store, [g[0].id, g[1].id], g[1].id, dimension="prompt")).dimension \
        == "prompt"


def test_per_dimension_votes_round_trip_through_export_and_import(store, tmp_path):
    _judged(store)
    plain = export_dataset(store, tmp_path / "overall.parquet")
    assert plain.rows == 1 and "dimension" not in pq.read_table(tmp_path / "overall.parquet").schema.names
    every = export_dataset(store, tmp_path / "all.parquet", dimension=None)
    assert every.rows == 1 + 1 + 3  # the ranking of three becomes its three pairs
    assert sorted(pq.read_table(tmp_path / "all.parquet").column("dimension").to_pylist()) == \
        ["overall", "quality", "quality", "quality", "style"]
    style = export_dataset(store, tmp_path / "style.parquet", dimension="style")
    assert style.rows == 1
    with Store.open(tmp_path / "other") as other:
        report = import_dataset(other, tmp_path / "all.parquet", dimensions=IMAGE_DIMS)
        assert report.judgments == 5
        assert other.stats()[0]["judgments_by_dimension"] == {"overall": 1, "quality": 3, "style": 1}
        (s,) = other.preference_pairs(modality="image", dimension="style")
        (o,) = other.preference_pairs(modality="image")
        assert (s.winner_id, s.loser_id) == (o.loser_id, o.winner_id)
        again = import_dataset(other, tmp_path / "all.parquet", dimensions=IMAGE_DIMS, force=True)
        assert again.judgments == 0 and again.skipped == {"already in the store": 5}
    with Store.open(tmp_path / "strict") as strict:
        with pytest.raises(ValueError, match="row 2: dimension 'style' is not one of image's \\(overall\\)"):
            import_dataset(strict, tmp_path / "all.parquet", dimensions={"image": ("overall",)})
        assert strict.query("SELECT COUNT(*) AS n FROM judgments")[0]["n"] == 0


def test_text_exports_keep_the_dimension_too(tmp_path):
    with Store.open(tmp_path / "d") as s:
        a = s.add_generation(prompt="2+2?", modality="text", model="m", media=b"4")
        b = s.add_generation(prompt="2+2?", modality="text", model="m", media=b"five")
        s.vote(a.id, b.id, "a", dimension="prompt")
        assert export_dataset(s, tmp_path / "o.jsonl", fmt="trl-jsonl").rows == 0
        assert export_dataset(s, tmp_path / "all.jsonl", fmt="trl-jsonl", dimension=None).rows == 1
    with Store.open(tmp_path / "e") as e:
        import_dataset(e, tmp_path / "all.jsonl")
        assert e.stats()[0]["judgments_by_dimension"] == {"prompt": 1}


def test_the_cli_votes_trains_and_exports_per_dimension(tmp_path, capsys):
    d = tmp_path / "data"
    with Store.open(d) as s:
        g = add_images(s, "p", 2)
    base = ["--data-dir", str(d)]
    assert main([*base, "vote", str(g[0].id), str(g[1].id), "--choice", "b", "--dimension", "style"]) == 0
    assert main([*base, "vote", str(g[0].id), str(g[1].id), "--choice", "a", "--dimension", "motion"]) != 0
    assert "not 'motion'" in capsys.readouterr().err
    assert main([*base, "export", "dataset", str(tmp_path / "x.parquet"), "--dimension", "all"]) == 0
    assert "wrote 1 rows" in capsys.readouterr().out
    with Store.open(d) as s:
        assert s.stats()[0]["judgments_by_dimension"] == {"style": 1}


class _Features:
    """An adapter whose reward features are fixed vectors per candidate (no model)."""

    model_name = "feat"
    score_kind = None

    def __init__(self, table):
        self.table = table

    def reward_features(self, prompts, media, *, noise_level, seed):
        return torch.stack([self.table[m] for m in media])


def test_a_reward_model_learns_one_head_per_dimension():
    from alignment.rewards.learned import HeadConfig, train_reward_model
    from storage.derive import Vote

    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(40, 6, generator=gen)
    media = {i: ("p", bytes([i])) for i in range(40)}
    table = {bytes([i]): feats[i] for i in range(40)}
    votes, dims = [], []
    pairs = [(i, j) for i in range(40) for j in range(i + 1, 40)]
    for n, (i, j) in enumerate(pairs[::7]):
        # overall follows feature 0, style the opposite of it: one shared head could not fit both
        votes.append(Vote(i, j, 1.0 if feats[i, 0] > feats[j, 0] else 0.0, n))
        dims.append("overall")
        votes.append(Vote(i, j, 0.0 if feats[i, 0] > feats[j, 0] else 1.0, 10_000 + n))
        dims.append("style")
    reward, m = train_reward_model(_Features(table), media, votes, name="two", modality="image", folds=4,
                                   cfg=HeadConfig(), vote_dimensions=dims)
    assert reward.dimensions == ("overall", "style")
    assert m["per_dimension"]["overall"]["heldout_accuracy"] > 0.85
    assert m["per_dimension"]["style"]["heldout_accuracy"] > 0.85
    scores = reward.score("p", [bytes([0]), bytes([1])])
    assert (scores["overall"][0] > scores["overall"][1]) == (scores["style"][0] < scores["style"][1])
    # the same votes read as one dimension contradict each other: no better than chance
    _, mixed = train_reward_model(_Features(table), media, votes, name="one", modality="image", folds=4)
    assert mixed["heldout_accuracy"] < 0.6
