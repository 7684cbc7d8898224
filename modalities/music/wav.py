"""Audio candidates as WAV files that carry the tokens they were sampled as.

An autoregressive music model (MusicGen's EnCodec codes, the built-in model's note events) is scored on
the tokens it sampled, not on a re-encoding of its audio (EnCodec is lossy: re-encoded codes are other
codes). So every generated clip is a plain 16-bit PCM WAV -- what browsers, players and soundfile read --
with one extra RIFF chunk, ``pltk``, holding those tokens as JSON. Readers skip chunks they do not know
(the RIFF rule), so the file plays everywhere; :func:`read_tokens` gives the tokens back when training.
An imported WAV has no such chunk: :func:`read_tokens` returns None and the adapter says what it does then.
"""
from __future__ import annotations

import io
import json
import struct
from typing import Any

import numpy as np

CHUNK_ID = b"pltk"
MAX_SECONDS = 600.0  # longest clip the app stores (10 minutes)


def encode_wav(audio: np.ndarray, rate: int, tokens: dict[str, Any] | None = None) -> bytes:
    """Mono (or [channels, samples]) float audio in [-1, 1] at ``rate`` Hz as WAV bytes, with ``tokens``
    (JSON-serialisable) in a ``pltk`` chunk when given."""
    import soundfile as sf

    a = np.asarray(audio, dtype=np.float32)
    if a.ndim == 2:
        a = a.T  # soundfile wants [samples, channels]
    elif a.ndim != 1:
        raise ValueError(f"audio must be [samples] or [channels, samples], got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("the audio holds NaN or infinite samples")
    buf = io.BytesIO()
    sf.write(buf, np.clip(a, -1.0, 1.0), int(rate), format="WAV", subtype="PCM_16")
    data = buf.getvalue()
    if tokens is None:
        return data
    payload = json.dumps(tokens, separators=(",", ":")).encode("utf-8")
    chunk = CHUNK_ID + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) % 2 else b"")
    out = bytearray(data + chunk)
    struct.pack_into("<I", out, 4, len(out) - 8)  # the RIFF size covers every chunk
    return bytes(out)


def _chunks(data: bytes):
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        yield cid, data[pos + 8:pos + 8 + size]
        pos += 8 + size + (size % 2)


def read_tokens(data: bytes) -> dict[str, Any] | None:
    """The tokens a generated clip was sampled as, or None (an imported or re-saved WAV)."""
    for cid, body in _chunks(data):
        if cid == CHUNK_ID:
            try:
                out = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                return None
            return out if isinstance(out, dict) else None
    return None


def decode(data: bytes, *, rate: int | None = None, allow_silent: bool = False,
           channels: int | None = None) -> tuple[np.ndarray, int]:
    """(mono float32 samples, sample rate) of an audio file (WAV, FLAC, OGG: what soundfile reads),
    resampled to ``rate`` when given; with ``channels``, [channels, samples] instead (mono repeated,
    or more channels averaged down to mono first when they do not match). Raises ValueError for a file that is not audio, is empty, too long
    or (unless ``allow_silent``: a generated clip may be) silent, naming which."""
    import soundfile as sf

    try:
        audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError, RuntimeError, TypeError for garbage
        raise ValueError(f"not a readable audio file (WAV, FLAC or OGG): {str(e).splitlines()[0][:120]}") from None
    if audio.shape[0] == 0:
        raise ValueError("the audio file holds no samples")
    if audio.shape[0] / sr > MAX_SECONDS:
        raise ValueError(f"the clip lasts {audio.shape[0] / sr:.0f} s; clips up to {MAX_SECONDS:.0f} s are taken")
    mono = audio.mean(axis=1)
    if not np.all(np.isfinite(mono)):
        raise ValueError("the audio holds NaN or infinite samples")
    if not allow_silent and float(np.max(np.abs(mono))) < 1e-4:
        raise ValueError("the clip is silent (peak below -80 dBFS)")
    out = mono
    if channels is not None:
        out = audio.T if audio.shape[1] == channels else np.repeat(mono[None], channels, axis=0)
    if rate is not None and int(rate) != sr:
        import librosa

        out = librosa.resample(np.ascontiguousarray(out), orig_sr=sr, target_sr=int(rate), axis=-1)
        sr = int(rate)
    return np.ascontiguousarray(out, dtype=np.float32), int(sr)
