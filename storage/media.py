"""Content-addressed media files under ``<data dir>/media``.

A file's name is the sha256 of its bytes (``media/ab/abcdef....png``), so the
same image stored twice takes the space once and a database row can name a file
by hash alone. Writes go to a temporary file in ``media/.tmp`` on the same file
system, are flushed and fsynced, and only then renamed into place: a crash or a
full disk leaves at most a ``.part`` file there (removed by ``db check
--repair``), never a truncated file under a real hash.
"""
from __future__ import annotations

import errno
import io
import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import MediaWriteError

MEDIA_DIRNAME = "media"
TMP_DIRNAME = ".tmp"
_CHUNK = 1 << 20

# The extensions Palate writes. Unknown types are stored as ".bin".
MIME_EXTENSIONS: dict[str, str] = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/flac": ".flac",
    "audio/mpeg": ".mp3",
    "audio/ogg": ".ogg",
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "text/plain": ".txt",
    "application/json": ".json",
    "application/octet-stream": ".bin",
}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def extension_for(mime: str) -> str:
    return MIME_EXTENSIONS.get(mime.lower(), ".bin")


def sniff_mime(data: bytes) -> str:
    """Guess the type of encoded media from its first bytes."""
    head = data[:16]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head.startswith(b"GIF8"):
        return "image/gif"
    if head.startswith(b"fLaC"):
        return "audio/flac"
    if head.startswith(b"OggS"):
        return "audio/ogg"
    if head[4:8] == b"ftyp":
        return "video/mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm"
    if head.startswith(b"ID3") or head[:2] == b"\xff\xfb":
        return "audio/mpeg"
    try:
        data[:4096].decode("utf-8")
    except UnicodeDecodeError:
        return "application/octet-stream"
    return "text/plain"


# the MIME family of the built-in modalities' candidates (others say theirs: ``family=``)
_MEDIA_OF = {"image": "image/", "music": "audio/", "video": "video/", "text": "text/"}


def check_media(head: bytes, modality: str, *, data: bytes | None = None, what: str = "the candidate",
                family: str | None = None, imported: bool = False) -> str:
    """The MIME type of a candidate's media, after checking it is what its modality says: not empty, of
    the modality's MIME ``family`` (given, or known for the built-in modalities), and decodable
    (images, audio, text). ``head`` is the first 4 KiB; ``data`` the whole (needed to decode; left out
    for large files, which are then sniffed only). ``imported``: media from outside (a dataset import), where
    a silent audio clip is refused too (a model may generate one). Raises :class:`InvalidMediaError`."""
    from .errors import InvalidMediaError

    family = family or _MEDIA_OF.get(modality)
    if family == "text/":  # an empty answer is an answer; text must be UTF-8 (a cut at 4 KiB may split a char)
        try:
            (data if data is not None else head).decode("utf-8", errors="strict" if data is not None else "ignore")
        except UnicodeDecodeError:
            raise InvalidMediaError(f"{what} is not UTF-8 text; nothing was stored") from None
        return "text/plain"
    if not head:
        raise InvalidMediaError(f"{what} is empty (0 bytes); nothing was stored")
    mime = sniff_mime(head)
    if family in ("image/", "audio/", "video/") and not mime.startswith(family):  # the families sniffing knows
        shown = "not a recognised media file" if mime == "application/octet-stream" else mime
        raise InvalidMediaError(f"{what} is {shown}, but {modality} candidates must be {family.rstrip('/')} files; "
                                "nothing was stored")
    if data is None:
        return mime
    if mime.startswith("image/"):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()  # decode the pixels, not only the header: a truncated file fails here
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise InvalidMediaError(f"{what} is not a readable image ({e}); nothing was stored") from None
    elif mime.startswith("audio/"):
        try:
            import soundfile

            samples, _ = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)  # decode it all
        except ImportError:  # pragma: no cover - soundfile is a dependency
            return mime
        except Exception as e:  # soundfile raises RuntimeError / LibsndfileError for undecodable audio
            raise InvalidMediaError(f"{what} is not readable audio ({e}); nothing was stored") from None
        if samples.size == 0:
            raise InvalidMediaError(f"{what} holds no audio samples; nothing was stored")
        if imported and float(abs(samples).max()) < 1e-4:
            raise InvalidMediaError(f"{what} is silent (peak below -80 dBFS); nothing was stored")
    return mime


@dataclass(frozen=True)
class StoredMedia:
    sha256: str
    relpath: str  # relative to the data directory, with forward slashes
    mime: str
    size: int


