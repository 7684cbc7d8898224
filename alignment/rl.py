"""Policy samples scored by reward models: the online source of RL from sequence-level rewards.

MusicRL (Cideron et al. 2024, "MusicRL: Aligning Music Generation to Human Preferences") fine-tunes an
autoregressive generator with reinforcement learning on rewards given to whole samples -- text adherence
and quality (MusicRL-R), a reward model of users' pairwise votes (MusicRL-U), or both (MusicRL-RU) --
with a KL penalty to the base model. Here, for each prompt of a micro-batch, the model as it is now (LoRA
on, no gradient) generates ``samples`` candidates; the run's reward model scores them (one reward, or an
ensemble ``a+b`` of several: the mean of their standardised scores); and the candidates become one example:

- ``musicrl`` (:func:`alignment.losses.rloo_kl`): all K candidates with their rewards, trained with
  REINFORCE and a leave-one-out baseline, the KL to the reference inside the reward;
- ``dpo-self`` / ``simpo-self``: the best and the worst candidate as a pair, trained with the ordinary
  DPO / SimPO loss -- the cheaper alternative (reward-ranked self-samples).

Seeds come from the run's seed and the stream position, so a resumed run samples what an uninterrupted
one would have (with the same adapter weights). Reward models that read the generator's own features read
the base model's (the LoRA disabled).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import torch

from .config import TrainConfig
from .errors import TrainingError
from .methods import LossSpec
from .sources import Example, ExampleSource, example_index, noise_seed
from .spo import stored_prompts


class PolicySamples(ExampleSource):
    """See the module docstring. ``batch_size`` is prompts per micro-batch."""

    online = True
    noun = "prompts"

    def __init__(self, store: Any, cfg: TrainConfig, spec: LossSpec, data_model: str | None):
        self.store, self.cfg, self.spec = store, cfg, spec
        self._prompts = list(cfg.prompts) if cfg.prompts else stored_prompts(store, cfg.modality, data_model)
        if not self._prompts:
            raise TrainingError(f"{cfg.method} samples its own candidates but needs prompts: generate candidates "
                                f"for some prompts first, or give the run a prompt list (prompts)")
        self.listwise = spec.takes_rewards  # all K samples with their rewards; else the best and worst as a pair
        self._made: dict[str, float] = {}

    def bind(self, adapter: Any, module: Any) -> None:
        from .rewards import service

        self.adapter, self.module = adapter, module
        opts = {**self.spec.defaults, **self.cfg.loss_kwargs}
        self.spec.check_kwargs(opts)
        self.k = int(opts["samples"])
        self.temperature = float(opts["temperature"])
        self.options = opts
        try:
            self.reward = service.load(self.store, self.cfg.reward_model, self.cfg.modality, adapter)
        except (KeyError, ValueError, FileNotFoundError) as e:
            raise TrainingError(f"reward model {self.cfg.reward_model!r}: {e}") from None

    # -- the stream -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._prompts)

    def prompts(self) -> list[str]:
        return list(self._prompts)

    def noise_seed(self, base: int) -> int:
        return noise_seed(self.cfg, len(self._prompts), base)

    def data_hash(self) -> str:
        meta = getattr(self.reward, "meta", {}) if hasattr(self, "reward") else {}
        blob = {"prompts": self._prompts, "reward": self.cfg.reward_model, "reward_data": meta.get("data_hash"),
                "options": {k: float(v) for k, v in sorted(getattr(self, "options", {}).items())}}
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]

    @torch.no_grad()
    def examples(self, base: int, count: int) -> list[Example]:
        from modalities.protocol import GenerationRequest

        from .lora_setup import adapter_disabled

        out: list[Example] = []
        rewards_seen: list[float] = []
        spreads: list[float] = []
        was_training = self.module.training
        for b in range(count):
            pos = base + b
            prompt = self._prompts[example_index(self.cfg, len(self._prompts), pos)]
            seeds = tuple((self.cfg.seed * 1_000_003 + pos) * 64 + i for i in range(self.k))
            try:
                samples = self.adapter.generate(GenerationRequest(prompt, self.k, seeds=seeds,
                                                                  params={"temperature": self.temperature}))
            finally:
                self.module.train(was_training)
            media = [s.data for s in samples]
            with adapter_disabled(self.module):  # a reward model reading the model's features reads the base's
                r = np.asarray(self.reward.overall(prompt, media), dtype=np.float64)
            if not np.all(np.isfinite(r)):
                raise TrainingError(f"reward model {self.cfg.reward_model!r} gave a non-finite reward for {prompt!r}")
            rewards_seen += r.tolist()
            spreads.append(float(r.max() - r.min()))
            if self.listwise:
                out.append(Example(prompt, (), 1.0, payload={"media": media, "rewards": r.tolist()}))
            else:
                best, worst = int(np.argmax(r)), int(np.argmin(r))
                if r[best] > r[worst]:  # equal rewards make no pair
                    out.append(Example(prompt, (), 1.0, payload={"media": [media[best], media[worst]],
                                                                  "rewards": [float(r[best]), float(r[worst])]}))
        self._made = {"prompts": float(count), "samples": float(count * self.k),
                      "sample_reward": float(np.mean(rewards_seen)) if rewards_seen else 0.0,
                      "reward_spread": float(np.mean(spreads)) if spreads else 0.0,
                      "groups": float(len(out))}
        return out

    def metrics(self) -> dict[str, float]:
        return dict(self._made)

    def batch(self, adapter: Any, examples: list[Example]) -> Any:
        from modalities.protocol import Group

        return adapter.encode([Group(e.prompt, tuple(e.payload["media"])) for e in examples])

    def loss_inputs(self, examples: list[Example]) -> dict[str, Any]:
        if not self.listwise:
            return {}
        return {"rewards": torch.tensor([e.payload["rewards"] for e in examples], dtype=torch.float32)}
