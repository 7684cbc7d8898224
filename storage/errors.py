"""Named exceptions of the preference store.

Every message says what was wrong and what the user can do about it; the CLI
prints them as they are (no traceback) and exits with status 2.
"""
from __future__ import annotations


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


class MediaWriteError(StoreError, OSError):
    """A media file could not be written; nothing was referenced."""


class ImportFormatError(StoreError, ValueError):
    """An import file is unreadable or does not have the expected schema."""


class AlreadyImportedError(StoreError):
    """The same file (by content hash) was imported before."""
