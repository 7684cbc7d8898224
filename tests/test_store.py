"""The storage API: generations, votes, rankings, runs, adapters, and bad input."""
from __future__ import annotations

import sqlite3
import threading

import pytest

from storage import (
    DataDirError,
    InvalidJudgmentError,
    NotADatabaseError,
    Store,
    UnknownIdError,
)
from storage.schema import MIGRATIONS
from tests.conftest import add_images, png_bytes


def test_open_creates_wal_database_with_foreign_keys(data_dir):
    with Store.open(data_dir) as s:
        assert s.path == data_dir / "palate.db"
        assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert s.conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 10_000
        assert s.schema_version() == len(MIGRATIONS)
        assert s.conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_generation_round_trip_and_content_addressing(store):
    data = png_bytes((255, 0, 0))
    g = store.add_generation(
        prompt="a red circle", modality="image", model="org/model", model_revision="abc123", media=data, seed=7,
        params={"steps": 20, "guidance": 7.5, "negative_prompt": "blurry"},
    )
    again = store.get_generation(g.id)
    assert again == g
    assert g.params == {"steps": 20, "guidance": 7.5, "negative_prompt": "blurry"}
    assert g.mime == "image/png" and g.media_path.endswith(".png")
    assert store.media_bytes(g) == data
    import hashlib

    assert g.media_sha256 == hashlib.sha256(data).hexdigest()
    assert g.media_sha256 in g.media_path
    # the same bytes again: one file, two generations
    g2 = store.add_generation(prompt="a red circle", modality="image", model="org/model", media=data, seed=8)
    assert g2.media_path == g.media_path and g2.id != g.id
    assert store.query("SELECT COUNT(*) AS n FROM media")[0]["n"] == 1
    assert g2.prompt_id == g.prompt_id


def test_add_generation_rejects_bad_input_and_records_nothing(store):
    with pytest.raises(ValueError, match="prompt is empty"):
        store.add_generation(prompt="  ", modality="image", model="m", media=b"x")
    with pytest.raises(ValueError, match="modality names are lower-case identifiers"):
        store.add_generation(prompt="p", modality="Smell!", model="m", media=b"x")
    with pytest.raises(UnknownIdError, match="adapter 5 does not exist"):
        store.add_generation(prompt="p", modality="image", model="m", media=png_bytes((1, 2, 3)), adapter_id=5)
    assert store.query("SELECT COUNT(*) AS n FROM generations")[0]["n"] == 0
    assert store.query("SELECT COUNT(*) AS n FROM prompts")[0]["n"] == 0


def test_any_registered_modality_stores_its_candidates(store):
    """The store keeps whatever modality it is given (the registry decides which exist): a new one
    needs no schema change, and a media family it declares is checked."""
    from storage import InvalidMediaError

    g = store.add_generation(prompt="p", modality="toy_world", model="m", media=b'{"x": 1}',
                             mime="application/json")
    assert store.get_generation(g.id).modality == "toy_world"
    with pytest.raises(InvalidMediaError, match="toy_world candidates must be image files"):
        store.add_generation(prompt="p", modality="toy_world", model="m", media=b"not an image",
                             media_family="image/")


def test_vote_validation(store):
    a, b = add_images(store, "p", 2)
    (c,) = add_images(store, "another prompt", 1, offset=10)
    with pytest.raises(UnknownIdError, match="unknown generation id 999"):
        store.vote(a.id, 999, "a")
    with pytest.raises(UnknownIdError, match="998, 999"):
        store.vote(998, 999, "a")
    with pytest.raises(InvalidJudgmentError, match="two different generations"):
        store.vote(a.id, a.id, "a")
    with pytest.raises(InvalidJudgmentError, match="share a prompt"):
        store.vote(a.id, c.id, "a")
    with pytest.raises(InvalidJudgmentError, match="unknown choice"):
        store.vote(a.id, b.id, "maybe")
    with pytest.raises(InvalidJudgmentError, match="contradicts"):
        store.vote(a.id, b.id, "a", strength=0.2)
    with pytest.raises(InvalidJudgmentError, match="contradicts"):
        store.vote(a.id, b.id, "both-bad", strength=0.5)
    with pytest.raises(InvalidJudgmentError, match=r"probability in \[0, 1\]"):
        store.vote(a.id, b.id, "a", strength=1.5)
    assert store.query("SELECT COUNT(*) AS n FROM judgments")[0]["n"] == 0


def test_votes_of_every_kind_are_stored(store):
    a, b = add_images(store, "p", 2)
    ids = [
        store.vote(a.id, b.id, "a"),
        store.vote(a.id, b.id, "b"),
        store.vote(a.id, b.id, "tie"),
        store.vote(a.id, b.id, "both-bad"),
        store.vote(a.id, b.id, "a", strength=0.75, annotator="judge-v1", annotator_kind="ai"),
    ]
    js = [store.get_judgment(i) for i in ids]
    assert [j.choice for j in js] == ["a", "b", "tie", "both_bad", "a"]
    assert js[4].strength == 0.75 and js[4].annotator == "judge-v1" and js[4].annotator_kind == "ai"
    assert all(j.generation_ids == (a.id, b.id) for j in js)


def test_repeat_votes_are_kept_and_counted(store):
    a, b = add_images(store, "p", 2)
    for choice in ("a", "a", "b"):
        store.vote(a.id, b.id, choice)
    (label,) = store.soft_labels(modality="image", min_votes=2)
    assert label.n_votes == 3 and label.p_a == pytest.approx(2 / 3)
    (pair,) = store.preference_pairs(modality="image")
    assert (pair.winner_id, pair.loser_id, pair.n_votes) == (a.id, b.id, 3)
    assert pair.label == pytest.approx(2 / 3)


