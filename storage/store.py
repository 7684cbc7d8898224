"""The preference store: one SQLite database plus content-addressed media.

Open it with ``Store.open(data_dir)``. The database is ``<data dir>/palate.db``
in WAL mode with foreign keys on and a busy timeout, so the app, a training
process and scripts can write at the same time: every write runs in a
``BEGIN IMMEDIATE`` transaction (it takes the write lock up front and waits for
it, instead of failing halfway with "database is locked").

Repeat votes: voting on the same pair (or ranking the same candidates) again
is allowed and stored as another judgment. Repeat votes are how several people
(or a noisy AI judge asked several times) express a soft preference: every
vote counts in the soft labels and in the majority that decides a training
pair. To take a vote back, delete the judgment (``delete_judgment``).
"""
from __future__ import annotations

import contextlib
from collections import Counter
import json
import os
import sqlite3
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import sqlite_utils

from . import derive
from .browse import COMPARE_CONTEXT, BrowseMixin
from .errors import (
    DataDirError,
    InvalidJudgmentError,
    MediaWriteError,
    NotADatabaseError,
    SchemaMismatchError,
    SchemaTooNewError,
    StoreError,
    UnknownIdError,
    sqlite_write_failure,
)
from .media import MediaStore, StoredMedia, check_media
from .paths import DB_FILENAME, ensure_writable_dir, resolve_data_dir
from .schema import ANNOTATOR_KINDS, CHOICES, MIGRATIONS, MODALITIES, RUN_STATUSES, Migration

BUSY_TIMEOUT_S = 60.0
CHOICE_ALIASES = {"a": "a", "b": "b", "tie": "tie", "both_bad": "both_bad", "both-bad": "both_bad", "bad": "both_bad"}


_OPEN_PATHS: "Counter[str]" = Counter()  # databases this process has open (see Store.open)
_OPEN_LOCK = threading.Lock()
WRITER_LOCK = ".palate-writers.lock"


class _WriterGate:
    """Writers queue here, in the kernel, before SQLite's own lock: an ``flock`` on a file beside the
    database, one per data directory per process, re-entrant per thread.

    SQLite alone is not fair: a writer that finds the database locked sleeps in its busy handler
    (1 ms, 2 ms, ... up to 100 ms) and retries, so a process that commits in a tight loop (an import,
    an API client) takes the lock again while the others sleep -- measured: one writer of four got 62%
    of the commits, and a user's vote waited up to 106 ms behind an import. A writer blocked in
    ``flock`` is woken the moment the lock is released instead. Readers never take it (WAL readers do
    not block writers). The lock dies with its process, however it ends."""

    _gates: dict[str, "_WriterGate"] = {}
    _gates_lock = threading.Lock()

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.RLock()
        self.depth = 0
        self.fd: int | None = None

    @classmethod
    def of(cls, data_dir: Path) -> "_WriterGate":
        key = str(Path(data_dir).resolve())
        with cls._gates_lock:
            if key not in cls._gates:
                cls._gates[key] = cls(Path(key) / WRITER_LOCK)
            return cls._gates[key]

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: SQLite's own locking only
            yield
            return
        with self.lock:
            if self.depth == 0:
                if self.fd is None or self._pid != os.getpid():  # a forked child needs its own descriptor
                    self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                    self._pid = os.getpid()
                fcntl.flock(self.fd, fcntl.LOCK_EX)
            self.depth += 1
            try:
                yield
            finally:
                self.depth -= 1
                if self.depth == 0:
                    fcntl.flock(self.fd, fcntl.LOCK_UN)

    _pid = -1


_DECODE_LIMIT = 256 * 1024 * 1024  # media files up to this size are decoded before they are stored


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _dumps(obj: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(obj or {}), sort_keys=True, separators=(",", ":"), default=str)


# ---------------------------------------------------------------------------
# Row types
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Generation:
    id: int
    prompt_id: int
    prompt: str
    modality: str
    model: str
    model_revision: str | None
    adapter_id: int | None
    seed: int | None
    params: dict[str, Any]
    media_sha256: str
    media_path: str  # relative to the data directory
    mime: str
    cache_path: str | None
    run_id: int | None
    created_at: str


@dataclass(frozen=True)
class Judgment:
    id: int
    kind: str  # "pairwise" | "ranking"
    prompt_id: int
    annotator: str
    annotator_kind: str
    choice: str | None
    strength: float | None
    context: str
    created_at: str
    generation_ids: tuple[int, ...]  # by position (A, B for pairwise)
    ranks: tuple[int | None, ...]  # by position; rankings only


@dataclass(frozen=True)
class PreferencePair:
    """One training pair, winner first."""

    prompt_id: int
    prompt: str
    winner_id: int
    loser_id: int
    label: float  # share of votes for the winner, in (0.5, 1]
    n_votes: int
    judgment_ids: tuple[int, ...]