def _describe_oserror(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on device"
    if e.errno == errno.EFBIG:
        return "file too large for this file system or process limit"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.EROFS:
        return "read-only file system"
    return e.strerror or str(e)


class MediaStore:
    """Content-addressed files below ``data_dir / "media"``."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / MEDIA_DIRNAME
        self.tmp_dir = self.root / TMP_DIRNAME

    # -- paths -------------------------------------------------------------
    def relpath_for(self, sha256: str, mime: str) -> str:
        return f"{MEDIA_DIRNAME}/{sha256[:2]}/{sha256}{extension_for(mime)}"

    def abspath(self, relpath: str) -> Path:
        """Resolve a stored relative path, refusing anything outside the data dir."""
        p = (self.data_dir / relpath).resolve()
        root = self.data_dir.resolve()
        if root != p and root not in p.parents:
            raise ValueError(f"media path {relpath!r} points outside the data directory")
        return p

    # -- writing -----------------------------------------------------------
    def put_bytes(self, data: bytes, mime: str | None = None) -> StoredMedia:
        """Store ``data`` and return where it lives. Idempotent per content."""
        mime = mime or sniff_mime(data)
        sha = sha256_bytes(data)
        existing = self._existing(sha, mime, len(data))
        if existing is not None:
            return existing
        tmp, written_sha, size = self._write_temp(lambda f: f.write(data), mime, len(data))
        return self._finalize(tmp, written_sha, mime, size)

    def put_file(self, path: Path, mime: str | None = None) -> StoredMedia:
        """Copy an existing file into the store, hashing the bytes as they are
        copied (so the name always matches what was stored, even if the source
        changes meanwhile)."""
        path = Path(path)
        with open(path, "rb") as src:
            head = src.read(4096)
        mime = mime or sniff_mime(head)

        def write(f: BinaryIO) -> None:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, f, _CHUNK)

        tmp, sha, size = self._write_temp(write, mime, None)
        return self._finalize(tmp, sha, mime, size)

    def _existing(self, sha: str, mime: str, size: int) -> StoredMedia | None:
        rel = self.relpath_for(sha, mime)
        final = self.data_dir / rel
        try:
            if final.stat().st_size != size:
                return None
            # Refresh the time stamp: `db check --repair` removes only unreferenced
            # files older than an hour, and this one is about to be referenced.
            os.utime(final)
        except OSError:
            return None
        return StoredMedia(sha, rel, mime, size)

    def _write_temp(self, write, mime: str, expected_size: int | None) -> tuple[Path, str, int]:
        """Write to ``media/.tmp/<random>.part``, fsynced; return it, its sha256 and size."""
        tmp = self.tmp_dir / f"{uuid.uuid4().hex}.part"
        try:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            size = tmp.stat().st_size
            if expected_size is not None and size != expected_size:
                raise OSError(errno.EIO, f"wrote {size} bytes, expected {expected_size}")
            return tmp, sha256_file(tmp), size
        except OSError as e:
            _unlink_quietly(tmp)
            raise MediaWriteError(
                f"could not store a {mime} file in {self.root}: {_describe_oserror(e)}; nothing was recorded. "
                "Free some space or choose another --data-dir, then retry."
            ) from e

    def _finalize(self, tmp: Path, sha: str, mime: str, size: int) -> StoredMedia:
        """Rename a written temp file to its content address (atomic)."""
        existing = self._existing(sha, mime, size)
        if existing is not None:
            _unlink_quietly(tmp)
            return existing
        rel = self.relpath_for(sha, mime)
        final = self.data_dir / rel
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        except OSError as e:
            _unlink_quietly(tmp)
            raise MediaWriteError(
                f"could not store a {mime} file in {self.root}: {_describe_oserror(e)}; nothing was recorded."
            ) from e
        return StoredMedia(sha, rel, mime, size)

    def read_bytes(self, relpath: str) -> bytes:
        return self.abspath(relpath).read_bytes()

    def iter_files(self):
        """Every stored media file (not temporary ones), as relative paths."""
        if not self.root.exists():
            return
        for sub in sorted(self.root.iterdir()):
            if not sub.is_dir() or sub.name == TMP_DIRNAME:
                continue
            for f in sorted(sub.iterdir()):
                if f.is_file():
                    yield f"{MEDIA_DIRNAME}/{sub.name}/{f.name}"

    def iter_temp_files(self):
        if self.tmp_dir.exists():
            yield from sorted(p for p in self.tmp_dir.iterdir() if p.is_file())


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
