"""The database schema, as ordered, named migrations.

Each migration is a function of a ``sqlite_utils.Database`` that runs inside
the transaction the store opens for it (``BEGIN IMMEDIATE``: one process
migrates, the others wait on the busy timeout and then see the new version).
A migration is never edited once released: change the schema by appending a
new one. ``schema_migrations`` records which ran, in order; the database's
schema version is the number of them (also mirrored in ``PRAGMA user_version``
so that ``sqlite3 palate.db 'pragma user_version'`` tells it).

Conventions stored here once:
- times are ISO-8601 UTC strings with microseconds (``2026-11-21T13:40:00.123456+00:00``);
- JSON columns hold objects serialised with sorted keys;
- a pairwise judgment stores its candidates as items at position 0 ("A") and
  1 ("B"); ``choice`` is ``a``, ``b``, ``tie`` or ``both_bad``; ``strength``,
  when present, is the probability that A is preferred (a soft label);
- a ranking stores one item per candidate with ``rank`` 1 = best, equal ranks
  for ties, and NULL for candidates shown but left unranked (partial ranking);
- media files are referenced by sha256; ``media.path`` is relative to the data
  directory.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Callable

import sqlite_utils

MODALITIES = ("image", "video", "music", "text")  # the CHECK of migrations 0001-0004 (0005 allows any name)
CHOICES = ("a", "b", "tie", "both_bad")
RUN_STATUSES = ("queued", "running", "completed", "failed", "cancelled")
ANNOTATOR_KINDS = ("human", "ai")


def _execute_statements(db: sqlite_utils.Database, script: str) -> None:
    """Run a script statement by statement.

    ``sqlite3``'s ``executescript`` commits any open transaction first, which
    would make a migration non-atomic; this keeps it inside the caller's.
    """
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            db.execute(buf)
            buf = ""
    if buf.strip():
        raise ValueError(f"incomplete SQL statement in migration: {buf.strip()[:80]}")


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


def _0001_initial(db: sqlite_utils.Database) -> None:
    _execute_statements(
        db,
        f"""
        CREATE TABLE prompts (
            id INTEGER PRIMARY KEY,
            text TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL
        );
        CREATE TABLE media (
            sha256 TEXT PRIMARY KEY CHECK (length(sha256) = 64),
            path TEXT NOT NULL,
            mime TEXT NOT NULL,
            size INTEGER NOT NULL CHECK (size >= 0),
            created_at TEXT NOT NULL
        );
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            name TEXT,
            modality TEXT NOT NULL CHECK (modality IN {_in(MODALITIES)}),
            method TEXT NOT NULL,
            base_model TEXT NOT NULL,
            base_revision TEXT,
            parent_adapter_id INTEGER REFERENCES adapters(id),
            config TEXT NOT NULL DEFAULT '{{}}',
            run_dir TEXT,
            status TEXT NOT NULL DEFAULT 'queued' CHECK (status IN {_in(RUN_STATUSES)}),
            pid INTEGER,
            exit_code INTEGER,
            error TEXT,
            metrics_path TEXT,
            data_hash TEXT,
            created_at TEXT NOT NULL,
            started_at TEXT,
            finished_at TEXT,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE adapters (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            modality TEXT NOT NULL CHECK (modality IN {_in(MODALITIES)}),
            base_model TEXT NOT NULL,
            base_revision TEXT,
            method TEXT,
            run_id INTEGER REFERENCES runs(id),
            path TEXT NOT NULL,
            metadata TEXT NOT NULL DEFAULT '{{}}',
            created_at TEXT NOT NULL
        );
        CREATE TABLE generations (
            id INTEGER PRIMARY KEY,
            prompt_id INTEGER NOT NULL REFERENCES prompts(id),
            modality TEXT NOT NULL CHECK (modality IN {_in(MODALITIES)}),
            model TEXT NOT NULL,
            model_revision TEXT,
            adapter_id INTEGER REFERENCES adapters(id),
            seed INTEGER,
            params TEXT NOT NULL DEFAULT '{{}}',
            media_sha256 TEXT NOT NULL REFERENCES media(sha256),
            cache_path TEXT,
            run_id INTEGER REFERENCES runs(id),
            created_at TEXT NOT NULL
        );
        CREATE INDEX idx_generations_prompt ON generations(prompt_id);
        CREATE INDEX idx_generations_model ON generations(modality, model);
        CREATE INDEX idx_generations_media ON generations(media_sha256);
        CREATE TABLE annotators (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN {_in(ANNOTATOR_KINDS)}),
            name TEXT NOT NULL,
            created_at TEXT NOT NULL,
            UNIQUE (kind, name)
        );
        CREATE TABLE judgments (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('pairwise', 'ranking')),
            prompt_id INTEGER NOT NULL REFERENCES prompts(id),
            annotator_id INTEGER NOT NULL REFERENCES annotators(id),
            choice TEXT CHECK (choice IN {_in(CHOICES)}),
            strength REAL CHECK (strength IS NULL OR (strength >= 0.0 AND strength <= 1.0)),
            context TEXT NOT NULL DEFAULT 'collect',
            created_at TEXT NOT NULL,
            CHECK ((kind = 'pairwise') = (choice IS NOT NULL)),
            CHECK (kind = 'pairwise' OR strength IS NULL)
        );
        CREATE INDEX idx_judgments_prompt ON judgments(prompt_id);
        CREATE TABLE judgment_items (
            judgment_id INTEGER NOT NULL REFERENCES judgments(id) ON DELETE CASCADE,
            position INTEGER NOT NULL CHECK (position >= 0),
            generation_id INTEGER NOT NULL REFERENCES generations(id),
            rank INTEGER CHECK (rank IS NULL OR rank >= 1),
            PRIMARY KEY (judgment_id, position),
            UNIQUE (judgment_id, generation_id)
        );
        CREATE INDEX idx_items_generation ON judgment_items(generation_id);
        """
    )


def _0002_imports(db: sqlite_utils.Database) -> None:
    """Remember imported files by content hash so a second import is caught."""
    _execute_statements(
        db,
        """
        CREATE TABLE imports (
            id INTEGER PRIMARY KEY,
            source_sha256 TEXT NOT NULL,
            source_name TEXT NOT NULL,
            format TEXT NOT NULL,
            rows INTEGER NOT NULL,
            judgments INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            completed_at TEXT
        );
        CREATE INDEX idx_imports_sha ON imports(source_sha256);
        ALTER TABLE judgments ADD COLUMN import_id INTEGER REFERENCES imports(id);
        ALTER TABLE judgments ADD COLUMN import_key TEXT;
        CREATE INDEX idx_judgments_import_key ON judgments(import_key) WHERE import_key IS NOT NULL;
        """
    )


def _0003_views(db: sqlite_utils.Database) -> None:
    """Read-only views for people who inspect the store with sqlite3."""
    _execute_statements(
        db,
        """
        CREATE VIEW pairwise_votes AS
        SELECT j.id AS judgment_id, j.prompt_id, p.text AS prompt,
               a.generation_id AS generation_a, b.generation_id AS generation_b,
               j.choice, j.strength, ann.kind AS annotator_kind, ann.name AS annotator,
               j.context, j.created_at
        FROM judgments j
        JOIN prompts p ON p.id = j.prompt_id
        JOIN annotators ann ON ann.id = j.annotator_id
        JOIN judgment_items a ON a.judgment_id = j.id AND a.position = 0
        JOIN judgment_items b ON b.judgment_id = j.id AND b.position = 1
        WHERE j.kind = 'pairwise';

        CREATE VIEW ranking_items AS
        SELECT j.id AS judgment_id, j.prompt_id, p.text AS prompt, i.position,
               i.generation_id, i.rank, ann.kind AS annotator_kind, ann.name AS annotator,
               j.created_at
        FROM judgments j
        JOIN prompts p ON p.id = j.prompt_id
        JOIN annotators ann ON ann.id = j.annotator_id
        JOIN judgment_items i ON i.judgment_id = j.id
        WHERE j.kind = 'ranking';
        """
    )


def _0004_run_progress(db: sqlite_utils.Database) -> None:
    """A run's progress in its record: the trainer writes its step and latest metrics as it goes."""
    _execute_statements(
        db,
        """
        ALTER TABLE runs ADD COLUMN step INTEGER;
        ALTER TABLE runs ADD COLUMN total_steps INTEGER;
        ALTER TABLE runs ADD COLUMN last_metrics TEXT;
        """
    )


