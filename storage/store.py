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

This module writes (prompts, media, generations, judgments); the reading views are mixins:
:mod:`.views` (votes, pairs, soft labels, rankings, stats), :mod:`.catalog` (runs and adapters) and
:mod:`.browse` (tables for people); the row types are in :mod:`.records`.
"""
from __future__ import annotations

import contextlib
from collections import Counter
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import sqlite_utils

from .browse import COMPARE_CONTEXT, BrowseMixin  # noqa: F401  (COMPARE_CONTEXT: part of the interface)
from .catalog import CatalogMixin
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
from .records import (  # noqa: F401  (the row types are part of the store's interface)
    DEFAULT_DIMENSION,
    Adapter,
    Generation,
    Judgment,
    PreferencePair,
    RankedGroup,
    Run,
    SoftLabel,
    _dumps,
    _generation,
    check_dimension,
    check_modality as _check_modality,
    now_iso,
    sql_filters as _filters,
)
from .schema import ANNOTATOR_KINDS, MIGRATIONS, Migration
from .views import TrainingViewsMixin

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


class Store(BrowseMixin, TrainingViewsMixin, CatalogMixin):
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
                  family: str | None = None, imported: bool = False) -> StoredMedia:
        """Check that ``media`` is what ``modality`` says (decoded, see ``check_media``) and store its file;
        nothing is recorded yet. Pass the result to :meth:`add_generation` to record it -- so a bulk writer
        (an import) does this slow part outside its write transactions."""
        _check_modality(modality)
        if isinstance(media, (bytes, bytearray, memoryview)):
            data = bytes(media)
            sniffed = check_media(data[:4096], modality, data=data, family=family, imported=imported)
            return self.media.put_bytes(data, mime or sniffed)
        path = Path(media)
        if not path.is_file():
            raise FileNotFoundError(f"media file {path} does not exist")
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4096) if size > _DECODE_LIMIT else f.read()
        sniffed = check_media(head[:4096], modality, data=None if size > _DECODE_LIMIT else head, what=str(path),
                              family=family, imported=imported)
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
        dimension: str = DEFAULT_DIMENSION,
    ) -> int:
        """Record a pairwise judgment between generations ``a`` and ``b``.

        ``choice``: ``a``, ``b``, ``tie`` or ``both_bad`` (``both-bad`` also
        accepted). ``strength``, optional, is the probability that A is
        preferred (a soft label, e.g. an AI judge's confidence); it must agree
        with ``choice``. ``dimension``: what the vote is about (``overall`` unless
        said). Returns the judgment id.
        """
        _dimension(dimension)
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
                " import_id, dimension) VALUES ('pairwise', ?, ?, ?, ?, ?, ?, ?, ?)",
                (ga.prompt_id, ann, norm, strength, context, created_at or now_iso(), import_id, dimension),
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
        dimension: str = DEFAULT_DIMENSION,
    ) -> int:
        """Record a ranking, best first. An element may be a list of ids the
        user ranked equal. ``unranked``: candidates shown but not ranked (a
        partial ranking; they count as worse than every ranked one).
        ``dimension``: what the ranking is about. Returns the judgment id."""
        _dimension(dimension)
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
                "INSERT INTO judgments (kind, prompt_id, annotator_id, context, created_at, dimension)"
                " VALUES ('ranking', ?, ?, ?, ?, ?)",
                (gens[0].prompt_id, ann, context, created_at or now_iso(), dimension),
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
            dimension=r["dimension"],
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


def _dimension(dimension: str) -> None:
    try:
        check_dimension(dimension)
    except ValueError as e:
        raise InvalidJudgmentError(str(e)) from None


def _check_comparable(gens: Sequence[Generation]) -> None:
    prompts = {g.prompt_id for g in gens}
    if len(prompts) > 1:
        detail = ", ".join(f"{g.id}: {g.prompt!r}" for g in gens)
        raise InvalidJudgmentError(f"candidates of one judgment must share a prompt; got {detail}")
    modalities = {g.modality for g in gens}
    if len(modalities) > 1:
        raise InvalidJudgmentError(f"candidates of one judgment must share a modality; got {sorted(modalities)}")
