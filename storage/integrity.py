"""``db check``: find what is wrong with a store, and repair what is safe to.

Checks, in order:
1. ``PRAGMA integrity_check`` (the file itself). Repair: ``REINDEX`` (fixes
   damaged indexes; table damage is reported with the way out, never guessed at).
2. ``PRAGMA foreign_key_check`` (dangling references). Repair: optional links
   (a generation's adapter or run, a run's parent adapter, an adapter's run, a
   judgment's import) are set to NULL. A judgment item pointing at a missing
   generation is reported, not deleted: that is the user's data.
3. Media rows whose file is missing. Repair: when a file with the same content
   exists under another name (e.g. another extension), the row is pointed at it.
4. Media files whose bytes no longer match their hash (bit rot, edits).
   Reported only.
5. Leftover temporary files from interrupted writes, and media files that no
   row references (an interrupted add). Repair: removed when older than an hour
   (younger ones may belong to a write in progress in another process).
6. Runs marked running whose process is gone. Repair: marked failed.
"""
from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Literal

from .media import sha256_file
from .store import Store, now_iso

Severity = Literal["error", "warning"]
ORPHAN_MIN_AGE_S = 3600.0

# (table, column) pairs whose dangling values can be safely set to NULL.
_NULLABLE_LINKS = {
    ("generations", "adapter_id"),
    ("generations", "run_id"),
    ("runs", "parent_adapter_id"),
    ("adapters", "run_id"),
    ("judgments", "import_id"),
}


@dataclass
class Problem:
    check: str
    severity: Severity
    message: str
    repaired: bool = False


@dataclass
class CheckReport:
    database: str
    schema_version: int
    problems: list[Problem] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(not p.repaired for p in self.problems if p.severity == "error")

    def add(self, check: str, severity: Severity, message: str) -> Problem:
        p = Problem(check, severity, message)
        self.problems.append(p)
        return p


_RECOVER_HINT = (
    "stop Palate, keep a copy of the data directory, and recover with "
    "`sqlite3 palate.db .recover | sqlite3 recovered.db`"
)


def check_store(store: Store, *, repair: bool = False, verify_hashes: bool = True) -> CheckReport:
    report = CheckReport(str(store.path), store.schema_version())
    if not _check_sqlite(store, report, repair):
        return report  # the other checks would only trip over the damage
    _check_foreign_keys(store, report, repair)
    _check_media(store, report, repair, verify_hashes)
    _check_runs(store, report, repair)
    return report


def _pragma(store: Store, sql: str) -> list[tuple]:
    with store.read() as db:
        return db.execute(sql).fetchall()


def _check_sqlite(store: Store, report: CheckReport, repair: bool) -> bool:
    """False when the file is too damaged to check further."""
    try:
        rows = [r[0] for r in _pragma(store, "PRAGMA integrity_check")]
    except sqlite3.DatabaseError as e:
        report.add("integrity", "error", f"SQLite cannot read the database ({e}) -- {_RECOVER_HINT}")
        return False
    if rows == ["ok"]:
        return True
    problems = [report.add("integrity", "error", f"SQLite integrity_check: {r}") for r in rows]
    if repair:
        with store.write() as db:
            db.execute("REINDEX")
        after = [r[0] for r in _pragma(store, "PRAGMA integrity_check")]
        if after == ["ok"]:
            for p in problems:
                p.repaired = True
            report.repairs.append("rebuilt all indexes (REINDEX); integrity_check is now ok")
            return True
    problems[-1].message += " -- " + (
        "the damage is beyond an index rebuild; " if repair else "try --repair (rebuilds indexes); if that fails, "
    ) + _RECOVER_HINT
    return True


