"""Read-only views of the store for people: tables to browse, counts, blind-comparison tallies.

A mixin of :class:`storage.Store` (``store.browse_generations(...)`` and so on), so the SQL lives in
``storage`` and the app only asks.
"""
from __future__ import annotations

from typing import Any

COMPARE_CONTEXT = "compare"  # the context of blind base-vs-tuned comparisons: evaluations, never training data
TABLES = ("prompts", "generations", "judgments", "annotators", "media", "runs", "adapters", "reward_models",
          "imports")


def _filters(modality: str | None, model: str | None, text: str) -> tuple[list[str], list[Any]]:
    where, params = ["1=1"], []
    if modality:
        where.append("g.modality = ?")
        params.append(modality)
    if model:
        where.append("g.model = ?")
        params.append(model)
    if text.strip():
        where.append("p.text LIKE ?")
        params.append(f"%{text.strip()}%")
    return where, params


class BrowseMixin:
    """Queries for the Data tab, the judging counter, the blind win rate and ``db info``."""

    def query(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:  # pragma: no cover - Store defines it
        raise NotImplementedError

    def judged_prompts(self, modality: str, model: str) -> list[str]:
        """Prompts of ``model``'s candidates that someone judged (blind comparisons aside), oldest first."""
        return [r["text"] for r in self.query(
            "SELECT p.text, MIN(p.id) AS first FROM prompts p JOIN generations g ON g.prompt_id = p.id"
            " JOIN judgment_items i ON i.generation_id = g.id JOIN judgments j ON j.id = i.judgment_id"
            " WHERE g.modality = ? AND g.model = ? AND j.context != ? GROUP BY p.text ORDER BY first",
            (modality, model, COMPARE_CONTEXT))]

    def table_counts(self) -> dict[str, int]:
        """Rows per table."""
        return {t: self.query(f"SELECT COUNT(*) AS n FROM {t}")[0]["n"] for t in TABLES}

    def judgment_count(self, modality: str, model: str) -> int:
        """Judgments (votes and rankings, any annotator, not blind comparisons) on ``model``'s candidates."""
        rows = self.query(
            "SELECT COUNT(DISTINCT j.id) AS n FROM judgments j JOIN judgment_items i ON i.judgment_id = j.id"
            " JOIN generations g ON g.id = i.generation_id WHERE g.modality = ? AND g.model = ? AND j.context != ?",
            (modality, model, COMPARE_CONTEXT))
        return int(rows[0]["n"])

    def browse_generations(self, *, modality: str | None = None, model: str | None = None, text: str = "",
                           limit: int = 200) -> list[dict[str, Any]]:
        """Stored candidates, newest first, with how many judgments involve each."""
        where, params = _filters(modality, model, text)
        return self.query(
            "SELECT g.id, g.modality, g.model, g.seed, p.text AS prompt, g.created_at,"
            " (SELECT COUNT(DISTINCT judgment_id) FROM judgment_items i WHERE i.generation_id = g.id) AS judgments"
            " FROM generations g JOIN prompts p ON p.id = g.prompt_id WHERE " + " AND ".join(where)
            + " ORDER BY g.id DESC LIMIT ?", (*params, int(limit)))

    def browse_prompts(self, *, modality: str | None = None, model: str | None = None, text: str = "",
                       limit: int = 200) -> list[dict[str, Any]]:
        """Stored prompts, newest first, with their candidates and judgments counted."""
        where, params = _filters(modality, model, text)
        return self.query(
            "SELECT p.id, p.text AS prompt, COUNT(DISTINCT g.id) AS candidates,"
            " COUNT(DISTINCT CASE WHEN j.context != ? THEN j.id END) AS judgments,"
            " group_concat(DISTINCT g.model) AS models"
            " FROM prompts p JOIN generations g ON g.prompt_id = p.id"
            " LEFT JOIN judgment_items i ON i.generation_id = g.id LEFT JOIN judgments j ON j.id = i.judgment_id"
            " WHERE " + " AND ".join(where) + " GROUP BY p.id ORDER BY p.id DESC LIMIT ?",
            (COMPARE_CONTEXT, *params, int(limit)))

    def browse_judgments(self, *, modality: str | None = None, model: str | None = None, text: str = "",
                         limit: int = 200) -> list[dict[str, Any]]:
        """Stored judgments, newest first: kind, candidates (best first for rankings), choice, context."""
        where, params = _filters(modality, model, text)
        rows = self.query(
            "SELECT j.id, j.kind, j.choice, j.context, a.name AS annotator, p.text AS prompt, j.created_at,"
            " group_concat(i.generation_id || ':' || COALESCE(i.rank, '-'), ' ') AS items"
            " FROM judgments j JOIN annotators a ON a.id = j.annotator_id JOIN prompts p ON p.id = j.prompt_id"
            " JOIN judgment_items i ON i.judgment_id = j.id JOIN generations g ON g.id = i.generation_id"
            " WHERE " + " AND ".join(where) + " GROUP BY j.id ORDER BY j.id DESC LIMIT ?", (*params, int(limit)))
        for r in rows:
            items = [t.split(":") for t in (r.pop("items") or "").split()]
            if r["kind"] == "pairwise":
                r["candidates"] = f"A={items[0][0]} B={items[1][0]}" if len(items) == 2 else ""
            else:
                ranked = sorted((int(rk), g) for g, rk in items if rk != "-")
                rest = [g for g, rk in items if rk == "-"]
                r["candidates"] = " > ".join(g for _, g in ranked) + (f" (unranked {' '.join(rest)})" if rest else "")
        return rows

    def models_seen(self, modality: str | None = None) -> list[str]:
        sql = "SELECT DISTINCT model FROM generations" + (" WHERE modality = ?" if modality else "") + " ORDER BY model"
        return [r["model"] for r in self.query(sql, (modality,) if modality else ())]

    def modalities_seen(self) -> list[str]:
        return [r["modality"] for r in self.query("SELECT DISTINCT modality FROM generations ORDER BY modality")]

    def blind_choices(self, adapter_id: int) -> list[dict[str, Any]]:
        """Blind choices between a candidate of ``adapter_id`` and one without an adapter: ``choice``
        and which side (``tuned``: ``a`` or ``b``) was the adapter's."""
        rows = self.query(
            "SELECT v.choice, ga.adapter_id AS a_adapter, gb.adapter_id AS b_adapter FROM pairwise_votes v"
            " JOIN generations ga ON ga.id = v.generation_a JOIN generations gb ON gb.id = v.generation_b"
            " WHERE v.context = ? AND ((ga.adapter_id = ? AND gb.adapter_id IS NULL)"
            " OR (gb.adapter_id = ? AND ga.adapter_id IS NULL))",
            (COMPARE_CONTEXT, int(adapter_id), int(adapter_id)))
        return [{"choice": r["choice"], "tuned": "a" if r["a_adapter"] == adapter_id else "b"} for r in rows]

    def run_generation_ids(self, run_id: int) -> list[int]:
        """The generations tied to a run (its validation samples), in order."""
        return [r["id"] for r in self.query("SELECT id FROM generations WHERE run_id = ? ORDER BY id", (int(run_id),))]