@dataclass(frozen=True)
class RankedGroup:
    """A user's ranking of K candidates, best first (for listwise losses)."""

    judgment_id: int
    prompt_id: int
    prompt: str
    generation_ids: tuple[int, ...]  # best first; unranked candidates last
    ranks: tuple[int | None, ...]


@dataclass(frozen=True)
class SoftLabel:
    prompt_id: int
    prompt: str
    a_id: int  # the smaller generation id
    b_id: int
    p_a: float  # share of votes preferring a (ties count half)
    n_votes: int
    judgment_ids: tuple[int, ...]


@dataclass(frozen=True)
class Run:
    id: int
    name: str | None
    modality: str
    method: str
    base_model: str
    base_revision: str | None
    parent_adapter_id: int | None
    config: dict[str, Any]
    run_dir: str | None
    status: str
    pid: int | None
    exit_code: int | None
    error: str | None
    metrics_path: str | None
    data_hash: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str
    step: int | None = None  # the last finished step (the trainer updates it as it goes)
    total_steps: int | None = None
    last_metrics: dict[str, Any] | None = None  # that step's metrics (loss, reward accuracy, ...)


@dataclass(frozen=True)
class Adapter:
    id: int
    name: str
    modality: str
    base_model: str
    base_revision: str | None
    method: str | None
    run_id: int | None
    path: str
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""


# ---------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------


