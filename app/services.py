"""What the web UI does, as plain functions over the store (the UI only wires them to widgets).

Judging, the counter, browsing and deleting, stats, dataset import/export,
the base-vs-tuned comparison with its blind mode and win rate, and adapter
export. Generation itself is ``app.generation``; training runs ``app.runs``.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from storage import Generation, Store
from storage.store import COMPARE_CONTEXT

ANNOTATOR = "you"
CHOICES = ("a", "b", "tie", "both-bad")


# ---------------------------------------------------------------------------
# judging
# ---------------------------------------------------------------------------


def dimensions(modality: str) -> tuple[str, ...]:
    """What ``modality``'s judgments may be about (its spec's ``dimensions``; ``overall`` first)."""
    from modalities import registry
    from modalities.spec import DEFAULT_DIMENSIONS

    return registry.spec(modality).dimensions if modality in registry.with_spec() else DEFAULT_DIMENSIONS


def check_dimension(store: Store, generation_id: int, dimension: str) -> str:
    """``dimension`` if the modality of ``generation_id`` declares it, else a ValueError listing those it does."""
    if dimension == "overall":  # every modality's first dimension
        return dimension
    modality = store.get_generation(generation_id).modality
    if dimension not in dimensions(modality):
        raise ValueError(f"{modality} judgments are about {', '.join(dimensions(modality))}; not {dimension!r}")
    return dimension


def pick_best(store: Store, candidate_ids: Sequence[int], best: int, *, dimension: str = "overall") -> int:
    """Best of N: a partial ranking, the pick first and the others unranked."""
    if best not in candidate_ids:
        raise ValueError(f"candidate {best} is not one of the candidates shown")
    others = [g for g in candidate_ids if g != best]
    if not others:
        raise ValueError("best of N needs at least two candidates")
    check_dimension(store, best, dimension)
    return store.rank([best], unranked=others, annotator=ANNOTATOR, dimension=dimension)


def vote(store: Store, a: int, b: int, choice: str, *, dimension: str = "overall") -> int:
    """A pairwise vote about ``dimension`` (overall unless said)."""
    if choice not in CHOICES:
        raise ValueError(f"choice must be one of {', '.join(CHOICES)}")
    check_dimension(store, a, dimension)
    return store.vote(a, b, choice, annotator=ANNOTATOR, dimension=dimension)


def rank(store: Store, order: Sequence[int], shown: Sequence[int], *, dimension: str = "overall") -> int:
    """A full (or partial) ranking, best first; candidates shown but not clicked are unranked."""
    if len(order) < 1:
        raise ValueError("click the candidates best first before saving the ranking")
    unranked = [g for g in shown if g not in order]
    check_dimension(store, order[0], dimension)
    return store.rank(list(order), unranked=unranked, annotator=ANNOTATOR, dimension=dimension)


def undo(store: Store, judgment_id: int | None = None) -> int:
    """Delete ``judgment_id`` (default: your most recent judgment). Returns the id deleted."""
    jid = judgment_id if judgment_id is not None else store.last_judgment_id(annotator=ANNOTATOR)
    if jid is None:
        raise ValueError("there is no judgment to undo")
    store.delete_judgment(jid)
    return jid


def judgment_count(store: Store, modality: str, model: str) -> int:
    """Judgments (votes and rankings, any annotator, not blind comparisons) on ``model``'s candidates."""
    return store.judgment_count(modality, model)


def pair_schedule(n: int) -> list[tuple[int, int]]:
    """Pairwise A/B order over n candidates: every pair once, spread so no candidate waits long."""
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    # round-robin: interleave so consecutive pairs share as few candidates as possible
    out: list[tuple[int, int]] = []
    while pairs:
        used: set[int] = set()
        for p in list(pairs):
            if not used & set(p):
                out.append(p)
                used |= set(p)
                pairs.remove(p)
    return out


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------


