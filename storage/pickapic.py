"""The Pick-a-Pic v2 row shape: writing rows that v2 readers read right, and reading v2 shards.

Written rows carry **v2's columns with v2's types, in v2's order** (``yuvalkirstain/pickapic_v2``:
``are_different`` bool, ``best_image_uid``, ``caption``, ``created_at`` timestamp[ns], ``has_label``,
``image_{0,1}_uid``, ``image_{0,1}_url``, ``jpg_{0,1}`` binary, ``label_{0,1}`` float64, ``model_{0,1}``,
``ranking_id``, ``user_id``, ``num_example_per_prompt`` int64, ``__index_level_0__`` int64), so a file
concatenates with a real v2 shard (``datasets.concatenate_datasets``), followed by Palate's
provenance columns (seeds, settings, mime types, modality, choice, annotator), which v2 readers
ignore and a concatenation fills with nulls.

Labels are what the v2 loaders expect: 1/0 and 0/1 for a choice, 0.5/0.5 for a tie (as v2 has).
Votes v2 cannot express are **left out** and counted: "both bad" (0/0 would be trained as "image 1
wins" by the DiffusionDPO loader, which keeps rows whose ``label_0`` is 0 or 1) and soft labels
(diffusers' research loader reads any ``label_0`` other than 0 as "image 0 wins").

Audio and video candidates use ``media_0``/``media_1`` instead of ``jpg_0``/``jpg_1``.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import datetime, timezone
from typing import Any

V2_COLUMNS: tuple[str, ...] = (
    "are_different", "best_image_uid", "caption", "created_at", "has_label", "image_0_uid", "image_0_url",
    "image_1_uid", "image_1_url", "jpg_0", "jpg_1", "label_0", "label_1", "model_0", "model_1", "ranking_id",
    "user_id", "num_example_per_prompt", "__index_level_0__",
)
PALATE_COLUMNS: tuple[str, ...] = (
    "seed_0", "seed_1", "params_0", "params_1", "mime_0", "mime_1", "modality", "choice", "annotator",
    "annotator_kind",
)
LABELS = {"a": (1.0, 0.0), "b": (0.0, 1.0), "tie": (0.5, 0.5)}
LEFT_OUT = {
    "both_bad": "both-bad (Pick-a-Pic v2 has no label for it; its loaders would train 0/0 as a win)",
    "soft": "soft label (v2 loaders read labels as hard wins)",
}


def schema(media_prefix: str):
    import pyarrow as pa

    typed = {
        "are_different": pa.bool_(), "has_label": pa.bool_(), "created_at": pa.timestamp("ns"),
        f"{media_prefix}_0": pa.binary(), f"{media_prefix}_1": pa.binary(), "label_0": pa.float64(),
        "label_1": pa.float64(), "ranking_id": pa.int64(), "user_id": pa.int64(),
        "num_example_per_prompt": pa.int64(), "__index_level_0__": pa.int64(), "seed_0": pa.int64(),
        "seed_1": pa.int64(),
    }
    names = [f"{media_prefix}_{c[-1]}" if c.startswith("jpg_") else c for c in V2_COLUMNS] + list(PALATE_COLUMNS)
    return pa.schema([(n, typed.get(n, pa.string())) for n in names])


def hard_choice(choice: str, strength: float | None) -> str | None:
    """The vote as a v2 label ("a", "b" or "tie"), or None when v2 cannot express it."""
    if choice == "both_bad":
        return None
    if strength is None:
        return choice
    return {1.0: "a", 0.0: "b"}.get(float(strength))  # a strength of exactly 1 or 0 is a hard vote


def left_out_reason(choice: str) -> str:
    return LEFT_OUT["both_bad"] if choice == "both_bad" else LEFT_OUT["soft"]


def utc_timestamp(iso: str) -> datetime:
    """A stored ISO time as v2's tz-naive UTC timestamp."""
    t = datetime.fromisoformat(iso)
    if t.tzinfo is not None:
        t = t.astimezone(timezone.utc).replace(tzinfo=None)
    return t


def iso_from_timestamp(value: Any) -> str | None:
    """A file's time (v2: tz-naive UTC) as the store's ISO form (UTC, microseconds)."""
    if value is None:
        return None
    if hasattr(value, "to_pydatetime"):  # pandas.Timestamp
        value = value.to_pydatetime()
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).isoformat(timespec="microseconds")
    return str(value)


def stable_id(*parts: Any) -> int:
    """A non-negative int64 from content, the same in every store (for ``ranking_id``: the vote, and
    ``user_id``: the annotator's name), so export -> import -> export gives identical rows."""
    return int(hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:15], 16)


def finish(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fill the columns that depend on the whole file: rows per caption and the row index."""
    per_caption = Counter(r["caption"] for r in rows)
    for i, r in enumerate(rows):
        r["num_example_per_prompt"] = per_caption[r["caption"]]
        r["__index_level_0__"] = i
    return rows


def row(*, prefix: str, caption: str, media_0: bytes, media_1: bytes, gen_0: Any, gen_1: Any, choice: str,
        annotator: str, annotator_kind: str, created_at: str, modality: str) -> dict[str, Any]:
    l0, l1 = LABELS[choice]
    best = gen_0.media_sha256 if l0 > l1 else gen_1.media_sha256 if l1 > l0 else ""
    return {
        "are_different": gen_0.media_sha256 != gen_1.media_sha256,
        "best_image_uid": best,
        "caption": caption,
        "created_at": utc_timestamp(created_at),
        "has_label": True,
        "image_0_uid": gen_0.media_sha256,
        "image_0_url": None,
        "image_1_uid": gen_1.media_sha256,
        "image_1_url": None,
        f"{prefix}_0": media_0,
        f"{prefix}_1": media_1,
        "label_0": l0,
        "label_1": l1,
        "model_0": gen_0.model,
        "model_1": gen_1.model,
        "ranking_id": stable_id(caption, gen_0.media_sha256, gen_1.media_sha256, choice, annotator, created_at),
        "user_id": stable_id(annotator_kind, annotator),
        "seed_0": gen_0.seed,
        "seed_1": gen_1.seed,
        "params_0": json.dumps(gen_0.params, sort_keys=True),
        "params_1": json.dumps(gen_1.params, sort_keys=True),
        "mime_0": gen_0.mime,
        "mime_1": gen_1.mime,
        "modality": modality,
        "choice": choice.replace("_", "-"),
        "annotator": annotator,
        "annotator_kind": annotator_kind,
    }
