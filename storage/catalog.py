"""Training runs, the adapters they make and reward models: a mixin of :class:`storage.Store`."""
from __future__ import annotations

from typing import Any, Mapping

from .errors import UnknownIdError
from .records import (Adapter, RewardModelRecord, Run, _adapter, _dumps, _reward_model, _run,
                      check_modality as _check_modality, now_iso)
from .schema import RUN_STATUSES


class CatalogMixin:
    """Runs (queued, running, finished, with their progress), adapters (named, with provenance) and
    reward models (named, versioned)."""

    # -- runs --------------------------------------------------------------
    _RUN_FIELDS = (
        "name",
        "run_dir",
        "status",
        "pid",
        "exit_code",
        "error",
        "metrics_path",
        "data_hash",
        "started_at",
        "finished_at",
        "config",
        "step",
        "total_steps",
        "last_metrics",
    )

    def create_run(
        self,
        *,
        modality: str,
        method: str,
        base_model: str,
        config: Mapping[str, Any],
        base_revision: str | None = None,
        parent_adapter_id: int | None = None,
        run_dir: str | None = None,
        name: str | None = None,
        data_hash: str | None = None,
    ) -> Run:
        _check_modality(modality)
        now = now_iso()
        with self.write() as db:
            if parent_adapter_id is not None:
                self._require("adapters", parent_adapter_id, "adapter")
            cur = db.execute(
                "INSERT INTO runs (name, modality, method, base_model, base_revision, parent_adapter_id, config,"
                " run_dir, status, data_hash, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
                (name, modality, method, base_model, base_revision, parent_adapter_id, _dumps(config), run_dir,
                 data_hash, now, now),
            )
            rid = int(cur.lastrowid)
        return self.get_run(rid)

    def update_run(self, run_id: int, **fields: Any) -> Run:
        """Change a run's status, pid, exit code, error, paths or timestamps."""
        unknown = set(fields) - set(self._RUN_FIELDS)
        if unknown:
            raise ValueError(f"cannot update run field(s) {sorted(unknown)}; allowed: {', '.join(self._RUN_FIELDS)}")
        if "status" in fields and fields["status"] not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {', '.join(RUN_STATUSES)}, not {fields['status']!r}")
        for key in ("config", "last_metrics"):
            if key in fields and fields[key] is not None:
                fields[key] = _dumps(fields[key])
        fields["updated_at"] = now_iso()
        with self.write() as db:
            self._require("runs", run_id, "run")
            sets = ", ".join(f"{k} = ?" for k in fields)
            db.execute(f"UPDATE runs SET {sets} WHERE id = ?", (*fields.values(), int(run_id)))
        return self.get_run(run_id)

    def get_run(self, run_id: int) -> Run:
        rows = self.query("SELECT * FROM runs WHERE id = ?", (int(run_id),))
        if not rows:
            raise UnknownIdError(self._unknown_message("run", "runs", int(run_id)))
        return _run(rows[0])

    def list_runs(self, *, status: str | None = None) -> list[Run]:
        if status is not None:
            return [_run(r) for r in self.query("SELECT * FROM runs WHERE status = ? ORDER BY id", (status,))]
        return [_run(r) for r in self.query("SELECT * FROM runs ORDER BY id")]

    # -- adapters ----------------------------------------------------------
    def add_adapter(
        self,
        *,
        name: str,
        modality: str,
        base_model: str,
        path: str,
        base_revision: str | None = None,
        method: str | None = None,
        run_id: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Adapter:
        _check_modality(modality)
        with self.write() as db:
            if run_id is not None:
                self._require("runs", run_id, "run")
            if db.execute("SELECT 1 FROM adapters WHERE name = ?", (name,)).fetchone():
                raise ValueError(f"an adapter named {name!r} already exists; pick another name")
            cur = db.execute(
                "INSERT INTO adapters (name, modality, base_model, base_revision, method, run_id, path, metadata,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, modality, base_model, base_revision, method, run_id, path, _dumps(metadata), now_iso()),
            )
            aid = int(cur.lastrowid)
        return self.get_adapter(aid)

    def get_adapter(self, adapter_id: int) -> Adapter:
        rows = self.query("SELECT * FROM adapters WHERE id = ?", (int(adapter_id),))
        if not rows:
            raise UnknownIdError(self._unknown_message("adapter", "adapters", int(adapter_id)))
        return _adapter(rows[0])

    def list_adapters(self, *, modality: str | None = None) -> list[Adapter]:
        if modality is not None:
            rows = self.query("SELECT * FROM adapters WHERE modality = ? ORDER BY id", (modality,))
        else:
            rows = self.query("SELECT * FROM adapters ORDER BY id")
        return [_adapter(r) for r in rows]

    def delete_adapter(self, adapter_id: int) -> None:
        """Forget an adapter. Generations made with it keep their provenance
        in ``params`` but lose the link; the adapter's files are not touched."""
        with self.write() as db:
            self._require("adapters", adapter_id, "adapter")
            db.execute("UPDATE generations SET adapter_id = NULL WHERE adapter_id = ?", (int(adapter_id),))
            db.execute("UPDATE runs SET parent_adapter_id = NULL WHERE parent_adapter_id = ?", (int(adapter_id),))
            db.execute("DELETE FROM adapters WHERE id = ?", (int(adapter_id),))

    # -- reward models -----------------------------------------------------
    def add_reward_model(self, *, name: str, modality: str, base_model: str, backbone: str,
                         dimensions: tuple[str, ...], path: str, base_revision: str | None = None,
                         data_hash: str | None = None, metrics: Mapping[str, Any] | None = None,
                         version: int | None = None) -> RewardModelRecord:
        """Record a reward model file; ``version`` defaults to the next one of ``name``."""
        _check_modality(modality)
        check_reward_name(name)
        with self.write() as db:
            if version is None:
                version = int(db.execute("SELECT COALESCE(MAX(version), 0) FROM reward_models WHERE name = ?",
                                         (name,)).fetchone()[0]) + 1
            cur = db.execute(
                "INSERT INTO reward_models (name, version, modality, base_model, base_revision, backbone, dimensions,"
                " path, data_hash, metrics, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, int(version), modality, base_model, base_revision, backbone, _dumps_list(dimensions), path,
                 data_hash, _dumps(metrics), now_iso()),
            )
            rid = int(cur.lastrowid)
        return self._reward_model_by_id(rid)

    def next_reward_version(self, name: str) -> int:
        return int(self.query("SELECT COALESCE(MAX(version), 0) AS v FROM reward_models WHERE name = ?",
                              (name,))[0]["v"]) + 1

    def _reward_model_by_id(self, rid: int) -> RewardModelRecord:
        return _reward_model(self.query("SELECT * FROM reward_models WHERE id = ?", (rid,))[0])

    def get_reward_model(self, name: str, version: int | None = None) -> RewardModelRecord:
        """Reward model ``name`` (its latest version unless ``version`` is given)."""
        if version is None:
            rows = self.query("SELECT * FROM reward_models WHERE name = ? ORDER BY version DESC LIMIT 1", (name,))
        else:
            rows = self.query("SELECT * FROM reward_models WHERE name = ? AND version = ?", (name, int(version)))
        if not rows:
            known = sorted({r["name"] for r in self.query("SELECT name FROM reward_models")})
            what = f"{name!r}" + ("" if version is None else f" version {version}")
            raise UnknownIdError(f"no reward model {what}; trained ones: {', '.join(known) or 'none yet'}")
        return _reward_model(rows[0])

    def list_reward_models(self, *, modality: str | None = None) -> list[RewardModelRecord]:
        if modality is not None:
            rows = self.query("SELECT * FROM reward_models WHERE modality = ? ORDER BY name, version", (modality,))
        else:
            rows = self.query("SELECT * FROM reward_models ORDER BY name, version")
        return [_reward_model(r) for r in rows]


def check_reward_name(name: str) -> None:
    """A reward model's name is also a folder name: letters, digits, '-', '_' and inner dots only."""
    import re

    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*", name):
        raise ValueError(f"reward model names are words like 'my-taste' (letters, digits, '-', '_', inner dots); "
                         f"got {name!r}")


def _dumps_list(values: tuple[str, ...]) -> str:
    import json

    return json.dumps(list(values))