def browse(store: Store, *, modality: str | None = None, model: str | None = None, text: str = "",
           limit: int = 200) -> list[dict[str, Any]]:
    """Stored candidates, newest first, with how many judgments involve each."""
    return store.browse_generations(modality=modality, model=model, text=text, limit=limit)


def prompts(store: Store, *, modality: str | None = None, model: str | None = None, text: str = "",
            limit: int = 200) -> list[dict[str, Any]]:
    """Stored prompts, newest first, with their candidates and judgments counted."""
    return store.browse_prompts(modality=modality, model=model, text=text, limit=limit)


def judgments(store: Store, *, modality: str | None = None, model: str | None = None, text: str = "",
              limit: int = 200) -> list[dict[str, Any]]:
    """Stored judgments, newest first: kind, candidates (best first for rankings), choice, context."""
    return store.browse_judgments(modality=modality, model=model, text=text, limit=limit)


# ---------------------------------------------------------------------------
# compare: base vs adapters on the same prompts and seeds; blind mode
# ---------------------------------------------------------------------------


@dataclass
class Trial:
    """One blind comparison: the same prompt and seed through base and tuned, sides shuffled."""

    prompt: str
    seed: int
    left: int  # generation ids
    right: int
    tuned_side: str  # "left" or "right"
    adapter_id: int


def compare_generate(store: Store, *, modality: str, model: str, adapter_ids: Sequence[int], prompts: Sequence[str],
                     seeds: Sequence[int], params: dict[str, Any] | None = None,
                     device: str | None = None) -> list[dict[str, Any]]:
    """For each prompt: the base model's and each adapter's candidates on the same seeds.

    Returns rows ``{"prompt", "seed", "base": Generation, "adapters": {adapter_id: Generation}}``.
    """
    from app.generation import generate_candidates

    if not prompts:
        raise ValueError("give at least one prompt to compare on")
    if not 1 <= len(adapter_ids) <= 2:
        raise ValueError("compare the base model with one or two adapters")
    adapters = [store.get_adapter(a) for a in adapter_ids]
    for a in adapters:
        if a.modality != modality:
            raise ValueError(f"adapter {a.id} ({a.name}) is for {a.modality}, not {modality}")
    # model by model (outer loop), so a GPU that holds one model at a time loads each once
    base = {p: generate_candidates(store, modality=modality, model=model, prompt=p, n=len(seeds), seeds=seeds,
                                   params=params, device=device) for p in prompts}
    tuned = {a.id: {p: generate_candidates(store, modality=modality, model=model, prompt=p, n=len(seeds), seeds=seeds,
                                           params=params, device=device, lora=a.path, adapter_id=a.id)
                    for p in prompts} for a in adapters}
    return [{"prompt": p, "seed": seed, "base": base[p][i], "adapters": {aid: gens[p][i] for aid, gens in tuned.items()}}
            for p in prompts for i, seed in enumerate(seeds)]


def blind_trials(rows: Sequence[dict[str, Any]], adapter_id: int, *, seed: int | None = None) -> list[Trial]:
    rng = random.Random(seed if seed is not None else time.time_ns())
    trials = []
    for r in rows:
        base, tuned = r["base"].id, r["adapters"][adapter_id].id
        if rng.random() < 0.5:
            trials.append(Trial(r["prompt"], r["seed"], tuned, base, "left", adapter_id))
        else:
            trials.append(Trial(r["prompt"], r["seed"], base, tuned, "right", adapter_id))
    rng.shuffle(trials)
    return trials


def blind_vote(store: Store, trial: Trial, choice: str) -> int:
    """Record a blind choice (left, right, tie) as a judgment of its own kind (context ``compare``)."""
    mapping = {"left": "a", "right": "b", "tie": "tie"}
    if choice not in mapping:
        raise ValueError("a blind choice is left, right or tie")
    return store.vote(trial.left, trial.right, mapping[choice], annotator=ANNOTATOR, context=COMPARE_CONTEXT)


