"""Clips as H.264 MP4 (what every browser plays), through the ffmpeg binary ``imageio-ffmpeg`` ships.

A generated clip carries, after the movie, one extra top-level box of its own (``uuid`` type, Palate's
id): JSON with the generation record and, for training, the exact latent it was sampled as (the MP4's
pixels are lossy; re-encoding them would train on another latent). Players skip boxes they do not
know. :func:`read_box` gets it back; an imported clip has none and is encoded from its pixels.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

BOX_ID = bytes.fromhex("70616c6174652d636c69702d6d657461")  # "palate-clip-meta"
MAX_FRAMES = 1024
MAX_SIDE = 4096


class NotAVideo(ValueError):
    """The bytes are not a video ffmpeg can read."""


def encode(frames: np.ndarray, fps: float, meta: dict[str, Any] | None = None, *, crf: int = 12) -> bytes:
    """``frames`` [F, H, W, 3] uint8 (even sides) -> H.264 MP4 bytes (yuv420p, moov first), with ``meta``
    as a Palate box after the movie."""
    import imageio_ffmpeg

    frames = np.ascontiguousarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [frames, height, width, 3], got {frames.dtype} {frames.shape}")
    f, h, w, _ = frames.shape
    if f < 1 or h % 2 or w % 2:
        raise ValueError(f"an H.264 clip needs at least one frame and even sides; got {f} frames of {w}x{h}")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "clip.mp4")
        writer = imageio_ffmpeg.write_frames(
            path, (w, h), fps=float(fps), codec="libx264", quality=None, macro_block_size=2,
            output_params=["-crf", str(int(crf)), "-preset", "medium", "-movflags", "+faststart"],
            ffmpeg_log_level="error")
        writer.send(None)
        for frame in frames:
            writer.send(frame)
        writer.close()
        data = Path(path).read_bytes()
    if meta is not None:
        data += _box(json.dumps(meta, sort_keys=True).encode())
    return data


def _box(payload: bytes) -> bytes:
    return struct.pack(">I", 8 + 16 + len(payload)) + b"uuid" + BOX_ID + payload


def read_box(data: bytes) -> dict[str, Any] | None:
    """The Palate box's JSON of MP4 bytes, or None (imported clips, damaged boxes)."""
    pos = 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        header = 8
        if size == 1 and pos + 16 <= len(data):  # 64-bit size
            size, header = struct.unpack(">Q", data[pos + 8:pos + 16])[0], 16
        elif size == 0:  # to the end of the file
            size = len(data) - pos
        if size < header or pos + size > len(data):
            return None
        if kind == b"uuid" and data[pos + header:pos + header + 16] == BOX_ID:
            try:
                out = json.loads(data[pos + header + 16:pos + size])
            except (ValueError, UnicodeDecodeError):
                return None
            return out if isinstance(out, dict) else None
        pos += size
    return None


def decode(data: bytes, *, max_frames: int = MAX_FRAMES) -> tuple[np.ndarray, float]:
    """MP4 (or any video ffmpeg reads) bytes -> (frames [F, H, W, 3] uint8, fps). Raises :class:`NotAVideo`."""
    import imageio_ffmpeg

    if not data:
        raise NotAVideo("the file is empty, not a video")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "clip")
        Path(path).write_bytes(data)
        try:
            reader = imageio_ffmpeg.read_frames(path)
            meta = next(reader)
            w, h = meta["size"]
            frames = []
            for raw in reader:
                frames.append(np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3))
                if len(frames) > max_frames:
                    reader.close()
                    raise NotAVideo(f"the clip has more than {max_frames} frames")
        except NotAVideo:
            raise
        except (RuntimeError, OSError, StopIteration, KeyError, ValueError) as e:
            raise NotAVideo(f"not a video ffmpeg can read ({str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__})") from None
    if not frames:
        raise NotAVideo("the file holds no video frames")
    fps = float(meta.get("fps") or 0) or 8.0
    return np.stack(frames), fps


def is_video(data: bytes) -> bool:
    """Cheap check of an MP4/QuickTime/WebM/Matroska header (before the full decode)."""
    return len(data) >= 12 and (data[4:8] == b"ftyp" or data[:4] == b"\x1aE\xdf\xa3")