def _check_foreign_keys(store: Store, report: CheckReport, repair: bool) -> None:
    try:
        rows = _pragma(store, "PRAGMA foreign_key_check")
    except sqlite3.DatabaseError as e:
        report.add("references", "error", f"foreign_key_check failed: {e}")
        return
    for table, rowid, parent, fkid in rows:
        fk = _pragma(store, f"PRAGMA foreign_key_list({table})")
        col = next((r[3] for r in fk if r[0] == fkid), "?")
        found = store.query(f"SELECT {col} AS v FROM {table} WHERE rowid = ?", (rowid,))
        value = found[0]["v"] if found else None
        p = report.add(
            "references", "error", f"{table} row {rowid}: {col} = {value} points at a missing {parent} row"
        )
        if repair and (table, col) in _NULLABLE_LINKS:
            with store.write() as db:
                db.execute(f"UPDATE {table} SET {col} = NULL WHERE rowid = ?", (rowid,))
            p.repaired = True
            report.repairs.append(f"{table} row {rowid}: cleared dangling {col}")
        elif table == "judgment_items":
            p.message += f"; the judgment is unusable: delete it with `python -m app vote --delete {_jid(store, rowid)}`"


def _jid(store: Store, rowid: int) -> int | None:
    r = store.query("SELECT judgment_id FROM judgment_items WHERE rowid = ?", (rowid,))
    return r[0]["judgment_id"] if r else None


def _check_media(store: Store, report: CheckReport, repair: bool, verify_hashes: bool) -> None:
    media = store.media
    referenced = {}
    for r in store.query("SELECT sha256, path, size FROM media"):
        referenced[r["path"]] = r
    by_sha: dict[str, list[str]] = {}
    on_disk = list(media.iter_files())
    for rel in on_disk:
        by_sha.setdefault(os.path.basename(rel).split(".")[0], []).append(rel)

    repointed: dict[str, str] = {}
    for rel, r in referenced.items():
        path = media.abspath(rel)
        if not path.exists():
            users = store.query("SELECT COUNT(*) AS n FROM generations WHERE media_sha256 = ?", (r["sha256"],))[0]["n"]
            p = report.add(
                "media", "error", f"missing media file {rel} (sha256 {r['sha256'][:12]}…, used by {users} generation(s))"
            )
            alt = [a for a in by_sha.get(r["sha256"], []) if a != rel and sha256_file(media.abspath(a)) == r["sha256"]]
            if repair and alt:
                with store.write() as db:
                    db.execute("UPDATE media SET path = ? WHERE sha256 = ?", (alt[0], r["sha256"]))
                repointed[alt[0]] = r["sha256"]
                p.repaired = True
                report.repairs.append(f"media {r['sha256'][:12]}…: pointed at {alt[0]} (same content)")
            elif not alt:
                p.message += "; restore it from a backup or re-import the data it came from"
            continue
        if verify_hashes and sha256_file(path) != r["sha256"]:
            report.add("media", "error", f"media file {rel} no longer matches its sha256 (modified or corrupt)")

    now = time.time()
    known = set(referenced) | set(repointed)
    for rel in on_disk:
        if rel in known:
            continue
        path = media.abspath(rel)
        p = report.add("media", "warning", f"unreferenced media file {rel} (from an interrupted write?)")
        if repair and now - path.stat().st_mtime > ORPHAN_MIN_AGE_S:
            # Re-check under the write lock: another process may have referenced it
            # since the listing above (adding existing content refreshes its mtime).
            with store.write() as db:
                still_orphan = not db.execute("SELECT 1 FROM media WHERE path = ?", (rel,)).fetchone()
                fresh = time.time() - path.stat().st_mtime <= ORPHAN_MIN_AGE_S
                if still_orphan and not fresh:
                    path.unlink()
            if still_orphan and not fresh:
                p.repaired = True
                report.repairs.append(f"removed unreferenced {rel}")
    for tmp in media.iter_temp_files():
        p = report.add("media", "warning", f"leftover temporary file {tmp.name} from an interrupted write")
        if repair and now - tmp.stat().st_mtime > ORPHAN_MIN_AGE_S:
            tmp.unlink()
            p.repaired = True
            report.repairs.append(f"removed temporary {tmp.name}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_runs(store: Store, report: CheckReport, repair: bool) -> None:
    for run in store.list_runs(status="running"):
        if run.pid is not None and _pid_alive(run.pid):
            continue
        p = report.add("runs", "warning", f"run {run.id} is marked running but its process (pid {run.pid}) is gone")
        if repair:
            store.update_run(
                run.id, status="failed", error="the training process disappeared (found by db check)",
                finished_at=now_iso(),
            )
            p.repaired = True
            report.repairs.append(f"run {run.id}: marked failed")
