"""Where Palate keeps its data.

Precedence, highest first: an explicit ``--data-dir`` (passed in as
``explicit``), the ``PALATE_DATA_DIR`` environment variable, then the per-user
data directory of the platform (``~/.local/share/palate`` on Linux, via
platformdirs).
"""
from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

from platformdirs import user_data_dir

from .errors import DataDirError

ENV_VAR = "PALATE_DATA_DIR"
DB_FILENAME = "palate.db"


def default_data_dir() -> Path:
    """The per-user data directory, ignoring overrides."""
    return Path(user_data_dir("palate", appauthor=False))


def resolve_data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the data directory to use (not created yet)."""
    if explicit is not None and str(explicit) != "":
        return Path(explicit).expanduser().resolve()
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    return default_data_dir()


def ensure_writable_dir(path: Path, *, what: str = "data directory") -> Path:
    """Create ``path`` if needed and prove that files can be written in it.

    ``os.access`` is not enough (it says yes to root on a read-only mount), so
    a probe file is created and removed.
    """
    hint = f"choose another with --data-dir or the {ENV_VAR} environment variable"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DataDirError(f"{what} {path} exists but is not a directory; {hint}") from None
    except OSError as e:
        raise DataDirError(f"cannot create {what} {path}: {e.strerror or e}; {hint}") from None
    if not path.is_dir():
        raise DataDirError(f"{what} {path} exists but is not a directory; {hint}")
    probe = path / f".palate-write-probe-{uuid.uuid4().hex}"
    try:
        with open(probe, "wb") as f:
            f.write(b"ok")
    except OSError as e:
        reason = {
            errno.EACCES: "permission denied",
            errno.EPERM: "permission denied",
            errno.EROFS: "read-only file system",
            errno.ENOSPC: "no space left on device",
        }.get(e.errno or 0, e.strerror or str(e))
        raise DataDirError(f"{what} {path} is not writable ({reason}); {hint}") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return path