class Store(BrowseMixin):
    """Preference store on one data directory. Thread-safe (one lock)."""

    def __init__(self, data_dir: Path, conn: sqlite3.Connection):
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_FILENAME
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        self.media = MediaStore(self.data_dir)
        self._lock = threading.RLock()

    # -- opening -----------------------------------------------------------
    @classmethod
    def open(
        cls,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> "Store":
        """Open (creating and upgrading as needed) the store in ``data_dir``.

        ``data_dir=None`` resolves ``PALATE_DATA_DIR`` or the per-user default.
        ``migrations`` exists for tests that build an old schema on purpose.
        """
        data_dir = ensure_writable_dir(resolve_data_dir(data_dir))
        db_path = data_dir / DB_FILENAME
        if db_path.exists() and db_path.is_dir():
            raise DataDirError(f"{db_path} is a directory, not a database file; move it away or pick another --data-dir")
        with _OPEN_LOCK:
            # Reading the file with plain open()/close() would drop every POSIX lock this process holds
            # on it -- including the locks of a connection already open here, which lets another process
            # delete the WAL under it ("file is not a database"). Check the header only on the first open.
            if not _OPEN_PATHS[str(db_path)]:
                _check_sqlite_header(db_path)
        try:
            conn = sqlite3.connect(
                str(db_path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as e:
            raise DataDirError(f"cannot open database {db_path}: {e}") from None
        try:
            _refuse_foreign_database(conn, db_path)
            _configure(conn, db_path)
            store = cls(data_dir, conn)
            store._migrate(tuple(migrations))
        except sqlite3.DatabaseError as e:
            conn.close()
            full = sqlite_write_failure(e, db_path)
            if full is not None:
                raise full from None
            if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                raise StoreError(
                    f"{db_path} stayed locked by another process for {BUSY_TIMEOUT_S:.0f} s; "
                    "is a long import or a stuck process holding it?"
                ) from None
            raise NotADatabaseError(
                f"{db_path} is damaged or not a Palate database ({e}). Palate will not change it: keep a copy, "
                "try `sqlite3 palate.db .recover | sqlite3 recovered.db`, or use another --data-dir."
            ) from None
        except BaseException:
            conn.close()
            raise
        with _OPEN_LOCK:
            _OPEN_PATHS[str(db_path)] += 1
        store._registered = True
        return store

    def close(self) -> None:
        with self._lock:
            self.conn.close()
            if getattr(self, "_registered", False):
                self._registered = False
                with _OPEN_LOCK:
                    _OPEN_PATHS[str(self.path)] -= 1

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions ------------------------------------------------------
    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite_utils.Database]:
        """A write transaction (``BEGIN IMMEDIATE``); nested calls are savepoints."""
        with self._lock:
            if self.conn.in_transaction:
                with self.db.atomic():
                    yield self.db
                return
            with _WriterGate.of(self.data_dir).held():
                yield from self._write_transaction()

    def _write_transaction(self) -> Iterator[sqlite_utils.Database]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any error), a full disk said as such."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            full = sqlite_write_failure(e, self.data_dir / DB_FILENAME)
            if full is not None:
                raise full from None
            raise
        try:
            yield self.db
            self.conn.execute("COMMIT")
        except BaseException as e:
            # Also when COMMIT itself fails (disk full, I/O error): a transaction
            # left open would swallow every later write as a savepoint.
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            full = sqlite_write_failure(e, self.data_dir / DB_FILENAME)
            if full is not None:
                raise full from None
            raise

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite_utils.Database]:
        """One consistent snapshot for several queries (WAL readers never block
        writers). Do not write inside it: use ``write()`` for that."""
        with self._lock:
            if self.conn.in_transaction:
                yield self.db
                return
            self.conn.execute("BEGIN")
            try:
                yield self.db
            finally:
                if self.conn.in_transaction:
                    self.conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.db.query(sql, params))

    # -- schema ------------------------------------------------------------
    def schema_version(self) -> int:
        return len(self.applied_migrations())

    def applied_migrations(self) -> list[str]:
        return [r["name"] for r in self.query("SELECT name FROM schema_migrations ORDER BY version")]

    def _migrate(self, migrations: tuple[Migration, ...]) -> None:
        known = [m.name for m in migrations]
        with self.write() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, applied_at TEXT NOT NULL)"
            )
            applied = [r[0] for r in db.execute("SELECT name FROM schema_migrations ORDER BY version").fetchall()]
            if len(applied) > len(known):
                raise SchemaTooNewError(
                    f"{self.path} has schema version {len(applied)} (last step {applied[-1]!r}), but this Palate "
                    f"knows only up to version {len(known)}. It was written by a newer Palate: upgrade Palate "
                    "(git pull, then re-run the setup command), or use another --data-dir. Nothing was changed."
                )
            if applied != known[: len(applied)]:
                raise SchemaMismatchError(
                    f"{self.path} has migration history {applied}, which does not match this Palate's "
                    f"{known[: len(applied)]}. It was not written by this Palate line; use another --data-dir."
                )
            for version, migration in enumerate(migrations[len(applied) :], start=len(applied) + 1):
                migration.apply(db)
                db.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, migration.name, now_iso()),
                )
            db.execute(f"PRAGMA user_version = {len(known)}")

    # -- prompts -----------------------------------------------------------
    def add_prompt(self, text: str) -> int:
        """Id of the prompt with this exact text, created if new."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("the prompt is empty; type what the candidates should show")
        with self.write() as db:
            row = db.execute("SELECT id FROM prompts WHERE text = ?", (text,)).fetchone()
            if row:
                return int(row[0])
            cur = db.execute("INSERT INTO prompts (text, created_at) VALUES (?, ?)", (text, now_iso()))
            return int(cur.lastrowid)

    def get_prompt(self, prompt_id: int) -> str:
        rows = self.query("SELECT text FROM prompts WHERE id = ?", (prompt_id,))
        if not rows:
            raise UnknownIdError(f"prompt {prompt_id} does not exist")
        return rows[0]["text"]

    # -- generations -------------------------------------------------------
    def put_media(self, media: "bytes | Path", modality: str, mime: str | None = None, *,
                  family: str | None = None) -> StoredMedia:
        """Check that ``media`` is what ``modality`` says (decoded, see ``check_media``) and store its file;
        nothing is recorded yet. Pass the result to :meth:`add_generation` to record it -- so a bulk writer
        (an import) does this slow part outside its write transactions."""
        _check_modality(modality)
        if isinstance(media, (bytes, bytearray, memoryview)):
            data = bytes(media)
            sniffed = check_media(data[:4096], modality, data=data, family=family)
            return self.media.put_bytes(data, mime or sniffed)
        path = Path(media)
        if not path.is_file():
            raise FileNotFoundError(f"media file {path} does not exist")
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4096) if size > _DECODE_LIMIT else f.read()
        sniffed = check_media(head[:4096], modality, data=None if size > _DECODE_LIMIT else head, what=str(path),
                              family=family)
        return self.media.put_file(path, mime or sniffed)

    def add_generation(
        self,
        *,
        prompt: str,
        modality: str,
        model: str,
        media: "bytes | Path | StoredMedia",
        mime: str | None = None,
        model_revision: str | None = None,
        adapter_id: int | None = None,
        seed: int | None = None,
        params: Mapping[str, Any] | None = None,
        cache_path: str | None = None,
        run_id: int | None = None,
        created_at: str | None = None,
        media_family: str | None = None,
    ) -> Generation:
        """Store one candidate: its media file first, then (in one transaction)
        the prompt, the media row and the generation row.

        If the media write fails (full disk, ...), nothing is recorded. If the
        process dies after the file is written but before the commit, the file
        is an orphan that ``db check --repair`` removes.
        """
        _check_modality(modality)
        if not model:
            raise ValueError("a generation needs a model reference (hub id or local path)")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("the prompt is empty; type what the candidates should show")
        # the media must be what the modality says, decoded before anything is stored
        stored = media if isinstance(media, StoredMedia) else self.put_media(media, modality, mime, family=media_family)
        created_at = created_at or now_iso()
        with self.write() as db:
            if not (self.data_dir / stored.relpath).exists():  # removed meanwhile with a deleted candidate
                if isinstance(media, StoredMedia):
                    raise MediaWriteError(f"media file {stored.relpath} was removed before it was recorded (a "
                                          "candidate with the same content was deleted meanwhile); nothing was "
                                          "recorded, try again")
                stored = (self.media.put_bytes(bytes(media), stored.mime)
                          if isinstance(media, (bytes, bytearray, memoryview)) else self.media.put_file(Path(media), stored.mime))
            prompt_id = self.add_prompt(prompt)
            if adapter_id is not None:
                self._require("adapters", adapter_id, "adapter")
            if run_id is not None:
                self._require("runs", run_id, "run")
            db.execute(
                "INSERT OR IGNORE INTO media (sha256, path, mime, size, created_at) VALUES (?, ?, ?, ?, ?)",
                (stored.sha256, stored.relpath, stored.mime, stored.size, created_at),
            )
            cur = db.execute(
                "INSERT INTO generations (prompt_id, modality, model, model_revision, adapter_id, seed, params,"
                " media_sha256, cache_path, run_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    prompt_id,
                    modality,
                    model,
                    model_revision,
                    adapter_id,
                    seed,
                    _dumps(params),
                    stored.sha256,
                    cache_path,
                    run_id,
                    created_at,
                ),
            )
            gen_id = int(cur.lastrowid)
        return self.get_generation(gen_id)

    _GEN_SELECT = (
        "SELECT g.*, p.text AS prompt, m.path AS media_path, m.mime AS mime FROM generations g"
        " JOIN prompts p ON p.id = g.prompt_id JOIN media m ON m.sha256 = g.media_sha256"
    )

    def get_generation(self, generation_id: int) -> Generation:
        rows = self.query(self._GEN_SELECT + " WHERE g.id = ?", (int(generation_id),))
        if not rows:
            raise UnknownIdError(self._unknown_message("generation", "generations", int(generation_id)))
        return _generation(rows[0])

    def get_generations(self, ids: Sequence[int]) -> list[Generation]:
        """Generations in the order of ``ids``; all unknown ids are named at once."""
        ids = [int(i) for i in ids]
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = {r["id"]: r for r in self.query(self._GEN_SELECT + f" WHERE g.id IN ({marks})", ids)}
        missing = [i for i in dict.fromkeys(ids) if i not in rows]
        if missing:
            names = ", ".join(str(i) for i in missing)
            raise UnknownIdError(
                f"unknown generation id{'s' if len(missing) > 1 else ''} {names}; "
                "list existing ones with `python -m app list`"
            )
        return [_generation(rows[i]) for i in ids]

    def list_generations(
        self,
        *,
        modality: str | None = None,
        model: str | None = None,
        prompt_id: int | None = None,
        limit: int | None = None,
    ) -> list[Generation]:
        where, params = _filters(modality=modality, model=model, prompt_id=prompt_id, alias="g")
        sql = self._GEN_SELECT + where + " ORDER BY g.id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_generation(r) for r in self.query(sql, params)]

    def media_file(self, generation: Generation) -> Path:
        return self.media.abspath(generation.media_path)

    def media_bytes(self, generation: Generation) -> bytes:
        return self.media.read_bytes(generation.media_path)

    # -- annotators --------------------------------------------------------
    def annotator_id(self, name: str, kind: str = "human") -> int:
        if kind not in ANNOTATOR_KINDS:
            raise ValueError(f"annotator kind must be one of {', '.join(ANNOTATOR_KINDS)}, not {kind!r}")
        if not name or not name.strip():
            raise ValueError("an annotator needs a name (a person's name, or the AI judge's name)")
        with self.write() as db:
            row = db.execute("SELECT id FROM annotators WHERE kind = ? AND name = ?", (kind, name)).fetchone()
            if row:
                return int(row[0])
            cur = db.execute(
                "INSERT INTO annotators (kind, name, created_at) VALUES (?, ?, ?)", (kind, name, now_iso())
            )
            return int(cur.lastrowid)

    # -- judgments ---------------------------------------------------------
    def vote(
        self,
        a: int,
        b: int,
        choice: str,
        *,
        annotator: str = "you",
        annotator_kind: str = "human",
        strength: float | None = None,
        context: str = "collect",
        created_at: str | None = None,
        import_id: int | None = None,
    ) -> int:
        """Record a pairwise judgment between generations ``a`` and ``b``.

        ``choice``: ``a``, ``b``, ``tie`` or ``both_bad`` (``both-bad`` also
        accepted). ``strength``, optional, is the probability that A is
        preferred (a soft label, e.g. an AI judge's confidence); it must agree
        with ``choice``. Returns the judgment id.
        """
        norm = CHOICE_ALIASES.get(str(choice).strip().lower())
        if norm is None:
            raise InvalidJudgmentError(f"unknown choice {choice!r}; use one of a, b, tie, both-bad")
        a, b = int(a), int(b)
        if a == b:
            raise InvalidJudgmentError(f"a pairwise vote needs two different generations, got {a} twice")
        if strength is not None:
            strength = float(strength)
            if not 0.0 <= strength <= 1.0 or strength != strength:
                raise InvalidJudgmentError(f"strength must be a probability in [0, 1], got {strength}")
            ok = {"a": strength > 0.5, "b": strength < 0.5, "tie": strength == 0.5, "both_bad": False}[norm]
            if not ok:
                raise InvalidJudgmentError(
                    f"strength {strength} (probability that A is preferred) contradicts choice {norm!r}; "
                    "A needs > 0.5, B < 0.5, tie exactly 0.5, and both-bad takes no strength"
                )
        with self.write() as db:
            ga, gb = self.get_generations([a, b])
            _check_comparable([ga, gb])
            ann = self.annotator_id(annotator, annotator_kind)
            cur = db.execute(
                "INSERT INTO judgments (kind, prompt_id, annotator_id, choice, strength, context, created_at,"
                " import_id) VALUES ('pairwise', ?, ?, ?, ?, ?, ?, ?)",
                (ga.prompt_id, ann, norm, strength, context, created_at or now_iso(), import_id),
            )
            jid = int(cur.lastrowid)
            db.execute(
                "INSERT INTO judgment_items (judgment_id, position, generation_id) VALUES (?, 0, ?), (?, 1, ?)",
                (jid, a, jid, b),
            )
        return jid

    def rank(
        self,
        ranking: Sequence[int | Sequence[int]],
        *,
        unranked: Sequence[int] = (),
        annotator: str = "you",
        annotator_kind: str = "human",
        context: str = "collect",
        created_at: str | None = None,
    ) -> int:
        """Record a ranking, best first. An element may be a list of ids the
        user ranked equal. ``unranked``: candidates shown but not ranked (a
        partial ranking; they count as worse than every ranked one).
        Returns the judgment id."""
        ranks: dict[int, int | None] = {}
        order: list[int] = []
        for rank, group in enumerate(ranking, start=1):
            members = [group] if isinstance(group, (int,)) or hasattr(group, "__index__") else list(group)
            if not members:
                raise InvalidJudgmentError(f"rank {rank} is an empty group")
            for g in members:
                g = int(g)
                if g in ranks:
                    raise InvalidJudgmentError(f"generation {g} appears more than once in the ranking")
                ranks[g] = rank
                order.append(g)
        for g in unranked:
            g = int(g)
            if g in ranks:
                raise InvalidJudgmentError(f"generation {g} appears more than once in the ranking")
            ranks[g] = None
            order.append(g)
        if not any(r is not None for r in ranks.values()):
            raise InvalidJudgmentError("a ranking needs at least one ranked candidate")
        if len(ranks) < 2:
            raise InvalidJudgmentError("a ranking needs at least two candidates")
        with self.write() as db:
            gens = self.get_generations(order)
            _check_comparable(gens)
            ann = self.annotator_id(annotator, annotator_kind)
            cur = db.execute(
                "INSERT INTO judgments (kind, prompt_id, annotator_id, context, created_at)"
                " VALUES ('ranking', ?, ?, ?, ?)",
                (gens[0].prompt_id, ann, context, created_at or now_iso()),
            )
            jid = int(cur.lastrowid)
            for pos, g in enumerate(order):
                db.execute(
                    "INSERT INTO judgment_items (judgment_id, position, generation_id, rank) VALUES (?, ?, ?, ?)",
                    (jid, pos, g, ranks[g]),
                )
        return jid

    def get_judgment(self, judgment_id: int) -> Judgment:
        rows = self.query(
            "SELECT j.*, a.name AS annotator, a.kind AS annotator_kind FROM judgments j"
            " JOIN annotators a ON a.id = j.annotator_id WHERE j.id = ?",
            (int(judgment_id),),
        )
        if not rows:
            raise UnknownIdError(self._unknown_message("judgment", "judgments", int(judgment_id)))
        r = rows[0]
        items = self.query(
            "SELECT generation_id, rank FROM judgment_items WHERE judgment_id = ? ORDER BY position", (r["id"],)
        )
        return Judgment(
            id=r["id"],
            kind=r["kind"],
            prompt_id=r["prompt_id"],
            annotator=r["annotator"],
            annotator_kind=r["annotator_kind"],
            choice=r["choice"],
            strength=r["strength"],
            context=r["context"],
            created_at=r["created_at"],
            generation_ids=tuple(i["generation_id"] for i in items),
            ranks=tuple(i["rank"] for i in items),
        )

    def delete_judgment(self, judgment_id: int) -> None:
        """Remove one judgment (undo). Its generations stay."""
        with self.write() as db:
            self._require("judgments", judgment_id, "judgment")
            db.execute("DELETE FROM judgments WHERE id = ?", (int(judgment_id),))

    def delete_generation(self, generation_id: int) -> int:
        """Remove a candidate and every judgment that involves it (a ranking without one of
        its candidates would say something the user did not). Its media file goes too when no
        other candidate uses it. Returns how many judgments were removed."""
        with self.write() as db:
            self._require("generations", generation_id, "generation")
            gid = int(generation_id)
            jids = [r[0] for r in db.execute(
                "SELECT DISTINCT judgment_id FROM judgment_items WHERE generation_id = ?", (gid,)).fetchall()]
            for jid in jids:
                db.execute("DELETE FROM judgments WHERE id = ?", (jid,))
            sha = db.execute("SELECT media_sha256 FROM generations WHERE id = ?", (gid,)).fetchone()[0]
            db.execute("DELETE FROM generations WHERE id = ?", (gid,))
            orphan = not db.execute("SELECT 1 FROM generations WHERE media_sha256 = ?", (sha,)).fetchone()
            row = db.execute("SELECT path FROM media WHERE sha256 = ?", (sha,)).fetchone() if orphan else None
            if orphan:
                db.execute("DELETE FROM media WHERE sha256 = ?", (sha,))
        if row:  # the file goes only once the rows are gone for good, and only if nobody added it again since
            with self.write() as db:  # (an add of the same bytes meanwhile finds the file missing and rewrites it)
                if not db.execute("SELECT 1 FROM media WHERE sha256 = ?", (sha,)).fetchone():
                    (self.data_dir / row[0]).unlink(missing_ok=True)
        return len(jids)

    def last_judgment_id(self, *, annotator: str | None = None) -> int | None:
        sql = "SELECT j.id FROM judgments j JOIN annotators a ON a.id = j.annotator_id"
        params: list[Any] = []
        if annotator is not None:
            sql += " WHERE a.name = ?"
            params.append(annotator)
        rows = self.query(sql + " ORDER BY j.id DESC LIMIT 1", params)
        return rows[0]["id"] if rows else None

    # -- training views ----------------------------------------------------
    def votes(
        self,
        *,
        modality: str,
        model: str | None = None,
        derivation: derive.Derivation = "all",
        contexts: Sequence[str] | None = None,
    ) -> list[derive.Vote]:
        """Every vote on a pair of candidates of ``modality`` (and ``model``),
        from pairwise judgments and derived from rankings."""
        _check_modality(modality)
        derive._check_derivation(derivation)
        with self.read():
            return self._votes(modality, model, derivation, contexts)

    def _votes(
        self, modality: str, model: str | None, derivation: derive.Derivation, contexts: Sequence[str] | None
    ) -> list[derive.Vote]:
        gen_ok = self._eligible_generations(modality, model)
        ctx_sql, ctx_params = _context_filter(contexts)
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
    ) -> list[PreferencePair]:
        """Training pairs (winner first) for a modality and model.

        ``aggregate=True`` (default): one pair per pair of candidates, oriented
        by the majority of its votes, with ``label`` the winner's share; pairs
        whose votes balance out (ties, split votes) are left out.
        ``aggregate=False``: one pair per decisive vote, repeats included.
        Ties and both-bad judgments never become pairs; they stay in the store.
        """
        with self.read():
            votes = self.votes(modality=modality, model=model, derivation=derivation, contexts=contexts)
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
    ) -> list[SoftLabel]:
        """Pairs judged at least ``min_votes`` times, with the share of votes
        for the smaller id (ties count half; both-bad is not a vote)."""
        with self.read():
            votes = self.votes(modality=modality, model=model, derivation=derivation, contexts=contexts)
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
    ) -> list[RankedGroup]:
        """Rankings of K >= ``min_size`` candidates, best first, for listwise losses."""
        _check_modality(modality)
        with self.read():
            return self._ranked_groups(modality, model, min_size, contexts)

    def _ranked_groups(
        self, modality: str, model: str | None, min_size: int, contexts: Sequence[str] | None
    ) -> list[RankedGroup]:
        gen_ok = self._eligible_generations(modality, model)
        ctx_sql, ctx_params = _context_filter(contexts)
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

    # -- runs --------------------------------------------------------------
    _RUN_FIELDS = (
        "name",
        "run_dir",
        "status",
        "pid",
        "exit_code",
        "error",
        "metrics_path",
        "data_hash",
        "started_at",
        "finished_at",
        "config",
        "step",
        "total_steps",
        "last_metrics",
    )

    def create_run(
        self,
        *,
        modality: str,
        method: str,
        base_model: str,
        config: Mapping[str, Any],
        base_revision: str | None = None,
        parent_adapter_id: int | None = None,
        run_dir: str | None = None,
        name: str | None = None,
        data_hash: str | None = None,
    ) -> Run:
        _check_modality(modality)
        now = now_iso()
        with self.write() as db:
            if parent_adapter_id is not None:
                self._require("adapters", parent_adapter_id, "adapter")
            cur = db.execute(
                "INSERT INTO runs (name, modality, method, base_model, base_revision, parent_adapter_id, config,"
                " run_dir, status, data_hash, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
                (name, modality, method, base_model, base_revision, parent_adapter_id, _dumps(config), run_dir,
                 data_hash, now, now),
            )
            rid = int(cur.lastrowid)
        return self.get_run(rid)

    def update_run(self, run_id: int, **fields: Any) -> Run:
        """Change a run's status, pid, exit code, error, paths or timestamps."""
        unknown = set(fields) - set(self._RUN_FIELDS)
        if unknown:
            raise ValueError(f"cannot update run field(s) {sorted(unknown)}; allowed: {', '.join(self._RUN_FIELDS)}")
        if "status" in fields and fields["status"] not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {', '.join(RUN_STATUSES)}, not {fields['status']!r}")
        for key in ("config", "last_metrics"):
            if key in fields and fields[key] is not None:
                fields[key] = _dumps(fields[key])
        fields["updated_at"] = now_iso()
        with self.write() as db:
            self._require("runs", run_id, "run")
            sets = ", ".join(f"{k} = ?" for k in fields)
            db.execute(f"UPDATE runs SET {sets} WHERE id = ?", (*fields.values(), int(run_id)))
        return self.get_run(run_id)

    def get_run(self, run_id: int) -> Run:
        rows = self.query("SELECT * FROM runs WHERE id = ?", (int(run_id),))
        if not rows:
            raise UnknownIdError(self._unknown_message("run", "runs", int(run_id)))
        return _run(rows[0])

    def list_runs(self, *, status: str | None = None) -> list[Run]:
        if status is not None:
            return [_run(r) for r in self.query("SELECT * FROM runs WHERE status = ? ORDER BY id", (status,))]
        return [_run(r) for r in self.query("SELECT * FROM runs ORDER BY id")]

    # -- adapters ----------------------------------------------------------
    def add_adapter(
        self,
        *,
        name: str,
        modality: str,
        base_model: str,
        path: str,
        base_revision: str | None = None,
        method: str | None = None,
        run_id: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Adapter:
        _check_modality(modality)
        with self.write() as db:
            if run_id is not None:
                self._require("runs", run_id, "run")
            if db.execute("SELECT 1 FROM adapters WHERE name = ?", (name,)).fetchone():
                raise ValueError(f"an adapter named {name!r} already exists; pick another name")
            cur = db.execute(
                "INSERT INTO adapters (name, modality, base_model, base_revision, method, run_id, path, metadata,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, modality, base_model, base_revision, method, run_id, path, _dumps(metadata), now_iso()),
            )
            aid = int(cur.lastrowid)
        return self.get_adapter(aid)

    def get_adapter(self, adapter_id: int) -> Adapter:
        rows = self.query("SELECT * FROM adapters WHERE id = ?", (int(adapter_id),))
        if not rows:
            raise UnknownIdError(self._unknown_message("adapter", "adapters", int(adapter_id)))
        return _adapter(rows[0])

    def list_adapters(self, *, modality: str | None = None) -> list[Adapter]:
        if modality is not None:
            rows = self.query("SELECT * FROM adapters WHERE modality = ? ORDER BY id", (modality,))
        else:
            rows = self.query("SELECT * FROM adapters ORDER BY id")
        return [_adapter(r) for r in rows]

    def delete_adapter(self, adapter_id: int) -> None:
        """Forget an adapter. Generations made with it keep their provenance
        in ``params`` but lose the link; the adapter's files are not touched."""
        with self.write() as db:
            self._require("adapters", adapter_id, "adapter")
            db.execute("UPDATE generations SET adapter_id = NULL WHERE adapter_id = ?", (int(adapter_id),))
            db.execute("UPDATE runs SET parent_adapter_id = NULL WHERE parent_adapter_id = ?", (int(adapter_id),))
            db.execute("DELETE FROM adapters WHERE id = ?", (int(adapter_id),))

    # -- stats -------------------------------------------------------------
    def stats(self, *, modality: str | None = None, model: str | None = None) -> list[dict[str, Any]]:
        """Counts per (modality, model): prompts, generations, judgments by
        kind and choice, derived training pairs, and agreement on pairs judged
        more than once."""
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
            for r in self.query("SELECT generation_a, generation_b, choice FROM pairwise_votes WHERE context != ?",
                                (COMPARE_CONTEXT,)):
                if r["generation_a"] in gen_ok and r["generation_b"] in gen_ok:
                    choices[r["choice"]] += 1
            rankings = sum(
                1
                for _, ranks in self._rankings("", [])
                if sum(1 for g in ranks if g in gen_ok) >= 2
            )
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
                    "training_pairs": len(pairs),
                    "pairs_judged_twice_or_more": len(repeated),
                    "agreement": agree,
                }
            )
        return out

    # -- helpers -----------------------------------------------------------
    def _require(self, table: str, row_id: int, what: str) -> None:
        if not self.db.execute(f"SELECT 1 FROM {table} WHERE id = ?", (int(row_id),)).fetchone():
            raise UnknownIdError(self._unknown_message(what, table, int(row_id)))

    def _unknown_message(self, what: str, table: str, row_id: int) -> str:
        with self._lock:
            row = self.db.execute(f"SELECT MIN(id), MAX(id), COUNT(*) FROM {table}").fetchone()
        if not row or not row[2]:
            return f"{what} {row_id} does not exist (there are no {table} yet)"
        return f"{what} {row_id} does not exist (existing {table}: {row[2]}, ids {row[0]}..{row[1]})"


