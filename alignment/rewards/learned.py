"""Reward models learned from the user's judgments: the generator's own features (read by
``ModalityAdapter.reward_features``: a denoiser at a noise level, a language model's hidden states)
and a small head per dimension, trained with Bradley-Terry with ties (:mod:`.bt`).

The backbone stays frozen, so features are computed once per candidate and the head trains in
seconds; held-out pair accuracy comes from k-fold cross-validation over distinct pairs (repeat votes on
one pair stay in one fold), then the head is trained on every vote. A reward model is one
``.safetensors`` file: the head's weights, and in its metadata the base model it reads, the backbone
settings, the data hash and the measured accuracy.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .base import RewardModel
from .bt import DEFAULT_THETA, TIE_EPS, bt_ties_nll

FORMAT = "palate-reward-model/1"


@dataclass(frozen=True)
class HeadConfig:
    hidden: int = 64  # 0: a linear head
    epochs: int = 300  # full-batch steps
    lr: float = 3e-3
    weight_decay: float = 1e-2
    dropout: float = 0.1
    theta: float = DEFAULT_THETA
    seed: int = 0


class Head(nn.Module):
    """Standardised features -> one reward per dimension."""

    def __init__(self, dim: int, n_out: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.net = (nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, n_out))
                    if hidden else nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, n_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def fit_head(feats: torch.Tensor, a: torch.Tensor, b: torch.Tensor, p: torch.Tensor, cfg: HeadConfig,
             n_out: int = 1, dim: torch.Tensor | None = None) -> Head:
    """A head trained on votes ``p`` (share for candidate ``a[i]`` over ``b[i]``, rows of ``feats``),
    vote ``i`` about output ``dim[i]`` of the head (default: all about output 0)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few thousand multiply-adds a step: threads only add waiting
    try:
        return _fit_head(feats, a, b, p, cfg, n_out, _dims(dim, a))
    finally:
        torch.set_num_threads(threads)


