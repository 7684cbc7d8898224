"""Where training examples come from: a source gives the trainer one example per stream position.

An :class:`ExampleSource` is asked, for every micro-batch, for the examples at stream positions
``base .. base + batch_size - 1`` and for the seed of that micro-batch's noise and t. The positions
come from the step, so a resumed run asks for exactly what an uninterrupted one would have.

- **Offline** sources hold their examples before training starts: :class:`StoredJudgments` (the
  user's votes and rankings, in a seeded order that is reshuffled every epoch). The thinking-dynamics
  rounds (:mod:`alignment.rounds`) make their pairs between runs and train each round on this source,
  restricted to the round's context.
- **Online** sources (``online = True``) make their examples during training with the current policy
  (SPO's step-wise resampler, RL for music): the trainer calls :meth:`ExampleSource.bind` with the
  adapter and the module being trained before the first step, and the source samples from them when
  asked for a position. The same positions must give the same examples on a resume (seed the
  sampling from the position).
"""
from __future__ import annotations

import abc
import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .config import TrainConfig
from .methods import LossSpec


@dataclass(frozen=True)
class Example:
    """One training group: candidates of one prompt, the preferred (or best-ranked) first."""

    prompt: str
    generation_ids: tuple[int, ...]
    label: float = 1.0  # the share of votes for the first candidate (soft labels)
    ranks: tuple[int, ...] | None = None  # listwise: rank of each candidate (1 = best; ties equal)
    payload: Any = field(default=None, compare=False, repr=False)  # online sources: what they sampled


class ExampleSource(abc.ABC):
    """The trainer's supply of examples (see the module docstring)."""

    #: whether examples are made during training with the current policy
    online: ClassVar[bool] = False
    #: what a source's examples are called in messages ("pairs", "rankings", ...)
    noun: str = "examples"

    def bind(self, adapter: Any, module: Any) -> None:
        """Online sources: the model to sample from. Offline sources ignore it."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """How many distinct examples there are (for an online source: per epoch, as it defines one)."""

    @abc.abstractmethod
    def examples(self, base: int, count: int) -> list[Example]:
        """The examples at stream positions ``base .. base + count - 1``."""

    @abc.abstractmethod
    def noise_seed(self, base: int) -> int:
        """The seed of the noise and t of the micro-batch that starts at position ``base``."""

    @abc.abstractmethod
    def data_hash(self) -> str:
        """A short hash of what the source trains on (in the run record and the adapter's metadata)."""

    def prompts(self) -> list[str]:
        """Distinct prompts, in order (validation samples use the first few)."""
        return []

    def batch(self, adapter: Any, examples: list[Example]) -> Any:
        """Online sources: the training batch of their examples (None: the trainer encodes the stored
        candidates of ``generation_ids``). A micro-batch may hold fewer examples than asked for, or none."""
        return None

    def score(self, adapter: Any, module: Any, batch: Any, generator: Any) -> Any:
        """Scores [B, K] of a batch under ``module`` (the policy, or the reference when the trainer has
        disabled the adapter): by default the modality's score."""
        return adapter.score(module, batch, generator)

    def metrics(self) -> dict[str, float]:
        """Figures about the examples last made (online sources), logged with the step's metrics."""
        return {}

    def loss_inputs(self, examples: list[Example]) -> dict[str, Any]:
        """Online sources: extra keyword arguments of the loss for these examples (e.g. their rewards)."""
        return {}

    def recurring_key(self, base: int) -> int | None:
        """For cached reference scores: equal keys mean the micro-batch recurs with the same noise
        (None: never cache)."""
        return None


def build_examples(store, cfg: TrainConfig, data_model: str | None) -> list[dict[str, Any]]:
    """Training examples from the store: {prompt, generation_ids (winner/best first), label, ranks}."""
    from .methods import get_loss

    spec = get_loss(cfg.method)
    if spec.listwise:
        groups = store.ranked_groups(modality=cfg.modality, model=data_model, min_size=2, contexts=cfg.contexts,
                                     dimension=cfg.dimension)
        if not groups:
            return []
        k = Counter(len(g.generation_ids) for g in groups).most_common(1)[0][0]
        out = []
        for g in groups:
            if len(g.generation_ids) != k:
                continue
            worst = max(r for r in g.ranks if r is not None) + 1
            out.append({"prompt": g.prompt, "generation_ids": list(g.generation_ids), "label": 1.0,
                        "ranks": [r if r is not None else worst for r in g.ranks]})
        return out
    pairs = store.preference_pairs(modality=cfg.modality, model=data_model, derivation=cfg.derivation,
                                   contexts=cfg.contexts, dimension=cfg.dimension)
    return [{"prompt": p.prompt, "generation_ids": [p.winner_id, p.loser_id], "label": p.label, "ranks": None}
            for p in pairs]


def example_index(cfg: TrainConfig, n: int, i: int) -> int:
    """The i-th example of the stream: a fresh seeded shuffle each epoch (so resuming at any
    step reproduces the same order without saving any data state). With ``cache_reference``
    every epoch keeps the first epoch's order, so micro-batches recur."""
    epoch, pos = divmod(i, n)
    order = list(range(n))
    random.Random(cfg.seed * 1_000_003 + (0 if cfg.cache_reference else epoch)).shuffle(order)
    return order[pos]


def noise_seed(cfg: TrainConfig, n: int, base: int) -> int:
    """The seed of the noise and t of the micro-batch starting at stream position ``base``
    (with ``cache_reference``, a recurring micro-batch keeps its seed)."""
    return cfg.seed * 1_000_003 + (base % n if cfg.cache_reference else base)


class StoredJudgments(ExampleSource):
    """The user's judgments in the store: winner-first pairs (rankings expanded as ``derivation``
    says), or rankings of K for listwise methods; restricted to ``contexts`` when the config says."""

    def __init__(self, store, cfg: TrainConfig, spec: LossSpec, data_model: str | None):
        self.cfg = cfg
        self.noun = "rankings" if spec.listwise else "preference pairs"
        self._rows = build_examples(store, cfg, data_model)
        self._examples = [Example(r["prompt"], tuple(r["generation_ids"]), float(r["label"]),
                                  tuple(r["ranks"]) if r["ranks"] is not None else None) for r in self._rows]

    def __len__(self) -> int:
        return len(self._examples)

    def examples(self, base: int, count: int) -> list[Example]:
        n = len(self._examples)
        return [self._examples[example_index(self.cfg, n, base + b)] for b in range(count)]

    def noise_seed(self, base: int) -> int:
        return noise_seed(self.cfg, len(self._examples), base)

    def data_hash(self) -> str:
        return hashlib.sha256(json.dumps(self._rows, sort_keys=True).encode()).hexdigest()[:16]

    def prompts(self) -> list[str]:
        return list(dict.fromkeys(e.prompt for e in self._examples))

    def recurring_key(self, base: int) -> int | None:
        return base % len(self._examples) if self.cfg.cache_reference else None