MODALITY_CHECK = "CHECK (modality GLOB '[a-z]*' AND modality NOT GLOB '*[^a-z0-9_]*')"


def _0005_any_modality(db: sqlite_utils.Database) -> None:
    """Any registered modality may store candidates, runs and adapters (a modality is one folder plus a
    registry line; the schema no longer lists them): the CHECK on ``modality`` becomes "a lower-case
    identifier". SQLite cannot alter a CHECK, so the table definitions are rewritten in place, the way
    its documentation describes for removing constraints (``writable_schema``; the stored rows are not
    touched), and the schema version is bumped so other connections reload it."""
    old = f"CHECK (modality IN {_in(MODALITIES)})"
    version = db.execute("PRAGMA schema_version").fetchone()[0]
    db.execute("PRAGMA writable_schema = ON")
    try:
        for table in ("runs", "adapters", "generations"):
            sql = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()[0]
            if old not in sql:
                raise ValueError(f"table {table} does not have the expected modality check; not migrating")
            db.execute("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = ?",
                       (sql.replace(old, MODALITY_CHECK), table))
        db.execute(f"PRAGMA schema_version = {int(version) + 1}")
    finally:
        db.execute("PRAGMA writable_schema = OFF")


def _0006_reward_models(db: sqlite_utils.Database) -> None:
    """Reward models learned from judgments: a name with numbered versions, the model whose features
    they read, the data they were trained on (hash) and their measured accuracy."""
    _execute_statements(
        db,
        f"""
        CREATE TABLE reward_models (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            version INTEGER NOT NULL CHECK (version >= 1),
            modality TEXT NOT NULL {MODALITY_CHECK},
            base_model TEXT NOT NULL,
            base_revision TEXT,
            backbone TEXT NOT NULL,
            dimensions TEXT NOT NULL,
            path TEXT NOT NULL,
            data_hash TEXT,
            metrics TEXT NOT NULL DEFAULT '{{}}',
            created_at TEXT NOT NULL,
            UNIQUE (name, version)
        );
        CREATE INDEX reward_models_modality ON reward_models (modality, base_model);
        """
    )