# ---------------------------------------------------------------------------
# module helpers
# ---------------------------------------------------------------------------


def _check_sqlite_header(db_path: Path) -> None:
    """Refuse a file that is not an SQLite database before SQLite touches it."""
    try:
        with open(db_path, "rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        return
    except OSError as e:
        raise DataDirError(f"cannot read {db_path}: {e.strerror or e}") from None
    if head and head != b"SQLite format 3\x00":
        raise NotADatabaseError(
            f"{db_path} is not an SQLite database (it starts with {head[:8]!r}). Palate will not touch it: "
            "move it away, or point --data-dir at another directory."
        )


def _refuse_foreign_database(conn: sqlite3.Connection, db_path: Path) -> None:
    """An SQLite file with tables but no Palate history is someone else's: leave it alone."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
    if tables and "schema_migrations" not in tables:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise NotADatabaseError(
            f"{db_path} is an SQLite database of something else (tables: {shown}), not Palate's. "
            "Palate will not change it: move it away or use another --data-dir."
        )


def _configure(conn: sqlite3.Connection, db_path: Path) -> None:
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        conn.execute("PRAGMA foreign_keys = ON")
        # FULL: a committed vote survives a power cut too, not only a crash.
        conn.execute("PRAGMA synchronous = FULL")
    except sqlite3.DatabaseError as e:
        msg = str(e)
        if "not a database" in msg or "malformed" in msg:
            raise NotADatabaseError(
                f"{db_path} is not a usable SQLite database ({msg}); move it away or use another --data-dir"
            ) from None
        if "readonly" in msg or "read-only" in msg or "unable to open" in msg:
            raise DataDirError(f"cannot write to {db_path} ({msg}); use another --data-dir") from None
        raise StoreError(f"cannot configure database {db_path}: {msg}") from None
    if str(mode).lower() != "wal":
        raise StoreError(
            f"{db_path}: SQLite refused WAL mode (got {mode!r}); network file systems do not support it: "
            "put the data directory on a local disk"
        )


def _check_modality(modality: str) -> None:
    """A modality is named by a lower-case identifier (which ones exist is the registry's business:
    ``modalities.registry``; the store keeps whatever it is given)."""
    import re

    if not isinstance(modality, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", modality):
        raise ValueError(f"unknown modality {modality!r}: modality names are lower-case identifiers such as "
                         f"{', '.join(MODALITIES)}")


def _check_comparable(gens: Sequence[Generation]) -> None:
    prompts = {g.prompt_id for g in gens}
    if len(prompts) > 1:
        detail = ", ".join(f"{g.id}: {g.prompt!r}" for g in gens)
        raise InvalidJudgmentError(f"candidates of one judgment must share a prompt; got {detail}")
    modalities = {g.modality for g in gens}
    if len(modalities) > 1:
        raise InvalidJudgmentError(f"candidates of one judgment must share a modality; got {sorted(modalities)}")


def _filters(*, alias: str, **values: Any) -> tuple[str, list[Any]]:
    clauses, params = [], []
    for k, v in values.items():
        if v is not None:
            clauses.append(f"{alias}.{k} = ?")
            params.append(v)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _context_filter(contexts: Sequence[str] | None) -> tuple[str, list[Any]]:
    """SQL restricting judgments (aliased ``j``) to the given contexts. None: every context
    but the blind comparisons of base and tuned models (``compare``), which are evaluations,
    never training data."""
    if contexts is None:
        return " AND j.context != ?", [COMPARE_CONTEXT]
    return f" AND j.context IN ({','.join('?' * len(contexts))})", list(contexts)


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


def _generation(r: Mapping[str, Any]) -> Generation:
    return Generation(
        id=r["id"],
        prompt_id=r["prompt_id"],
        prompt=r["prompt"],
        modality=r["modality"],
        model=r["model"],
        model_revision=r["model_revision"],
        adapter_id=r["adapter_id"],
        seed=r["seed"],
        params=json.loads(r["params"] or "{}"),
        media_sha256=r["media_sha256"],
        media_path=r["media_path"],
        mime=r["mime"],
        cache_path=r["cache_path"],
        run_id=r["run_id"],
        created_at=r["created_at"],
    )


def _run(r: Mapping[str, Any]) -> Run:
    d = dict(r)
    d["config"] = json.loads(d["config"] or "{}")
    d["last_metrics"] = json.loads(d["last_metrics"]) if d.get("last_metrics") else None
    return Run(**d)


def _adapter(r: Mapping[str, Any]) -> Adapter:
    d = dict(r)
    d["metadata"] = json.loads(d["metadata"] or "{}")
    return Adapter(**d)
