"""The store's row types, their conversion from SQL rows, and the checks and filters the store's
query modules share."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from .schema import MODALITIES


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _dumps(obj: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(obj or {}), sort_keys=True, separators=(",", ":"), default=str)


# ---------------------------------------------------------------------------
# Row types
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Generation:
    id: int
    prompt_id: int
    prompt: str
    modality: str
    model: str
    model_revision: str | None
    adapter_id: int | None
    seed: int | None
    params: dict[str, Any]
    media_sha256: str
    media_path: str  # relative to the data directory
    mime: str
    cache_path: str | None
    run_id: int | None
    created_at: str


@dataclass(frozen=True)
class Judgment:
    id: int
    kind: str  # "pairwise" | "ranking"
    prompt_id: int
    annotator: str
    annotator_kind: str
    choice: str | None
    strength: float | None
    context: str
    created_at: str
    generation_ids: tuple[int, ...]  # by position (A, B for pairwise)
    ranks: tuple[int | None, ...]  # by position; rankings only
    dimension: str = "overall"  # what the judgment is about (overall, prompt, quality, style, ...)


@dataclass(frozen=True)
class PreferencePair:
    """One training pair, winner first."""

    prompt_id: int
    prompt: str
    winner_id: int
    loser_id: int
    label: float  # share of votes for the winner, in (0.5, 1]
    n_votes: int
    judgment_ids: tuple[int, ...]


@dataclass(frozen=True)
class RankedGroup:
    """A user's ranking of K candidates, best first (for listwise losses)."""

    judgment_id: int
    prompt_id: int
    prompt: str
    generation_ids: tuple[int, ...]  # best first; unranked candidates last
    ranks: tuple[int | None, ...]


@dataclass(frozen=True)
class SoftLabel:
    prompt_id: int
    prompt: str
    a_id: int  # the smaller generation id
    b_id: int
    p_a: float  # share of votes preferring a (ties count half)
    n_votes: int
    judgment_ids: tuple[int, ...]


@dataclass(frozen=True)
class Run:
    id: int
    name: str | None
    modality: str
    method: str
    base_model: str
    base_revision: str | None
    parent_adapter_id: int | None
    config: dict[str, Any]
    run_dir: str | None
    status: str
    pid: int | None
    exit_code: int | None
    error: str | None
    metrics_path: str | None
    data_hash: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str
    step: int | None = None  # the last finished step (the trainer updates it as it goes)
    total_steps: int | None = None
    last_metrics: dict[str, Any] | None = None  # that step's metrics (loss, reward accuracy, ...)


@dataclass(frozen=True)
class Adapter:
    id: int
    name: str
    modality: str
    base_model: str
    base_revision: str | None
    method: str | None
    run_id: int | None
    path: str
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""


@dataclass(frozen=True)
class RewardModelRecord:
    id: int
    name: str
    version: int
    modality: str
    base_model: str
    base_revision: str | None
    backbone: str
    dimensions: tuple[str, ...]
    path: str  # relative to the data directory
    data_hash: str | None
    metrics: dict[str, Any]
    created_at: str

    @property
    def label(self) -> str:
        return f"{self.name}@v{self.version}"


def _reward_model(r: Mapping[str, Any]) -> RewardModelRecord:
    d = dict(r)
    d["dimensions"] = tuple(json.loads(d["dimensions"]))
    d["metrics"] = json.loads(d["metrics"] or "{}")
    return RewardModelRecord(**d)


def _generation(r: Mapping[str, Any]) -> Generation:
    return Generation(
        id=r["id"],
        prompt_id=r["prompt_id"],
        prompt=r["prompt"],
        modality=r["modality"],
        model=r["model"],
        model_revision=r["model_revision"],
        adapter_id=r["adapter_id"],
        seed=r["seed"],
        params=json.loads(r["params"] or "{}"),
        media_sha256=r["media_sha256"],
        media_path=r["media_path"],
        mime=r["mime"],
        cache_path=r["cache_path"],
        run_id=r["run_id"],
        created_at=r["created_at"],
    )


def _run(r: Mapping[str, Any]) -> Run:
    d = dict(r)
    d["config"] = json.loads(d["config"] or "{}")
    d["last_metrics"] = json.loads(d["last_metrics"]) if d.get("last_metrics") else None
    return Run(**d)


def _adapter(r: Mapping[str, Any]) -> Adapter:
    d = dict(r)
    d["metadata"] = json.loads(d["metadata"] or "{}")
    return Adapter(**d)



def check_modality(modality: str) -> None:
    """A modality is named by a lower-case identifier (which ones exist is the registry's business:
    ``modalities.registry``; the store keeps whatever it is given)."""

    if not isinstance(modality, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", modality):
        raise ValueError(f"unknown modality {modality!r}: modality names are lower-case identifiers such as "
                         f"{', '.join(MODALITIES)}")


DEFAULT_DIMENSION = "overall"


def check_dimension(dimension: str) -> str:
    """A judgment's dimension is a lower-case identifier (which ones a modality offers is its spec's
    business: ``ModalitySpec.dimensions``)."""
    if not isinstance(dimension, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", dimension):
        raise ValueError(f"dimension {dimension!r} is not a dimension name (lower-case identifiers such as "
                         "overall, prompt, quality, style)")
    return dimension


def sql_filters(*, alias: str, **values: Any) -> tuple[str, list[Any]]:
    clauses, params = [], []
    for k, v in values.items():
        if v is not None:
            clauses.append(f"{alias}.{k} = ?")
            params.append(v)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params
