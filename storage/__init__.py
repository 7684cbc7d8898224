"""storage: the SQLite preference store and the media files it references.

Imports nothing from the other Palate packages (and nothing heavy at import
time): ``app``, ``alignment`` and scripts all use it.
"""
from .errors import (
    AlreadyImportedError,
    DataDirError,
    DiskFullError,
    ImportFormatError,
    InvalidJudgmentError,
    InvalidMediaError,
    MediaWriteError,
    NotADatabaseError,
    SchemaMismatchError,
    SchemaTooNewError,
    StoreError,
    UnknownIdError,
)
from .paths import ENV_VAR, default_data_dir, resolve_data_dir
from .schema import MODALITIES, SCHEMA_VERSION
from .records import DEFAULT_DIMENSION, RewardModelRecord, check_dimension
from .store import Adapter, Generation, Judgment, PreferencePair, RankedGroup, Run, SoftLabel, Store

__all__ = [
    "Adapter",
    "AlreadyImportedError",
    "DEFAULT_DIMENSION",
    "DataDirError",
    "DiskFullError",
    "ENV_VAR",
    "Generation",
    "ImportFormatError",
    "InvalidJudgmentError",
    "InvalidMediaError",
    "Judgment",
    "MODALITIES",
    "MediaWriteError",
    "NotADatabaseError",
    "PreferencePair",
    "RankedGroup",
    "RewardModelRecord",
    "Run",
    "SCHEMA_VERSION",
    "SchemaMismatchError",
    "SchemaTooNewError",
    "SoftLabel",
    "Store",
    "StoreError",
    "UnknownIdError",
    "check_dimension",
    "default_data_dir",
    "resolve_data_dir",
]