def wilson(wins: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion (ties count half a win)."""
    if n == 0:
        return 0.0, 1.0
    p = wins / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate(store: Store, adapter_id: int) -> dict[str, Any]:
    """The tuned model's win rate over the base in blind comparisons: wins + half the ties, over all
    blind choices between a candidate of this adapter and one without an adapter."""
    wins = ties = losses = 0
    for r in store.blind_choices(adapter_id):
        if r["choice"] == "tie":
            ties += 1
        elif r["choice"] == r["tuned"]:
            wins += 1
        else:
            losses += 1
    n = wins + ties + losses
    lo, hi = wilson(wins + 0.5 * ties, n)
    return {"adapter_id": adapter_id, "wins": wins, "ties": ties, "losses": losses, "n": n,
            "win_rate": (wins + 0.5 * ties) / n if n else None, "ci95": (lo, hi)}


# ---------------------------------------------------------------------------
# adapters
# ---------------------------------------------------------------------------


def export_formats(modality: str) -> list[str]:
    """Formats an adapter of this modality exports to, the default first."""
    from alignment.export import formats

    return formats(modality)


def _adapter_metadata(store: Store, adapter) -> dict[str, Any]:
    run = store.get_run(adapter.run_id) if adapter.run_id is not None else None
    return {
        "base_model": adapter.base_model, "base_revision": adapter.base_revision or "", "method": adapter.method or "",
        "run_id": adapter.run_id, "data_hash": adapter.metadata.get("data_hash") or (run.data_hash if run else ""),
        "hyperparameters": adapter.metadata.get("config", {}),
    }


def export_adapter(store: Store, adapter_id: int, fmt: str, out: str | Path | None = None) -> tuple[Path, float | None]:
    """Export an adapter (into ``out``, default ``<data dir>/exports/``) and load it back as the
    target tool would. Returns (path, largest difference to the trained adapter)."""
    from alignment.export import export_adapter as export

    adapter = store.get_adapter(adapter_id)
    if fmt not in export_formats(adapter.modality):
        raise ValueError(f"{adapter.modality} adapters export as {', '.join(export_formats(adapter.modality))}, "
                         f"not {fmt}")
    if out is None:
        out_dir = store.data_dir / "exports"
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = out_dir / (f"{adapter.name}-{fmt}-{stamp}.safetensors" if fmt == "kohya"
                         else f"{adapter.name}-{fmt}-{stamp}")
    return export(adapter.modality, adapter.path, out, fmt, base_model=adapter.base_model,
                  metadata=_adapter_metadata(store, adapter))


def export_dataset(store: Store, out: str | Path, *, fmt: str, modality: str | None = None,
                   model: str | None = None, prompt_style: str = "auto", dimension: str | None = "overall"):
    """A dataset export (see ``storage.exchange``), with the modality's prompt renderer so text
    exports can write the prompt each model saw. ``dimension``: the judgments about it (None: every
    dimension, in a ``dimension`` column)."""
    from modalities import registry
    from storage.exchange import default_modality, export_dataset as export

    modality = modality or default_modality(fmt)
    renderer = registry.get(modality).prompt_renderer() if modality in registry.available() else None
    if dimension is not None:
        if dimension not in dimensions(modality):
            raise ValueError(f"{modality} judgments are about {', '.join(dimensions(modality))}; not {dimension!r}")
    return export(store, out, fmt=fmt, modality=modality, model=model, prompt_style=prompt_style, renderer=renderer,
                  dimension=dimension)


def zip_folder(path: Path) -> Path:
    """A folder as a .zip next to it (for a download button); a file is returned as is."""
    import shutil

    if path.is_file():
        return path
    return Path(shutil.make_archive(str(path), "zip", root_dir=path))


def validation_samples(store: Store, run_id: int) -> list[tuple[Generation, str]]:
    """A run's validation candidates (start and end), with their stage."""
    ids = store.run_generation_ids(run_id)
    gens = store.get_generations(ids) if ids else []
    return [(g, str(g.params.get("validation", ""))) for g in gens]
