"""Named exceptions of the preference store.

Every message says what was wrong and what the user can do about it; the CLI
prints them as they are (no traceback) and exits with status 2.
"""
from __future__ import annotations

from pathlib import Path


class StoreError(Exception):
    """Base class for every error the store raises on purpose."""


class DataDirError(StoreError):
    """The data directory cannot be created, read or written."""


class NotADatabaseError(StoreError):
    """The database file exists but is not an SQLite database."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer Palate than this one."""


class SchemaMismatchError(StoreError):
    """The database's migration history does not match this Palate's."""


class UnknownIdError(StoreError, LookupError):
    """A generation, prompt, run, adapter or judgment id does not exist."""


class InvalidJudgmentError(StoreError, ValueError):
    """A vote or ranking that cannot be stored as given."""


class InvalidMediaError(StoreError, ValueError):
    """Media bytes that are not what the candidate's modality says (empty, undecodable, another type)."""


class MediaWriteError(StoreError, OSError):
    """A media file could not be written; nothing was referenced."""


class ImportFormatError(StoreError, ValueError):
    """An import file is unreadable or does not have the expected schema."""


class AlreadyImportedError(StoreError):
    """The same file (by content hash) was imported before."""


class DiskFullError(StoreError, OSError):
    """A write failed for lack of room (full disk, a file-size limit) or a failing disk; SQLite rolled
    the transaction back, so nothing was written and nothing is damaged."""


def _room_note(path: Path) -> str:
    """Why a write may have failed: a file-size limit, a full disk, or neither (a failing disk)."""
    import shutil

    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY:
            return f"a file-size limit of {soft:,} bytes is set for this process (ulimit -f)"
    except (ImportError, OSError, ValueError):
        pass
    try:
        free = shutil.disk_usage(path if path.is_dir() else path.parent).free
        if free < 64 * 1024 * 1024:
            return f"the disk is full ({free / 1e6:.1f} MB free)"
    except OSError:
        pass
    return "the disk refused the write (it may be failing, or a quota is reached)"


def sqlite_write_failure(e: BaseException, path: Path) -> DiskFullError | None:
    """The clear error for an SQLite error that means "could not write" (SQLITE_FULL, SQLITE_IOERR_*),
    or None for any other error."""
    import sqlite3

    if not isinstance(e, sqlite3.OperationalError):
        return None
    name = getattr(e, "sqlite_errorname", "") or ""
    text = str(e)
    if not (name == "SQLITE_FULL" or name.startswith("SQLITE_IOERR") or "disk is full" in text
            or "disk I/O error" in text):
        return None
    path = Path(path)
    return DiskFullError(
        f"could not write to {path}: {_room_note(path)} ({text}). Nothing was written (SQLite rolled the change "
        "back) and the database is not damaged; free some space or lift the limit, then try again")


def file_write_failure(e: OSError, path: Path) -> StoreError:
    """The clear error for a file Palate failed to write (an export, say); nothing of it was kept."""
    import errno

    if e.errno in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", -1)):
        return DiskFullError(f"could not write {path}: {_room_note(Path(path))} ({e.strerror or e}); nothing was "
                             "written, free some space or lift the limit and try again")
    return StoreError(f"could not write {path}: {e.strerror or e}; nothing was written")
