"""`db check`: what it finds and what it repairs."""
from __future__ import annotations

import os
import sqlite3

from storage.integrity import check_store
from tests.conftest import add_images


def test_clean_store_is_ok(store):
    a, b = add_images(store, "p", 2)
    store.vote(a.id, b.id, "a")
    report = check_store(store)
    assert report.ok and report.problems == []


def test_missing_media_is_reported_with_users(store):
    a, b = add_images(store, "p", 2)
    os.unlink(store.media_file(a))
    report = check_store(store, repair=True)
    assert not report.ok
    (p,) = report.problems
    assert "missing media file" in p.message and "used by 1 generation" in p.message and not p.repaired


def test_missing_media_found_under_another_name_is_repaired(store):
    (a,) = add_images(store, "p", 1)
    path = store.media_file(a)
    os.rename(path, path.with_suffix(".bin"))
    report = check_store(store, repair=True)
    assert report.ok and report.repairs
    assert store.media_bytes(store.get_generation(a.id))  # readable again


def test_modified_media_is_reported(store):
    (a,) = add_images(store, "p", 1)
    store.media_file(a).write_bytes(b"tampered")
    report = check_store(store)
    assert not report.ok and "no longer matches its sha256" in report.problems[0].message
    assert check_store(store, verify_hashes=False).ok


def test_leftover_temp_files_are_removed_when_old(store):
    store.media.tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = store.media.tmp_dir / "abc.part"
    tmp.write_bytes(b"half")
    assert check_store(store).problems[0].severity == "warning"
    os.utime(tmp, (1_000_000_000, 1_000_000_000))
    check_store(store, repair=True)
    assert not tmp.exists()


def test_dangling_references(store):
    a, b = add_images(store, "p", 2)
    jid = store.vote(a.id, b.id, "a")
    store.conn.execute("PRAGMA foreign_keys = OFF")
    store.conn.execute("UPDATE generations SET adapter_id = 77 WHERE id = ?", (a.id,))
    store.conn.execute("UPDATE judgment_items SET generation_id = 555 WHERE judgment_id = ? AND position = 1", (jid,))
    store.conn.execute("PRAGMA foreign_keys = ON")
    report = check_store(store, repair=True)
    msgs = {p.message: p.repaired for p in report.problems}
    assert any("adapter_id = 77" in m and fixed for m, fixed in msgs.items())
    assert any("generation_id = 555" in m and not fixed and f"--delete {jid}" in m for m, fixed in msgs.items())
    assert store.get_generation(a.id).adapter_id is None
    assert not report.ok


def test_stale_running_run_is_marked_failed(store):
    run = store.create_run(modality="image", method="diffusion-dpo", base_model="m", config={})
    store.update_run(run.id, status="running", pid=2**22 + 12345)  # no such process
    alive = store.create_run(modality="image", method="diffusion-dpo", base_model="m", config={})
    store.update_run(alive.id, status="running", pid=os.getpid())
    report = check_store(store, repair=True)
    assert [p.message for p in report.problems] == [
        f"run {run.id} is marked running but its process (pid {2**22 + 12345}) is gone"
    ]
    assert store.get_run(run.id).status == "failed"
    assert store.get_run(alive.id).status == "running"


def test_corrupted_index_is_rebuilt(data_dir):
    """Damage an index's pages behind SQLite's back; REINDEX repairs it."""
    from storage import Store

    with Store.open(data_dir) as s:
        gens = add_images(s, "p", 30)
        for i in range(0, 28, 2):
            s.vote(gens[i].id, gens[i + 1].id, "a")
        s.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con = sqlite3.connect(data_dir / "palate.db")
    con.execute("PRAGMA writable_schema = ON")
    # swap the index's definition for a different column: its stored entries no longer match
    con.execute(
        "UPDATE sqlite_master SET sql = 'CREATE INDEX idx_generations_media ON generations(model)' "
        "WHERE name = 'idx_generations_media'"
    )
    con.commit()
    con.close()
    with Store.open(data_dir) as s:
        before = check_store(s)
        assert not before.ok and before.problems[0].check == "integrity"
        after = check_store(s, repair=True)
        assert after.ok and any("REINDEX" in r for r in after.repairs)
        assert check_store(s).ok
