"""Schema migrations: ordered, named, transactional; old databases upgrade, newer ones are refused."""
from __future__ import annotations

import sqlite3

import pytest

from storage import SchemaMismatchError, SchemaTooNewError, Store
from storage.schema import MIGRATIONS, Migration
from tests.conftest import png_bytes


def _write_like_version_1(store) -> tuple[int, int, int]:
    """Rows as the version-1 code wrote them (raw SQL: today's API needs today's schema)."""
    from storage.media import MediaStore

    media = MediaStore(store.data_dir)
    ids = []
    with store.write() as db:
        db.execute("INSERT INTO prompts (id, text, created_at) VALUES (1, 'a red circle', 't')")
        db.execute("INSERT INTO annotators (id, kind, name, created_at) VALUES (1, 'human', 'you', 't')")
        for i, color in enumerate([(255, 0, 0), (0, 0, 255)]):
            m = media.put_bytes(png_bytes(color))
            db.execute("INSERT INTO media VALUES (?, ?, ?, ?, 't')", (m.sha256, m.relpath, m.mime, m.size))
            cur = db.execute(
                "INSERT INTO generations (prompt_id, modality, model, seed, params, media_sha256, created_at)"
                " VALUES (1, 'image', 'tiny', ?, '{}', ?, 't')", (i, m.sha256))
            ids.append(cur.lastrowid)
        cur = db.execute("INSERT INTO judgments (kind, prompt_id, annotator_id, choice, created_at)"
                         " VALUES ('pairwise', 1, 1, 'a', 't')")
        jid = cur.lastrowid
        db.execute("INSERT INTO judgment_items VALUES (?, 0, ?, NULL), (?, 1, ?, NULL)", (jid, ids[0], jid, ids[1]))
    return ids[0], ids[1], jid


def test_upgrade_from_first_schema_keeps_data(data_dir):
    with Store.open(data_dir, migrations=MIGRATIONS[:1]) as old:
        assert old.schema_version() == 1
        assert "imports" not in old.db.table_names()
        a, b, jid = _write_like_version_1(old)
    with Store.open(data_dir) as new:
        assert new.schema_version() == len(MIGRATIONS)
        assert new.applied_migrations() == [m.name for m in MIGRATIONS]
        assert new.get_judgment(jid).choice == "a"
        assert new.get_generation(a).prompt == "a red circle"
        assert "import_id" in new.db["judgments"].columns_dict
        (pair,) = new.preference_pairs(modality="image")  # uses the views added by 0003
        assert (pair.winner_id, pair.loser_id) == (a, b)
        new.vote(a, b, "b")  # and today's code writes to it
        from storage.integrity import check_store

        assert check_store(new).ok


def test_newer_database_is_refused_and_left_alone(data_dir):
    Store.open(data_dir).close()
    with sqlite3.connect(data_dir / "palate.db") as c:
        c.execute("INSERT INTO schema_migrations VALUES (?, 'from_the_future', 'later')", (len(MIGRATIONS) + 1,))
    with pytest.raises(SchemaTooNewError, match="newer Palate") as e:
        Store.open(data_dir)
    assert f"version {len(MIGRATIONS) + 1}" in str(e.value) and f"up to version {len(MIGRATIONS)}" in str(e.value)
    with sqlite3.connect(data_dir / "palate.db") as c:
        assert c.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0] == len(MIGRATIONS) + 1


def test_foreign_history_is_refused(data_dir):
    Store.open(data_dir, migrations=MIGRATIONS[:1]).close()
    with sqlite3.connect(data_dir / "palate.db") as c:
        c.execute("UPDATE schema_migrations SET name = 'something_else' WHERE version = 1")
    with pytest.raises(SchemaMismatchError, match="does not match"):
        Store.open(data_dir)


def test_failed_migration_rolls_back_entirely(data_dir):
    def broken(db):
        db.execute("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("migration bug")

    Store.open(data_dir, migrations=MIGRATIONS[:1]).close()
    with pytest.raises(RuntimeError, match="migration bug"):
        Store.open(data_dir, migrations=(*MIGRATIONS[:1], Migration("0002_broken", broken)))
    with Store.open(data_dir, migrations=MIGRATIONS[:1]) as s:
        assert s.schema_version() == 1
        assert "half_done" not in s.db.table_names()


def test_migration_names_are_unique_and_ordered():
    names = [m.name for m in MIGRATIONS]
    assert len(set(names)) == len(names)
    assert names == sorted(names)
    assert all(n[:4].isdigit() and int(n[:4]) == i for i, n in enumerate(names, start=1))


def test_0005_lets_any_modality_in_without_touching_rows(tmp_path):
    """Migration 0005 rewrites the modality CHECK in place (SQLite cannot alter one): rows stay,
    new modalities go in, a name that is not a lower-case identifier is still refused by SQLite."""
    import sqlite3

    from storage.schema import MIGRATIONS
    from tests.conftest import png_bytes

    with Store.open(tmp_path / "d", migrations=MIGRATIONS[:4]) as old:
        g = old.add_generation(prompt="p", modality="image", model="m", media=png_bytes((1, 2, 3)))
    with Store.open(tmp_path / "d") as s:
        assert s.schema_version() == len(MIGRATIONS)
        assert s.get_generation(g.id).modality == "image"
        assert s.query("PRAGMA integrity_check") == [{"integrity_check": "ok"}]
        assert s.add_generation(prompt="p", modality="toy", model="m", media=png_bytes((3, 2, 1))).modality == "toy"
        with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
            with s.write() as db:
                db.execute("INSERT INTO generations (prompt_id, modality, model, params, media_sha256, created_at)"
                           " VALUES (1, 'Not An Id', 'm', '{}', ?, 'x')", (g.media_sha256,))