DIMENSION_CHECK = "CHECK (dimension GLOB '[a-z]*' AND dimension NOT GLOB '*[^a-z0-9_]*')"


def _0007_dimensions(db: sqlite_utils.Database) -> None:
    """A judgment may say which dimension of the candidates it is about (overall, prompt, quality,
    style, or one a modality declares, such as motion); every judgment made before is "overall".
    The read-only views gain the column."""
    _execute_statements(
        db,
        f"""
        ALTER TABLE judgments ADD COLUMN dimension TEXT NOT NULL DEFAULT 'overall' {DIMENSION_CHECK};
        CREATE INDEX idx_judgments_dimension ON judgments(dimension);
        DROP VIEW pairwise_votes;
        DROP VIEW ranking_items;
        CREATE VIEW pairwise_votes AS
        SELECT j.id AS judgment_id, j.prompt_id, p.text AS prompt,
               a.generation_id AS generation_a, b.generation_id AS generation_b,
               j.choice, j.strength, ann.kind AS annotator_kind, ann.name AS annotator,
               j.context, j.created_at, j.dimension
        FROM judgments j
        JOIN prompts p ON p.id = j.prompt_id
        JOIN annotators ann ON ann.id = j.annotator_id
        JOIN judgment_items a ON a.judgment_id = j.id AND a.position = 0
        JOIN judgment_items b ON b.judgment_id = j.id AND b.position = 1
        WHERE j.kind = 'pairwise';

        CREATE VIEW ranking_items AS
        SELECT j.id AS judgment_id, j.prompt_id, p.text AS prompt, i.position,
               i.generation_id, i.rank, ann.kind AS annotator_kind, ann.name AS annotator,
               j.created_at, j.dimension
        FROM judgments j
        JOIN prompts p ON p.id = j.prompt_id
        JOIN annotators ann ON ann.id = j.annotator_id
        JOIN judgment_items i ON i.judgment_id = j.id
        WHERE j.kind = 'ranking';
        """
    )


@dataclass(frozen=True)
class Migration:
    name: str
    apply: Callable[[sqlite_utils.Database], None]


MIGRATIONS: tuple[Migration, ...] = (
    Migration("0001_initial", _0001_initial),
    Migration("0002_imports", _0002_imports),
    Migration("0003_views", _0003_views),
    Migration("0004_run_progress", _0004_run_progress),
    Migration("0005_any_modality", _0005_any_modality),
    Migration("0006_reward_models", _0006_reward_models),
    Migration("0007_dimensions", _0007_dimensions),
)

SCHEMA_VERSION = len(MIGRATIONS)