def _dims(dim: torch.Tensor | None, a: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(a) if dim is None else dim


def _fit_head(feats: torch.Tensor, a: torch.Tensor, b: torch.Tensor, p: torch.Tensor, cfg: HeadConfig,
              n_out: int, dim: torch.Tensor) -> Head:
    torch.manual_seed(cfg.seed)
    head = Head(feats.shape[1], n_out, cfg.hidden, cfg.dropout)
    used = torch.unique(torch.cat([a, b]))
    head.mean.copy_(feats[used].mean(0))
    head.std.copy_(feats[used].std(0).clamp(min=1e-6) if len(used) > 1 else torch.ones(feats.shape[1]))
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    head.train()
    for _ in range(cfg.epochs):
        r = head(feats)
        loss = bt_ties_nll(r[a, dim], r[b, dim], p, cfg.theta)
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    return head


def _right(head: Head, feats: torch.Tensor, a: torch.Tensor, b: torch.Tensor, p: torch.Tensor,
           dim: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(right, decisive) masks over the votes: a decisive vote is right when its winner scores higher."""
    with torch.no_grad():
        r = head(feats)
    decisive = (p - 0.5).abs() > TIE_EPS
    return ((r[a, dim] > r[b, dim]) == (p > 0.5)) & decisive, decisive


def pair_accuracy(head: Head, feats: torch.Tensor, a: torch.Tensor, b: torch.Tensor, p: torch.Tensor,
                  dim: torch.Tensor | None = None) -> tuple[int, int]:
    """(right, decisive votes): a decisive vote is right when the head ranks its winner higher."""
    right, decisive = _right(head, feats, a, b, p, _dims(dim, a))
    return int(right.sum()), int(decisive.sum())


def kfold_accuracy(feats: torch.Tensor, a: torch.Tensor, b: torch.Tensor, p: torch.Tensor, cfg: HeadConfig,
                   folds: int, dim: torch.Tensor | None = None, dimensions: Sequence[str] = ("overall",),
                   on_fold: Callable[[int, float | None], None] = lambda _f, _acc: None,
                   candidates: int | None = None) -> dict[str, Any]:
    """Held-out pair accuracy by ``folds``-fold cross-validation over distinct (pair, dimension) keys:
    over every vote, and for each dimension (``per_dimension``). ``candidates``: rows of ``feats`` are
    that many candidates seen at several noise levels (row ``l * candidates + i``); a pair's votes at
    every level then share one fold."""
    dim = _dims(dim, a)
    n = candidates or (max(int(a.max()), int(b.max())) + 1 if len(a) else 1)
    key = [(min(x % n, y % n), max(x % n, y % n), d) for x, y, d in zip(a.tolist(), b.tolist(), dim.tolist())]
    keys = sorted(set(key))
    decisive_keys = {k for k, q in zip(key, p.tolist()) if abs(q - 0.5) > TIE_EPS}
    if folds < 2:
        raise ValueError(f"folds must be 2 or more, got {folds}")
    if len(decisive_keys) < folds:
        raise ValueError(f"{len(decisive_keys)} decided pair(s) (ties aside) are fewer than the {folds} folds of the "
                         f"held-out accuracy: cast more votes, or use fewer folds (--folds)")
    random.Random(cfg.seed).shuffle(keys)
    fold_of = {k: i % folds for i, k in enumerate(keys)}
    vote_fold = torch.tensor([fold_of[k] for k in key])
    right_all = torch.zeros(len(key), dtype=torch.bool)
    tested = torch.zeros(len(key), dtype=torch.bool)
    per_fold = []
    for f in range(folds):
        train, test = vote_fold != f, vote_fold == f
        if not bool(train.any()) or not bool(test.any()):
            continue
        head = fit_head(feats, a[train], b[train], p[train], cfg, len(dimensions), dim[train])
        right, decisive = _right(head, feats, a[test], b[test], p[test], dim[test])
        right_all[test] = right
        tested[test] = decisive
        acc = int(right.sum()) / int(decisive.sum()) if int(decisive.sum()) else None
        if acc is not None:
            per_fold.append(acc)
        on_fold(f, acc)
    total = int(tested.sum())
    per_dimension = {}
    for i, d in enumerate(dimensions):
        mask = tested & (dim == i)
        n = int(mask.sum())
        per_dimension[d] = {"heldout_accuracy": int((right_all & mask).sum()) / n if n else None, "heldout_votes": n,
                            "votes": int((dim == i).sum())}
    return {"heldout_accuracy": int(right_all.sum()) / total if total else None, "heldout_votes": total,
            "folds": folds, "fold_accuracies": per_fold, "per_dimension": per_dimension}


def data_hash(votes: Sequence[Any], dimensions: Sequence[str] | None = None) -> str:
    """What the reward model was trained on: its votes (candidates, share, judgment, and the dimension
    when not overall), in order."""
    h = hashlib.sha256()
    for i, v in enumerate(votes):
        d = "overall" if dimensions is None else dimensions[i]
        h.update((f"{v.x},{v.y},{v.p:.9f},{v.judgment_id}" + ("" if d == "overall" else f",{d}") + "\n").encode())
    return h.hexdigest()[:16]


@dataclass
class LearnedReward(RewardModel):
    """A trained head over an adapter's features. ``meta`` holds what the file records."""

    adapter: Any
    head: Head
    meta: dict[str, Any] = field(default_factory=dict)
    encoder: Any = None  # a pretrained encoder (modalities.encoders) when the backbone is one
    kind = "learned"

    def __post_init__(self) -> None:
        self.name = self.meta.get("name", "reward")
        self.modality = self.meta.get("modality", getattr(self.adapter, "name", ""))
        self.dimensions = tuple(self.meta.get("dimensions", ("overall",)))
        self.version = self.meta.get("version")

    @property
    def noise_level(self) -> float:
        return float(self.meta.get("noise_level", 0.0))

    @property
    def summary(self) -> bool:
        """Reads only the summary of the (predicted) clean sample, not the denoiser's pooled block."""
        return self.meta.get("backbone") == SUMMARY_BACKBONE

    @property
    def noise_aware(self) -> bool:
        """Trained on samples noised to several levels (it scores a trajectory's noisy latents)."""
        return bool(self.meta.get("noise_aware"))

    def features(self, prompts: Sequence[str], media: Sequence[bytes]) -> torch.Tensor:
        if self.encoder is not None:
            return encoder_features(self.encoder, prompts, media)
        extra = {"predicted_x0": True} if self.noise_aware else {}  # (adapters of older signatures take no flag)
        if self.summary:
            extra["summary"] = True
        feats = self.adapter.reward_features(list(prompts), list(media), noise_level=self.noise_level,
                                             seed=int(self.meta.get("feature_seed", 0)), **extra)
        return _with_level(feats, self.noise_level) if self.noise_aware else feats

    def score_latents(self, prompts: Sequence[str], latents: torch.Tensor, t: torch.Tensor) -> dict[str, np.ndarray]:
        """Scores of noisy latents at model times ``t`` (a trajectory's samples), for noise-aware models."""
        if not self.noise_aware:
            raise ValueError(f"reward model {self.name!r} was trained on clean samples and does not score noisy "
                             "ones: train it with --noise-aware, or score the predicted clean sample instead")
        own = {"summary": True} if self.summary else {}
        feats = self.adapter.latent_reward_features(list(prompts), latents, t, **own)
        return self.score_features(torch.cat([feats, self.adapter.noise_level_of(t).cpu().view(-1, 1)], dim=1))

    def score_features(self, feats: torch.Tensor) -> dict[str, np.ndarray]:
        self.check_width(feats)
        with torch.no_grad():
            r = self.head(feats).double().numpy()
        return {d: r[:, i] for i, d in enumerate(self.dimensions)}

    def check_width(self, feats: torch.Tensor) -> None:
        """Refuse features of another width than the head learned (a model whose features changed since)."""
        if feats.shape[-1] != self.head.mean.shape[0]:
            raise ValueError(f"reward model {self.name!r} learned {self.head.mean.shape[0]} features per candidate, but "
                             f"{self.meta.get('base_model') or 'this model'} now gives {feats.shape[-1]} (its features "
                             "changed since): train it again on the same votes")

    def score(self, prompt: str, media: Sequence[bytes]) -> dict[str, np.ndarray]:
        return self.score_features(self.features([prompt] * len(media), media))

    def save(self, path: Path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "hidden": str(self.head.net[-1].in_features if len(self.head.net) > 2 else 0),
                "palate": json.dumps(self.meta, sort_keys=True)}
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, tmp, metadata=meta)
        tmp.replace(path)
        return path

    @classmethod
    def read_meta(cls, path: Path) -> dict[str, Any]:
        """The metadata of a reward model file (refusing anything else with a clear message)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no reward model file at {path}")
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
        except Exception as e:  # noqa: BLE001 - safetensors raises several kinds for a foreign file
            raise ValueError(f"{path} is not a safetensors reward model file ({e})") from None
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is a safetensors file but not a Palate reward model (format "
                             f"{meta.get('format')!r}, expected {FORMAT!r})")
        return {**json.loads(meta["palate"]), "_hidden": int(meta["hidden"])}

    @property
    def reads_media(self) -> bool:
        """True when the backbone is a pretrained encoder (it scores any model's candidates)."""
        return self.encoder is not None

    @classmethod
    def load(cls, path: Path, adapter: Any, device: str | None = None) -> "LearnedReward":
        from safetensors.torch import load_file

        meta = cls.read_meta(path)
        hidden = meta.pop("_hidden")
        encoder = None
        if str(meta.get("backbone", "")).startswith(ENCODER_PREFIX):
            from modalities import encoders

            encoder = encoders.load(meta["backbone"][len(ENCODER_PREFIX):], device)
            revision = meta.get("encoder_revision")
            if revision and encoder.revision and revision != encoder.revision:
                raise ValueError(f"reward model {meta.get('name')!r} was trained on encoder {encoder.source} at "
                                 f"revision {revision}; that folder now holds {encoder.revision}: train it again")
            adapter = None
        loaded = getattr(adapter, "model_name", None)
        if encoder is None and adapter is None:
            raise ValueError(f"reward model {meta.get('name')!r} reads the features of {meta.get('base_model')!r}: "
                             "load that model")
        if encoder is None and meta.get("base_model") and loaded and loaded != meta["base_model"]:
            raise ValueError(f"reward model {meta.get('name')!r} reads the features of {meta['base_model']!r}, but "
                             f"the loaded model is {loaded!r}: train a reward model on this model's judgments")
        state = load_file(str(path))
        head = Head(state["mean"].shape[0], len(meta.get("dimensions", ("overall",))), hidden)
        head.load_state_dict(state)
        head.eval()
        return cls(adapter, head, meta, encoder)


NOISE_AWARE_LEVELS = (0.0, 0.2, 0.4, 0.6, 0.8)  # a noise-aware model learns each vote at each of these


def _with_level(feats: torch.Tensor, level: float) -> torch.Tensor:
    """Features followed by their noise level (a noise-aware head conditions on it)."""
    return torch.cat([feats, torch.full((feats.shape[0], 1), float(level))], dim=1)


ENCODER_PREFIX = "encoder:"  # a reward model's backbone: "own-features", or "encoder:" + the encoder's hub id or folder
OWN_BACKBONE = "own-features"  # the denoiser's pooled block (or hidden states) and the clean sample's summary
SUMMARY_BACKBONE = "own-summary"  # the (predicted) clean sample's summary only: few numbers, for few votes


def encoder_features(encoder: Any, prompts: Sequence[str], media: Sequence[bytes], batch: int = 16) -> torch.Tensor:
    """A pretrained encoder's features, ``batch`` candidates at a time."""
    parts = [encoder.features(list(prompts[i:i + batch]), list(media[i:i + batch])) for i in range(0, len(media), batch)]
    return torch.cat(parts) if parts else torch.zeros(0)


def train_reward_model(adapter: Any, media: dict[int, tuple[str, bytes]], votes: Sequence[Any], *,
                       name: str, modality: str, folds: int = 5, noise_level: float | None = None,
                       cfg: HeadConfig = HeadConfig(), vote_dimensions: Sequence[str] | None = None,
                       encoder: Any = None, base_model: str | None = None, features_cache: Path | None = None,
                       on_fold: Callable[[int, float | None], None] = lambda _f, _acc: None,
                       progress: Callable[[str], None] = lambda _m: None,
                       noise_aware: bool = False, summary: bool = False) -> tuple[LearnedReward, dict[str, Any]]:
    """Train a reward model on ``votes`` (storage ``Vote``s over the candidates in ``media``:
    id -> (prompt, bytes)) with ``adapter``'s features; returns it with its metrics.
    ``vote_dimensions``: the dimension each vote is about (default: all overall); the head has one
    output per dimension, in order of first appearance with overall first. ``encoder``: read a
    pretrained encoder's features of the candidates instead of ``adapter``'s (``base_model`` then
    names whose candidates the votes are about). ``features_cache``: a file that keeps the features
    (a resumed run reads them back instead of computing them again); ``on_fold(fold, accuracy)`` is
    called after each fold of the held-out accuracy and with fold ``folds`` after the final fit.
    ``noise_aware``: learn every vote at each of :data:`NOISE_AWARE_LEVELS` (the candidates noised with
    one seed, the clean latent's statistics predicted by the denoiser, the level as a feature), so the
    model scores a trajectory's noisy samples (SPO's step-aware preference model). ``summary``: read only
    the summary of the (predicted) clean sample (a denoiser's models: per-channel statistics, and for video
    where the content is and how it moves), not the denoiser's pooled block -- far fewer numbers, which few
    votes learn better."""
    if not votes:
        raise ValueError("no votes to learn from: judge some candidates first")
    vote_dimensions = list(vote_dimensions) if vote_dimensions is not None else ["overall"] * len(votes)
    if len(vote_dimensions) != len(votes):
        raise ValueError(f"{len(vote_dimensions)} dimensions for {len(votes)} votes")
    dimensions = sorted(set(vote_dimensions), key=lambda d: (d != "overall", vote_dimensions.index(d)))
    dim = torch.tensor([dimensions.index(d) for d in vote_dimensions])
    if noise_aware and encoder is not None:
        raise ValueError("a pretrained encoder reads clean media: a noise-aware reward model reads the model's own "
                         "features (leave out --backbone)")
    if encoder is not None:
        noise_level = 0.0
    elif noise_aware:
        noise_level = 0.0  # clean candidates (labels, hints) are scored at level 0
    elif noise_level is None:
        noise_level = 0.5 if getattr(adapter, "score_kind", None) is not None and \
            str(getattr(adapter.score_kind, "value", adapter.score_kind)) in ("diffusion", "flow") else 0.0
    ids = sorted({g for v in votes for g in (v.x, v.y)})
    index = {g: i for i, g in enumerate(ids)}
    if summary and (encoder is not None or not hasattr(adapter, "clean_features")):
        raise ValueError("summary features are the (predicted) clean sample's statistics of a denoiser's model: "
                         + ("leave out --backbone" if encoder is not None else f"this {modality} model has none"))
    backbone = (SUMMARY_BACKBONE if summary else OWN_BACKBONE) if encoder is None else ENCODER_PREFIX + encoder.source
    own = {"summary": True} if summary else {}
    levels = NOISE_AWARE_LEVELS if noise_aware else None
    feats = _cached_features(features_cache, ids, backbone, levels or noise_level, cfg.seed)
    if feats is not None:
        progress(f"read the features of {len(ids)} candidates back from {features_cache.name}")
    elif encoder is not None:
        progress(f"reading {encoder.source}'s features of {len(ids)} candidates")
        feats = encoder_features(encoder, [media[g][0] for g in ids], [media[g][1] for g in ids])
    else:
        at = ", ".join(f"{x:g}" for x in levels) if levels else f"{noise_level:g}"
        progress(f"reading features of {len(ids)} candidates (noise level {at})")
        try:
            prompts_, media_ = [media[g][0] for g in ids], [media[g][1] for g in ids]
            if levels:
                feats = torch.cat([_with_level(adapter.reward_features(prompts_, media_, noise_level=lv, seed=cfg.seed,
                                                                       predicted_x0=True, **own), lv) for lv in levels])
            else:
                feats = adapter.reward_features(prompts_, media_, noise_level=noise_level, seed=cfg.seed, **own)
        except NotImplementedError as e:
            raise ValueError(f"this {modality} model has no backbone a reward model can read: {e}") from None
    if features_cache is not None:
        _save_features(features_cache, feats, ids, backbone, levels or noise_level, cfg.seed)
    a = torch.tensor([index[v.x] for v in votes])
    b = torch.tensor([index[v.y] for v in votes])
    p = torch.tensor([float(v.p) for v in votes])
    if levels:  # every vote at every level: candidate i at level l is row l * N + i
        N, L = len(ids), len(levels)
        a = torch.cat([a + lv * N for lv in range(L)])
        b = torch.cat([b + lv * N for lv in range(L)])
        p, dim = p.repeat(L), dim.repeat(L)
    progress(f"{folds}-fold held-out accuracy on {len(votes)} votes about {', '.join(dimensions)}")
    metrics = kfold_accuracy(feats, a, b, p, cfg, folds, dim, dimensions, on_fold, candidates=len(ids))
    progress("training on every vote")
    head = fit_head(feats, a, b, p, cfg, len(dimensions), dim)
    r, n = pair_accuracy(head, feats, a, b, p, dim)
    on_fold(folds, r / n if n else None)
    metrics.update(train_accuracy=r / n if n else None, votes=len(votes), candidates=len(ids),
                   ties=int(((p[:len(votes)] - 0.5).abs() <= TIE_EPS).sum()))
    meta = {"name": name, "modality": modality, "base_model": base_model or getattr(adapter, "model_name", None),
            "base_revision": None if encoder is not None else getattr(adapter, "revision", None),
            "backbone": backbone,
            "encoder_revision": getattr(encoder, "revision", None),
            "noise_level": noise_level, "noise_aware": bool(levels), "noise_levels": list(levels or ()),
            "feature_seed": cfg.seed, "dimensions": dimensions,
            "theta": cfg.theta, "head": {"hidden": cfg.hidden, "epochs": cfg.epochs, "lr": cfg.lr,
                                         "weight_decay": cfg.weight_decay},
            "data_hash": data_hash(votes, vote_dimensions), "metrics": metrics}
    return LearnedReward(None if encoder is not None else adapter, head, meta, encoder), metrics


def _cached_features(path: Path | None, ids: Sequence[int], backbone: str, noise_level: Any,
                     seed: int) -> torch.Tensor | None:
    """The features saved at ``path`` if they are of these candidates, read the same way; else None."""
    if path is None or not Path(path).is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            key = json.dumps({"ids": list(ids), "backbone": backbone, "noise_level": noise_level, "seed": seed})
            return f.get_tensor("features") if meta.get("key") == key else None
    except Exception:  # noqa: BLE001 - a damaged cache is computed again
        return None


def _save_features(path: Path, feats: torch.Tensor, ids: Sequence[int], backbone: str, noise_level: Any,
                   seed: int) -> None:
    from safetensors.torch import save_file

    key = json.dumps({"ids": list(ids), "backbone": backbone, "noise_level": noise_level, "seed": seed})
    tmp = Path(path).with_suffix(".tmp")
    save_file({"features": feats.contiguous()}, str(tmp), metadata={"key": key})
    tmp.replace(path)
