"""The training run's configuration: a frozen dataclass that validates itself.

It is written as ``config.json`` into the run directory; ``python -m
alignment.train RUN_DIR`` reads it back. Unknown keys are refused (a typo must
not silently fall back to a default).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .methods import LOSSES


@dataclass(frozen=True)
class TrainConfig:
    modality: str  # a registered modality (modalities.registry)
    method: str  # a key of alignment.losses.LOSSES
    model: str  # hub id, local folder, or built-in alias
    data_dir: str  # the Palate data directory the preferences come from
    model_revision: str | None = None
    data_model: str | None = None  # whose candidates to train on (default: the generations of `model`)
    steps: int = 100
    batch_size: int = 4  # groups per optimizer step (before accumulation)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float | None = None  # None: the method's default (alignment.losses)
    warmup: int = 0
    beta: float | None = None  # None: the method's default (see alignment.losses)
    loss_kwargs: dict[str, float] = field(default_factory=dict)
    # language models: the score of an answer is the sum of its tokens' log-probabilities, or their
    # mean ("auto": the method's own choice, LossSpec.length_normalized -> mean, sum otherwise)
    score_reduction: str = "auto"
    # the NLL term (loss_kwargs nll): "score" = the chosen answer's score (Palate's default), "token" =
    # the mean NLL over all chosen tokens of the batch (TRL's rpo_alpha)
    nll_reduction: str = "score"
    lora_rank: int = 8
    lora_alpha: float = 8.0
    lora_dropout: float = 0.0
    lora_targets: list[str] | None = None  # module names LoRA wraps (None: the adapter's per-architecture default)
    derivation: str = "all"  # rankings -> pairs: all or best-vs-rest
    contexts: list[str] | None = None  # train only on judgments made in these contexts (None: all)
    dimension: str = "overall"  # train on the judgments about this dimension (the modality declares them)
    seed: int = 0
    checkpoint_every: int = 50
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    device: str | None = None
    mixed_precision: str = "auto"  # auto (bf16 or fp16 on CUDA, none on CPU), no, fp16, bf16
    optimizer: str = "auto"  # auto (adamw8bit on CUDA when bitsandbytes is installed), adamw, adamw8bit
    cache_reference: bool = False  # reference scores once per micro-batch; the data order repeats each epoch
    init_adapter: str | None = None  # continue from this adapter folder (it becomes the reference)
    validation_prompts: list[str] | None = None  # None: the first distinct training prompts
    validation_count: int = 4  # prompts sampled at the start and the end (0: none)
    validation_seeds: int = 2  # images per prompt, seeds 0..n-1
    run_id: int | None = None  # the run's row in the store
    modality_source: str | None = None  # "module:SPEC" of a plugin modality (None: built in), for the trainer
    modality_options: dict[str, Any] = field(default_factory=dict)  # the modality's train_options (its spec)
    # online methods (SPO): the reward model that judges samples (a programmatic one such as taste-saturated,
    # a learned one by name[@vN], or an ensemble a+b), and the prompts to sample (None: the stored prompts)
    reward_model: str | None = None
    prompts: list[str] | None = None
    # how the reward model scores a trajectory's samples: "noisy" (a noise-aware model scores the noisy
    # latent at its step), "x0" (any reward model scores the clean image the denoiser predicts), or "auto"
    # (noisy when the reward model is noise-aware, else x0)
    reward_mode: str = "auto"

    def __post_init__(self) -> None:
        if self.method not in LOSSES:
            raise ValueError(f"unknown method {self.method!r}; available: {', '.join(sorted(LOSSES))}")
        for name in ("steps", "batch_size", "grad_accum", "lora_rank", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr is not None and not float(self.lr) > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.beta is not None and not float(self.beta) > 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        if self.derivation not in ("all", "best-vs-rest"):
            raise ValueError(f"derivation must be all or best-vs-rest, not {self.derivation!r}")
        if self.lora_targets is not None and (isinstance(self.lora_targets, str) or not self.lora_targets):
            raise ValueError(f"lora_targets must be a non-empty list of module names, got {self.lora_targets!r}")
        if self.contexts is not None and (isinstance(self.contexts, str) or not self.contexts):
            raise ValueError(f"contexts must be a non-empty list of context names, got {self.contexts!r}")
        if self.contexts is not None and "compare" in self.contexts:  # storage.store.COMPARE_CONTEXT
            raise ValueError("the blind base-vs-tuned comparisons (context 'compare') are evaluations, "
                             "not training data")
        if not isinstance(self.dimension, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", self.dimension):
            raise ValueError(f"dimension must be a dimension name such as overall or style, not {self.dimension!r}")
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be auto, no, fp16 or bf16, not {self.mixed_precision!r}")
        if self.optimizer not in ("auto", "adamw", "adamw8bit"):
            raise ValueError(f"optimizer must be auto, adamw or adamw8bit, not {self.optimizer!r}")
        spec = LOSSES[self.method]
        if self.score_reduction not in ("auto", "sum", "mean"):
            raise ValueError(f"score_reduction must be auto, sum or mean, not {self.score_reduction!r}")
        if self.nll_reduction not in ("score", "token"):
            raise ValueError(f"nll_reduction must be score or token, not {self.nll_reduction!r}")
        if "autoregressive" not in spec.score_kinds and (self.score_reduction != "auto" or self.nll_reduction != "score"):
            raise ValueError(f"score_reduction and nll_reduction are for language-model methods, not {self.method}")
        allowed = set(spec.defaults) | ({"nll"} if "autoregressive" in spec.score_kinds and not spec.takes_rewards
                                        else set())
        unknown = set(self.loss_kwargs) - allowed
        if unknown:
            raise ValueError(f"loss_kwargs {sorted(unknown)} do not apply to {self.method}; it takes "
                             f"{', '.join(sorted(allowed)) or 'none'}")
        spec.check_kwargs(self.loss_kwargs)
        if spec.online:
            merged = {**spec.defaults, **self.loss_kwargs}
            if "shared_steps" in merged and float(merged["shared_steps"]) >= float(merged["sample_steps"]):
                raise ValueError(f"{self.method} shared_steps ({merged['shared_steps']}) must be fewer than sample_steps "
                                 f"({merged['sample_steps']})")
        if spec.needs_reward and not (isinstance(self.reward_model, str) and self.reward_model.strip()):
            raise ValueError(f"{self.method} scores its samples with a reward model: set reward_model to a programmatic "
                             "one (e.g. taste-saturated) or one trained on your votes (python -m app reward train)")
        if not spec.needs_reward and self.reward_model is not None:
            raise ValueError(f"reward_model is for online methods; {self.method} trains on stored judgments")
        if self.prompts is not None and (isinstance(self.prompts, str) or not all(
                isinstance(p, str) and p.strip() for p in self.prompts) or not self.prompts):
            raise ValueError("prompts must be a non-empty list of prompts")
        if self.reward_mode not in ("auto", "noisy", "x0"):
            raise ValueError(f"reward_mode must be auto, noisy or x0, not {self.reward_mode!r}")
        if self.reward_mode != "auto" and not spec.online:
            raise ValueError(f"reward_mode is for online methods; {self.method} trains on stored judgments")
        if self.prompts is not None and not spec.online:
            raise ValueError(f"prompts are for online methods; {self.method} trains on the stored judgments' prompts")
        if "nll" in self.loss_kwargs:
            try:
                nll = float(self.loss_kwargs["nll"])
            except (TypeError, ValueError):
                nll = float("nan")
            if not (nll >= 0 and nll != float("inf")):
                raise ValueError(f"loss_kwargs nll must be a finite number >= 0, got {self.loss_kwargs['nll']!r}")
        # numbers from JSON or a CLI may arrive as ints: make beta and lr floats once and for all
        if self.lr is not None:
            object.__setattr__(self, "lr", float(self.lr))
        if self.beta is not None:
            object.__setattr__(self, "beta", float(self.beta))

    @property
    def per_token_scores(self) -> bool:
        """Whether autoregressive scores are per-token means for this run."""
        if self.score_reduction == "auto":
            return LOSSES[self.method].length_normalized
        return self.score_reduction == "mean"

    @property
    def effective_lr(self) -> float:
        return float(self.lr) if self.lr is not None else LOSSES[self.method].default_lr

    @property
    def effective_beta(self) -> float:
        return float(self.beta) if self.beta is not None else LOSSES[self.method].default_beta

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; known: {', '.join(sorted(known))}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def digest(self) -> str:
        """What must not change between a run and its resumption."""
        d = self.to_dict()
        d.pop("run_id", None)
        d.pop("device", None)
        for key, default in (("score_reduction", "auto"), ("nll_reduction", "score"), ("modality_source", None),
                             ("modality_options", {}), ("reward_model", None), ("prompts", None),
                             ("reward_mode", "auto")):
            if d.get(key) == default:  # added later: at its default it leaves older checkpoints' digests as they were
                d.pop(key)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def save(self, run_dir: Path) -> Path:
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "config.json"
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, run_dir: Path) -> "TrainConfig":
        path = Path(run_dir) / "config.json"
        if not path.is_file():
            raise ValueError(f"{run_dir} is not a training run directory (no config.json)")
        return cls.from_dict(json.loads(path.read_text()))
