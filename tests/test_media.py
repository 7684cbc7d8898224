"""Content-addressed media: atomic writes, and a full disk loses nothing and references nothing."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest

from storage import MediaWriteError, Store
from storage.media import MediaStore, sniff_mime
from tests.conftest import ROOT, png_bytes


def test_put_is_idempotent_and_named_by_hash(tmp_path):
    m = MediaStore(tmp_path)
    a = m.put_bytes(b"hello", "text/plain")
    b = m.put_bytes(b"hello", "text/plain")
    assert a == b and a.relpath == f"media/{a.sha256[:2]}/{a.sha256}.txt"
    assert (tmp_path / a.relpath).read_bytes() == b"hello"
    src = tmp_path / "in.png"
    src.write_bytes(png_bytes((1, 2, 3)))
    c = m.put_file(src)
    assert c.mime == "image/png" and (tmp_path / c.relpath).read_bytes() == src.read_bytes()
    assert list(m.iter_temp_files()) == []


def test_paths_outside_the_data_dir_are_refused(tmp_path):
    with pytest.raises(ValueError, match="outside the data directory"):
        MediaStore(tmp_path).abspath("../../etc/passwd")


@pytest.mark.parametrize(
    "data, mime",
    [(png_bytes((0, 0, 0)), "image/png"), (b"\xff\xd8\xff\xe0rest", "image/jpeg"), (b"RIFF\x00\x00\x00\x00WAVEfmt ", "audio/wav"),
     (b"\x00\x00\x00\x18ftypmp42", "video/mp4"), (b"plain text answer", "text/plain"), (b"\xff\xfe\x00\x80\x81", "application/octet-stream")],
)
def test_sniff_mime(data, mime):
    assert sniff_mime(data) == mime


def test_disk_full_during_write_records_nothing(store, monkeypatch):
    """ENOSPC in the middle of writing: no file under a hash, no temp file, no row."""
    import builtins

    real_open = builtins.open

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *args, **kw):
        f = real_open(path, mode, *args, **kw)
        return FullDisk(f) if str(path).endswith(".part") and "w" in mode else f

    monkeypatch.setattr(builtins, "open", fake_open)
    with pytest.raises(MediaWriteError, match="no space left on device; nothing was recorded"):
        store.add_generation(prompt="p", modality="image", model="m", media=png_bytes((9, 9, 9)))
    monkeypatch.undo()
    assert store.query("SELECT COUNT(*) AS n FROM generations")[0]["n"] == 0
    assert store.query("SELECT COUNT(*) AS n FROM media")[0]["n"] == 0
    assert list(store.media.iter_files()) == []
    assert list(store.media.iter_temp_files()) == []


def test_real_write_limit_in_a_subprocess(data_dir):
    """A real failing write (RLIMIT_FSIZE makes write() fail with EFBIG past the limit)."""
    Store.open(data_dir).close()
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        from storage import Store, MediaWriteError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        import io, os
        from PIL import Image
        buf = io.BytesIO()
        Image.frombytes("RGB", (400, 400), os.urandom(400 * 400 * 3)).save(buf, "PNG")  # ~480 kB, incompressible
        noise_png = buf.getvalue()
        s = Store.open({str(data_dir)!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        try:
            s.add_generation(prompt="p", modality="image", model="m", media=noise_png)
        except MediaWriteError as e:
            print("REFUSED:", e)
            sys.exit(0)
        sys.exit(1)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "REFUSED" in proc.stdout and "nothing was recorded" in proc.stdout
    with Store.open(data_dir) as s:
        assert s.query("SELECT COUNT(*) AS n FROM generations")[0]["n"] == 0
        assert list(s.media.iter_files()) == [] and list(s.media.iter_temp_files()) == []
        from storage.integrity import check_store

        assert check_store(s).ok


def test_media_written_before_a_crash_is_an_orphan_the_check_removes(store):
    stored = store.media.put_bytes(png_bytes((4, 4, 4)))  # as if the process died before its commit
    from storage.integrity import check_store

    report = check_store(store, repair=True)
    assert any("unreferenced media file" in p.message for p in report.problems)
    assert (store.data_dir / stored.relpath).exists(), "a fresh file may belong to a write in progress"
    old = 1_000_000_000
    os.utime(store.data_dir / stored.relpath, (old, old))
    report = check_store(store, repair=True)
    assert not (store.data_dir / stored.relpath).exists()
    assert report.repairs


def test_audio_is_decoded_whole_and_silent_imports_are_refused(tmp_path):
    import numpy as np

    from modalities.music import wav
    from storage import InvalidMediaError

    tone = wav.encode_wav(0.5 * np.sin(np.arange(8000) / 5.0), 8000)
    silent = wav.encode_wav(np.zeros(8000), 8000)
    with Store.open(tmp_path / "d") as store:
        assert store.put_media(tone, "music", imported=True).mime == "audio/wav"
        assert store.put_media(silent, "music").mime == "audio/wav"  # a model may write an empty melody
        with pytest.raises(InvalidMediaError, match="silent"):
            store.put_media(silent, "music", imported=True)
        with pytest.raises(InvalidMediaError, match="not readable audio"):
            store.put_media(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk", "music")  # a WAV header over garbage
