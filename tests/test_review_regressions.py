"""Failure paths found in review: each test fails on the code before its fix."""
from __future__ import annotations

import json
import os
import sqlite3

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage import NotADatabaseError, Store
from storage.exchange import export_dataset, import_dataset
from storage.integrity import check_store
from tests.conftest import add_images, png_bytes, run_cli


def test_repair_keeps_the_file_it_repointed(store):
    (a,) = add_images(store, "p", 1)
    path = store.media_file(a)
    moved = path.with_suffix(".bin")
    os.rename(path, moved)
    os.utime(moved, (1_000_000_000, 1_000_000_000))  # older than the orphan threshold
    report = check_store(store, repair=True)
    assert report.ok
    assert moved.exists()
    assert check_store(store).ok


def test_failed_commit_does_not_leave_a_transaction_open(data_dir):
    with Store.open(data_dir) as s:
        a, b = add_images(s, "p", 2)
        with pytest.raises(sqlite3.IntegrityError):
            with s.write() as db:
                db.execute("PRAGMA defer_foreign_keys = ON")
                db.execute("UPDATE generations SET run_id = 999 WHERE id = ?", (a.id,))  # fails only at COMMIT
        assert not s.conn.in_transaction
        jid = s.vote(a.id, b.id, "a")
    with Store.open(data_dir) as s:
        assert s.get_judgment(jid).choice == "a"


def test_import_validates_every_row_before_writing(store, tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(250)]
    rows[-1]["annotator_kind"] = "robot"
    (tmp_path / "x.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(Exception, match="row 250: annotator_kind"):
        import_dataset(store, tmp_path / "x.jsonl")
    assert store.query("SELECT COUNT(*) AS n FROM judgments")[0]["n"] == 0
    img = png_bytes((1, 2, 3))
    t = pa.table({"caption": ["c"] * 3, "jpg_0": [img] * 3, "jpg_1": [png_bytes((3, 2, 1))] * 3,
                  "label_0": [1.0] * 3, "label_1": [0.0] * 3, "modality": ["image", "image", "smell"]})
    pq.write_table(t, tmp_path / "m.parquet")
    with pytest.raises(Exception, match="row 3: modality 'smell' is not one this app has"):
        import_dataset(store, tmp_path / "m.parquet", modalities={"image": "image/", "text": "text/"})
    assert store.query("SELECT COUNT(*) AS n FROM generations")[0]["n"] == 0


def test_reimport_without_timestamps_adds_nothing(store, tmp_path):
    (tmp_path / "t.jsonl").write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    assert import_dataset(store, tmp_path / "t.jsonl").judgments == 1
    assert import_dataset(store, tmp_path / "t.jsonl", force=True).judgments == 0
    # the same rows re-saved (other bytes, same name: rows without an annotator column are
    # attributed to "import:<file name>")
    (tmp_path / "resaved").mkdir()
    (tmp_path / "resaved" / "t.jsonl").write_text((tmp_path / "t.jsonl").read_text() + "\n")
    assert import_dataset(store, tmp_path / "resaved" / "t.jsonl").judgments == 0
    (label,) = store.soft_labels(modality="text", min_votes=1)
    assert label.n_votes == 1


def test_importing_an_export_into_its_own_store_adds_nothing(store, tmp_path):
    g = add_images(store, "p", 3)
    store.vote(g[0].id, g[1].id, "a")
    store.rank([g[2].id, g[0].id, g[1].id])
    before = store.soft_labels(modality="image", min_votes=1)
    export_dataset(store, tmp_path / "x.parquet")
    report = import_dataset(store, tmp_path / "x.parquet")
    assert report.judgments == 0 and report.skipped == {"already in the store": 4}
    assert store.soft_labels(modality="image", min_votes=1) == before


def test_all_tied_ranking_is_no_ranked_group(store):
    g = [x.id for x in add_images(store, "p", 3)]
    store.rank([g])  # the user says: all equal
    assert store.ranked_groups(modality="image") == []
    assert store.preference_pairs(modality="image") == []


def test_someone_elses_sqlite_file_is_left_alone(data_dir):
    data_dir.mkdir(parents=True)
    db = data_dir / "palate.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE notes (body TEXT)")
        c.execute("INSERT INTO notes VALUES ('keep me')")
    before = db.read_bytes()
    with pytest.raises(NotADatabaseError, match="something else.*notes"):
        Store.open(data_dir)
    assert db.read_bytes() == before  # not switched to WAL, no tables added


def test_damaged_database_gives_a_message_not_a_traceback(tmp_path):
    d = tmp_path / "d"
    with Store.open(d) as s:
        gens = add_images(s, "p", 40)
        for i in range(0, 38, 2):
            s.vote(gens[i].id, gens[i + 1].id, "a")
        s.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db = d / "palate.db"
    data = bytearray(db.read_bytes())
    page = 4096
    for off in range(2 * page, len(data), page):  # scribble over every page after the schema
        data[off + 8 : off + 200] = os.urandom(192)
    db.write_bytes(bytes(data))
    proc = run_cli("db", "check", data_dir=d)
    assert proc.returncode in (1, 2)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out
    assert ".recover" in out


def test_cli_add_is_all_or_nothing(tmp_path):
    d = tmp_path / "d"
    f = tmp_path / "a.png"
    f.write_bytes(png_bytes((1, 2, 3)))
    proc = run_cli("add", "--prompt", "p", "--modality", "image", "--model", "m", str(f), str(tmp_path / "nope.png"),
                   data_dir=d)
    assert proc.returncode == 2 and "nothing was added" in proc.stderr
    assert "no generations stored yet" in run_cli("list", data_dir=d).stdout


def test_cli_ranking_and_pair_arguments_do_not_mix(tmp_path):
    proc = run_cli("vote", "1", "2", "--ranking", "3", "4", data_dir=tmp_path / "d")
    assert proc.returncode == 2 and "do not combine" in proc.stderr
    proc = run_cli("import", __file__, "--ai", data_dir=tmp_path / "d")
    assert proc.returncode == 2 and "give --annotator too" in proc.stderr