def test_ranking_validation(store):
    gens = add_images(store, "p", 4)
    ids = [g.id for g in gens]
    with pytest.raises(InvalidJudgmentError, match="more than once"):
        store.rank([ids[0], ids[1], ids[0]])
    with pytest.raises(InvalidJudgmentError, match="more than once"):
        store.rank([ids[0], [ids[1], ids[0]]])
    with pytest.raises(InvalidJudgmentError, match="more than once"):
        store.rank([ids[0], ids[1]], unranked=[ids[1]])
    with pytest.raises(InvalidJudgmentError, match="at least two"):
        store.rank([ids[0]])
    with pytest.raises(InvalidJudgmentError, match="at least one ranked"):
        store.rank([], unranked=ids[:2])
    with pytest.raises(UnknownIdError):
        store.rank([ids[0], 12345])
    jid = store.rank([ids[2], [ids[0], ids[3]]], unranked=[ids[1]])
    j = store.get_judgment(jid)
    assert j.kind == "ranking"
    assert dict(zip(j.generation_ids, j.ranks)) == {ids[2]: 1, ids[0]: 2, ids[3]: 2, ids[1]: None}


def test_delete_and_undo(store):
    a, b = add_images(store, "p", 2)
    j1 = store.vote(a.id, b.id, "a")
    j2 = store.vote(a.id, b.id, "b", annotator="bob")
    assert store.last_judgment_id() == j2
    assert store.last_judgment_id(annotator="you") == j1
    store.delete_judgment(j1)
    with pytest.raises(UnknownIdError):
        store.get_judgment(j1)
    assert store.query("SELECT COUNT(*) AS n FROM judgment_items WHERE judgment_id = ?", (j1,))[0]["n"] == 0
    with pytest.raises(UnknownIdError, match="judgment 9999 does not exist"):
        store.delete_judgment(9999)
    assert store.get_generation(a.id)  # candidates stay


def test_runs_and_adapters(store):
    run = store.create_run(modality="image", method="diffusion-dpo", base_model="tiny", config={"steps": 10, "beta": 5000.0})
    assert run.status == "queued" and run.config == {"beta": 5000.0, "steps": 10}
    run = store.update_run(run.id, status="running", pid=1234, started_at="t0")
    assert (run.status, run.pid) == ("running", 1234)
    with pytest.raises(ValueError, match="status must be one of"):
        store.update_run(run.id, status="exploded")
    with pytest.raises(ValueError, match="cannot update run field"):
        store.update_run(run.id, modality="text")
    ad = store.add_adapter(name="mine", modality="image", base_model="tiny", path="adapters/mine", run_id=run.id,
                           method="diffusion-dpo", metadata={"rank": 8})
    assert store.get_adapter(ad.id).metadata == {"rank": 8}
    with pytest.raises(ValueError, match="already exists"):
        store.add_adapter(name="mine", modality="image", base_model="tiny", path="x")
    g = store.add_generation(prompt="p", modality="image", model="tiny", media=png_bytes((1, 1, 1)),
                             adapter_id=ad.id, run_id=run.id)
    store.delete_adapter(ad.id)
    assert store.get_generation(g.id).adapter_id is None
    assert store.list_adapters() == []
    assert [r.id for r in store.list_runs(status="running")] == [run.id]


def test_not_a_database_is_refused_untouched(data_dir):
    data_dir.mkdir(parents=True)
    db = data_dir / "palate.db"
    db.write_bytes(b"these are my tax records, not a database\n" * 10)
    before = db.read_bytes()
    with pytest.raises(NotADatabaseError, match="not an SQLite database"):
        Store.open(data_dir)
    assert db.read_bytes() == before
    assert not (data_dir / "palate.db-wal").exists()


def test_truncated_database_is_refused(data_dir):
    with Store.open(data_dir) as s:
        add_images(s, "p", 2)
    db = data_dir / "palate.db"
    for extra in ("palate.db-wal", "palate.db-shm"):
        (data_dir / extra).unlink(missing_ok=True)
    db.write_bytes(db.read_bytes()[:100] + b"\x00" * 50)
    with pytest.raises(NotADatabaseError, match="palate.db"):
        Store.open(data_dir)


def test_data_dir_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DataDirError, match="not a directory"):
        Store.open(f)


def test_read_only_data_dir_is_a_clear_error(readonly_dir):
    with pytest.raises(DataDirError, match="not writable|cannot create"):
        Store.open(readonly_dir / "sub")
    with pytest.raises(DataDirError, match="not writable"):
        Store.open(readonly_dir)


def test_threads_share_a_store(store):
    gens = add_images(store, "p", 2)
    errors = []

    def worker(n):
        try:
            for _ in range(20):
                store.vote(gens[0].id, gens[1].id, "a", annotator=f"t{n}")
        except Exception as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.query("SELECT COUNT(*) AS n FROM judgments")[0]["n"] == 80


def test_write_transaction_rolls_back_as_a_whole(store):
    (a,) = add_images(store, "p", 1)
    with pytest.raises(RuntimeError):
        with store.write() as db:
            db.execute("INSERT INTO prompts (text, created_at) VALUES ('x', 'now')")
            raise RuntimeError("boom")
    assert store.query("SELECT COUNT(*) AS n FROM prompts WHERE text = 'x'")[0]["n"] == 0
    with pytest.raises(sqlite3.IntegrityError):
        with store.write() as db:
            db.execute("INSERT INTO generations (prompt_id, modality, model, media_sha256, created_at)"
                       " VALUES (999, 'image', 'm', ?, 'now')", ("0" * 64,))
