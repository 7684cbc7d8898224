"""Reward models by name, over a store: list what a modality offers, train and record a learned one,
and load any of them for scoring.

Names: a programmatic reward (``taste-saturated``), a learned one (``my-taste``, its latest version, or
``my-taste@v2``), or an ensemble of either joined by ``+`` (``my-taste+taste-clean``; ``how`` picks the
mean of standardised scores or RankDPO's win share). A part may carry a weight, ``2*melody-judge+my-ears``:
the weighted mean of the standardised scores (MusicRL's mix of rewards). ``similarity:<hub id or folder>``
is a pretrained encoder's zero-shot prompt agreement (CLIPScore, PickScore, CLAP score; see
:class:`.base.Similarity`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Sequence

from .base import SIMILARITY_PREFIX, Ensemble, RewardModel, Similarity, programmatic  # noqa: F401
from .learned import ENCODER_PREFIX, HeadConfig, LearnedReward, train_reward_model

_VERSIONED = re.compile(r"(?P<name>.+)@v(?P<version>\d+)")
_WEIGHTED = re.compile(r"(?:(?P<weight>\d+(?:\.\d*)?|\.\d+)\*)?(?P<name>.+)")


def parts_of(name: str) -> list[tuple[float, str]]:
    """(weight, name) of each part of ``a+2*b`` (weight 1 when none is written)."""
    out = []
    for part in (p.strip() for p in str(name).split("+")):
        if not part:
            continue
        m = _WEIGHTED.fullmatch(part)
        weight = float(m["weight"]) if m["weight"] else 1.0
        if weight <= 0:
            raise ValueError(f"a reward's weight must be positive, got {part!r}")
        out.append((weight, m["name"]))
    return out


def rewards_dir(store: Any) -> Path:
    return Path(store.data_dir) / "rewards"


def offered(store: Any, modality: str) -> list[dict[str, Any]]:
    """Every reward model usable on ``modality``: its programmatic ones, then the learned ones."""
    rows = [{"name": r.name, "kind": "programmatic", "dimensions": list(r.dimensions), "about": r.description}
            for r in programmatic(modality).values()]
    for rec in store.list_reward_models(modality=modality):
        acc = rec.metrics.get("heldout_accuracy")
        rows.append({"name": rec.label, "kind": "learned", "dimensions": list(rec.dimensions),
                     "about": (f"{rec.backbone[len(ENCODER_PREFIX):]} features of " if reads_media(rec) else "on ")
                              + f"{rec.base_model}'s candidates, {rec.metrics.get('votes', '?')} votes, held-out "
                              "accuracy " + ("n/a" if acc is None else f"{acc:.0%}")})
    return rows


def train(store: Any, adapter: Any, *, modality: str, name: str, model: str | None = None, folds: int = 5,
          noise_level: float | None = None, cfg: HeadConfig = HeadConfig(),
          dimensions: Sequence[str] | None = None, backbone: str | None = None, device: str | None = None,
          progress: Callable[[str], None] = lambda _m: None, **hooks: Any) -> tuple[Any, dict[str, Any]]:
    """Train reward model ``name`` (its next version) on the judgments of ``model``'s candidates (default:
    the loaded model's) and record it; returns (record, metrics). ``dimensions``: those to learn, one
    head each (default: every dimension of the modality that has votes). ``backbone``: None reads the
    loaded model's own features (``adapter``); else a pretrained encoder's hub id or folder (CLIP,
    SigLIP, CLAP; ``adapter`` may then be None). ``hooks``: ``features_cache`` and ``on_fold`` of
    :func:`~alignment.rewards.learned.train_reward_model` (a queued run uses them)."""
    if name in programmatic(modality):
        raise ValueError(f"{name!r} is a built-in reward of {modality}; give the learned one another name")
    if "+" in name or "@" in name:
        raise ValueError(f"reward model names cannot hold '+' or '@' (they join ensembles and versions); got {name!r}")
    from storage.catalog import check_reward_name

    check_reward_name(name)
    from modalities import registry

    spec = registry.spec(modality)
    declared = spec.dimensions
    for d in dimensions or ():
        if d not in declared:
            raise ValueError(f"{modality} judgments are about {', '.join(declared)}; not {d!r}")
    dimensions = list(dimensions or declared)
    encoder = None
    if backbone:
        from modalities import encoders

        encoder = encoders.load(backbone, device)
        encoder.check_reads(spec.media, spec.label)
    if adapter is None and encoder is None:
        raise ValueError("a reward model on the model's own features needs that model loaded")
    model = model or adapter.model_name
    if encoder is None and model != adapter.model_name:
        raise ValueError(f"the reward model reads the loaded model's features: judgments of {model!r} need "
                         f"{model!r} loaded, not {adapter.model_name!r}")
    votes, vote_dimensions = [], []
    for d in dimensions:  # one head per dimension the user has judged
        about = store.votes(modality=modality, model=model, dimension=d)
        votes += about
        vote_dimensions += [d] * len(about)
    if not votes:
        raise ValueError(f"no votes on {model}'s {modality} candidates yet: judge some first")
    ids = sorted({g for v in votes for g in (v.x, v.y)})
    media = {g.id: (g.prompt, store.media_bytes(g)) for g in store.get_generations(ids)}
    reward, metrics = train_reward_model(adapter, media, votes, name=name, modality=modality, folds=folds,
                                         noise_level=noise_level, cfg=cfg, vote_dimensions=vote_dimensions,
                                         encoder=encoder, base_model=model, progress=progress, **hooks)
    version = store.next_reward_version(name)
    reward.meta["version"] = reward.version = version
    rel = Path("rewards") / name / f"v{version}.safetensors"
    reward.save(Path(store.data_dir) / rel)
    record = store.add_reward_model(name=name, modality=modality, base_model=model,
                                    base_revision=reward.meta["base_revision"], backbone=reward.meta["backbone"],
                                    dimensions=reward.dimensions, path=str(rel), data_hash=reward.meta["data_hash"],
                                    metrics=metrics, version=version)
    return record, metrics


def load(store: Any, name: str, modality: str, adapter: Any | None = None, *, how: str = "mean") -> RewardModel:
    """A reward model by name (see the module docstring). Learned ones need ``adapter``, the loaded
    model whose features they read."""
    parts = parts_of(name)
    if len(parts) > 1:
        return Ensemble([load(store, part, modality, adapter) for _, part in parts], how=how,
                        weights=[w for w, _ in parts])
    if parts:
        name = parts[0][1]
    builtin = programmatic(modality)
    if name in builtin:
        return builtin[name]
    if name.startswith(SIMILARITY_PREFIX):
        from modalities import registry

        spec = registry.spec(modality)
        return Similarity(modality, _similarity_source(name), spec.media, spec.label)
    m = _VERSIONED.fullmatch(name)
    record = store.get_reward_model(m["name"], int(m["version"])) if m else store.get_reward_model(name)
    if record.modality != modality:
        raise ValueError(f"reward model {record.label} scores {record.modality}, not {modality}")
    if adapter is None and not reads_media(record):
        raise ValueError(f"reward model {record.label} reads the features of {record.base_model}: load that model")
    return LearnedReward.load(Path(store.data_dir) / record.path, adapter)


def check_name(store: Any, name: str, modality: str) -> None:
    """Raise a clear ValueError unless ``name`` (or each part of an ensemble a+b) is a programmatic reward
    of ``modality`` or a stored reward model of it; nothing is loaded."""
    builtin = programmatic(modality)
    parts = [p for _, p in parts_of(name)]
    if not parts:
        raise ValueError("name a reward model")
    for part in parts:
        if part in builtin:
            continue
        if part.startswith(SIMILARITY_PREFIX):
            _similarity_source(part)
            continue
        m = _VERSIONED.fullmatch(part)
        try:
            record = store.get_reward_model(m["name"], int(m["version"])) if m else store.get_reward_model(part)
        except (LookupError, ValueError):
            raise ValueError(f"no reward model {part!r} for {modality}: use a programmatic one "
                             f"({', '.join(builtin) or 'none'}) or train one on your votes "
                             "(python -m app reward train)") from None
        if record.modality != modality:
            raise ValueError(f"reward model {record.label} scores {record.modality}, not {modality}")


def pinned(store: Any, name: str, modality: str) -> str:
    """``name`` with every learned part pinned to its current version (``my-taste`` -> ``my-taste@v3``), so a
    run keeps judging with the same reward model whatever is trained later; checked like
    :func:`check_name`."""
    check_name(store, name, modality)
    builtin = programmatic(modality)
    parts = []
    for weight, part in parts_of(name):
        prefix = "" if weight == 1.0 else f"{weight:g}*"
        if part in builtin or part.startswith(SIMILARITY_PREFIX) or _VERSIONED.fullmatch(part):
            parts.append(prefix + part)
        else:
            parts.append(f"{prefix}{part}@v{store.get_reward_model(part).version}")
    return "+".join(parts)


def _similarity_source(part: str) -> str:
    """The encoder a ``similarity:`` part names, checked without loading it."""
    from modalities.loading import looks_like_hub_id

    source = part[len(SIMILARITY_PREFIX):].strip()
    if not source or not (Path(source).expanduser().is_dir() or looks_like_hub_id(source)):
        raise ValueError(f"{part!r}: name a pretrained encoder after 'similarity:' -- a local folder or a hub id "
                         "(a CLIP, PickScore, SigLIP or CLAP model)")
    return source


def reads_media(record: Any) -> bool:
    """Whether a stored reward model reads a pretrained encoder's features of the candidates (any
    model's), rather than one model's own."""
    return str(record.backbone).startswith(ENCODER_PREFIX)


def needs_model(store: Any, name: str, modality: str) -> bool:
    """Whether the reward model(s) named need the generating model loaded (their own-feature backbone)."""
    builtin = programmatic(modality)
    for _, part in parts_of(name):
        if part in builtin or part.startswith(SIMILARITY_PREFIX):
            continue
        m = _VERSIONED.fullmatch(part)
        record = store.get_reward_model(m["name"], int(m["version"])) if m else store.get_reward_model(part)
        if not reads_media(record):
            return True
    return False


def prompts_with_variations(modality: str, prompts: Sequence[str], n: int, seed: int = 0) -> list[str]:
    """``prompts`` followed by ``n`` variations of each (the modality's ``variations``: new prompts like
    them, e.g. one attribute changed), for labelling beyond the prompts the user judged."""
    prompts = [p for p in (q.strip() for q in prompts) if p]
    if n <= 0:
        return prompts
    from modalities import registry

    target = registry.spec(modality).variations
    if target is None:
        raise ValueError(f"{modality} offers no prompt variations; give a prompt list instead")
    import importlib

    module, _, attr = target.partition(":")
    return prompts + list(getattr(importlib.import_module(module), attr)(prompts, n, seed))


LABEL_CONTEXT = "reward-label"  # the context of judgments a reward model casts (train on them or not: --contexts)


def ranking_of(ids: Sequence[int], scores: Sequence[float], tol: float = 1e-9) -> list[list[int]]:
    """Candidates best first by score, equal scores (within ``tol``) grouped as ties."""
    order = sorted(zip(ids, scores), key=lambda t: -t[1])
    groups: list[list[int]] = []
    last = None
    for gid, sc in order:
        if last is not None and abs(sc - last) <= tol:
            groups[-1].append(gid)
        else:
            groups.append([gid])
        last = sc
    return groups


def label(store: Any, reward: RewardModel, generate: Callable[[str], Sequence[Any]], prompts: Sequence[str], *,
          lock: Any = None, soft: bool = False,
          progress: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Synthetic labels: for each prompt, ``generate(prompt)`` stores K candidates and ``reward`` judges
    them as an AI annotator (annotator ``reward:NAME@vN``, context :data:`LABEL_CONTEXT`): one ranking
    of the K, ready for RankDPO; or with ``soft`` a pairwise vote on each of the K(K-1)/2 pairs whose
    strength is the reward model's preference probability (an ensemble's: the share of its members
    that agree), the soft labels iREPO regresses on. Returns counts and the judgment ids."""
    import contextlib

    from .active import soft_preferences

    prompts = [p for p in (q.strip() for q in prompts) if p]
    if not prompts:
        raise ValueError("no prompts to label: give some, or judge a few prompts of this model first")
    judgments, candidates = [], 0
    for i, prompt in enumerate(prompts):
        progress(f"prompt {i + 1} of {len(prompts)}: {prompt}")
        gens = list(generate(prompt))
        if len(gens) < 2:
            raise ValueError("labelling ranks two or more candidates per prompt")
        media = [store.media_bytes(g) for g in gens]
        with lock or contextlib.nullcontext():
            if soft:
                pref = soft_preferences(reward, prompt, media)
            else:
                scores = reward.overall(prompt, media)
        if soft:
            for a in range(len(gens)):
                for b in range(a + 1, len(gens)):
                    p = float(pref[a, b])
                    choice = "a" if p > 0.5 else "b" if p < 0.5 else "tie"
                    judgments.append(store.vote(gens[a].id, gens[b].id, choice, strength=p,
                                                annotator=reward.annotator, annotator_kind="ai",
                                                context=LABEL_CONTEXT))
        else:
            judgments.append(store.rank(ranking_of([g.id for g in gens], [float(x) for x in scores]),
                                        annotator=reward.annotator, annotator_kind="ai", context=LABEL_CONTEXT))
        candidates += len(gens)
    return {"prompts": len(prompts), "candidates": candidates, "judgments": judgments, "soft": soft,
            "annotator": reward.annotator, "context": LABEL_CONTEXT}


def record_of(store: Any, name: str) -> Any:
    """The stored reward model ``NAME`` (latest version) or ``NAME@vN``."""
    m = _VERSIONED.fullmatch(name)
    return store.get_reward_model(m["name"], int(m["version"])) if m else store.get_reward_model(name)


def export(store: Any, name: str, out: Path) -> Path:
    """Copy a learned reward model's safetensors file (head weights; base model, backbone, dimensions,
    data hash and metrics in its metadata) to ``out`` (a file, or a folder to put ``NAME-vN.safetensors``
    in), checked as a Palate reward model file first."""
    import shutil

    record = record_of(store, name)
    src = Path(store.data_dir) / record.path
    LearnedReward.read_meta(src)  # refuses a damaged or foreign file
    out = Path(out)
    if out.is_dir() or not out.suffix:
        out = out / f"{record.name}-v{record.version}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    shutil.copyfile(src, tmp)
    tmp.replace(out)
    return out


def load_file(path: Path, adapter: Any) -> LearnedReward:
    """A reward model from a file (anything but a Palate reward safetensors file is refused)."""
    return LearnedReward.load(Path(path), adapter)
