"""SPO's step-wise resampler: the online example source of step-aware preference optimization.

SPO (Liang et al. 2024, "Aesthetic Post-Training Diffusion Models from Generic Preferences with
Step-by-step Preference Optimization") gives credit per denoising step. For each prompt of a
micro-batch it samples one trajectory with the model as it is now (the LoRA on, no gradient):

1. the first ``shared_steps`` steps without a pool (they settle the layout noise and make no pair);
2. at every later step, a pool of ``pool`` candidates for the next latent, all drawn from the same
   current latent (one guided denoiser pass gives their common Gaussian); a step-aware preference
   model scores each candidate -- a noise-aware reward model of :mod:`alignment.rewards` on the noisy
   latent itself (``reward_mode`` noisy, the default for one), or any reward model on the clean image
   the denoiser predicts from the candidate (x0: programmatic judges and tastes, other learned
   models) -- and the best and worst make a pair when the softmax of their two rewards differs by more than ``threshold``;
3. the trajectory continues from a candidate chosen uniformly at random (from the step's own random
   stream, independently of the pair), so the next step's pair does not depend on this step's choice.

Every kept pair is an example: the latent, the two next latents and the step. Its score under a model
is the transition log-probability of each candidate (:class:`modalities.diffusion.trajectory.
StochasticSampler`), and the loss (:func:`alignment.losses.spo`) compares the policy's ratio to the
reference's. All randomness of a micro-batch comes from a generator seeded by its stream position,
so a resumed run samples exactly what an uninterrupted one would have.
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


def stored_prompts(store: Any, modality: str, model: str | None) -> list[str]:
    """The distinct prompts the user generated candidates for (not a run's validation samples), in order."""
    gens = store.list_generations(modality=modality, model=model)
    return list(dict.fromkeys(g.prompt for g in gens if g.run_id is None))


def softmax_gap(scores: np.ndarray) -> tuple[int, int, float]:
    """(best, worst, softmax(best) - softmax(worst)) over a pool's rewards."""
    s = np.asarray(scores, dtype=np.float64)
    p = np.exp(s - s.max())
    p /= p.sum()
    best, worst = int(np.argmax(s)), int(np.argmin(s))
    return best, worst, float(p[best] - p[worst])


class StepwiseResampler(ExampleSource):
    """SPO's online source (see the module docstring). ``batch_size`` is prompts per micro-batch; a
    micro-batch trains on every pair their trajectories kept (from none to ``sample_steps -
    shared_steps`` per prompt)."""

    online = True
    noun = "prompts"

    def __init__(self, store: Any, cfg: TrainConfig, spec: LossSpec, data_model: str | None):
        self.store, self.cfg, self.spec = store, cfg, spec
        self._prompts = list(cfg.prompts) if cfg.prompts else stored_prompts(store, cfg.modality, data_model)
        if not self._prompts:
            raise TrainingError(f"{cfg.method} samples its own candidates but needs prompts: generate candidates "
                                f"for some prompts first, or give the run a prompt list (prompts)")
        self._made: dict[str, float] = {}

    # -- binding: the model, its sampler and the reward model ------------------------------------------------
    def bind(self, adapter: Any, module: Any) -> None:
        from .rewards import service

        self.adapter, self.module = adapter, module
        opts = {**self.spec.defaults, **adapter.online_defaults(), **self.cfg.loss_kwargs}
        self.spec.check_kwargs(opts)
        self.pool, self.threshold = int(opts["pool"]), float(opts["threshold"])
        self.steps, self.shared = int(opts["sample_steps"]), int(opts["shared_steps"])
        if self.shared >= self.steps:
            raise TrainingError(f"shared_steps ({self.shared}) must be fewer than sample_steps ({self.steps})")
        self.options = opts
        try:
            self.sampler = adapter.stochastic_sampler(steps=self.steps, guidance=float(opts["guidance"]),
                                                      eta=float(opts["eta"]))
        except NotImplementedError as e:
            raise TrainingError(f"{self.cfg.method} needs a stochastic step with log-probabilities: {e}") from None
        except ValueError as e:
            raise TrainingError(str(e)) from None
        try:
            self.reward = service.load(self.store, self.cfg.reward_model, self.cfg.modality, adapter)
        except (KeyError, ValueError, FileNotFoundError) as e:
            raise TrainingError(f"reward model {self.cfg.reward_model!r}: {e}") from None
        aware = bool(getattr(self.reward, "noise_aware", False))
        mode = self.cfg.reward_mode
        if mode == "auto":
            mode = "noisy" if aware else "x0"
        if mode == "noisy" and not aware and getattr(self.reward, "kind", "") == "learned":
            raise TrainingError(
                f"reward model {self.cfg.reward_model!r} is not noise-aware (it learned from clean samples), so it "
                "cannot score a trajectory's noisy latents: train one with `python -m app reward train NAME "
                "--noise-aware` (or tick Noise-aware in the Rewards tab), or let it score the clean image the denoiser "
                "predicts (reward_mode x0)")
        if mode == "noisy" and not aware:
            raise TrainingError(
                f"reward {self.cfg.reward_model!r} ({getattr(self.reward, 'kind', 'reward')}) scores finished media, not "
                "noisy latents: let it score the clean image the denoiser predicts (reward_mode x0, or auto)")
        self.mode = mode
        self.reward_rows = _denoiser_readers(self.reward)  # denoiser rows the reward model spends per candidate
        if mode == "x0":
            try:
                adapter.media_of_pixels(torch.zeros(1, 3, 2, 2))
            except NotImplementedError as e:
                raise TrainingError(f"{self.cfg.method} scores predicted clean samples as media, and {e}") from None

    # -- the stream -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._prompts)

    def prompts(self) -> list[str]:
        return list(self._prompts)

    def noise_seed(self, base: int) -> int:
        return noise_seed(self.cfg, len(self._prompts), base)

    def data_hash(self) -> str:
        reward = self.cfg.reward_model
        meta = getattr(self.reward, "meta", {}) if hasattr(self, "reward") else {}
        blob = {"prompts": self._prompts, "reward": reward, "reward_data": meta.get("data_hash"),
                "options": {k: float(v) for k, v in sorted(getattr(self, "options", {}).items())}}
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]

    def examples(self, base: int, count: int) -> list[Example]:
        out: list[Example] = []
        made = {"prompts": 0.0, "pools": 0.0, "pairs": 0.0, "pair_gap": 0.0, "pair_reward": 0.0,
                "sample_forwards": 0.0}
        before = self.sampler.forwards
        for b in range(count):
            prompt = self._prompts[example_index(self.cfg, len(self._prompts), base + b)]
            gen = torch.Generator("cpu").manual_seed((self.cfg.seed * 1_000_003 + base + b) * 7919 + 17)
            pairs, pools = self.trajectory(prompt, gen)
            out += pairs
            made["prompts"] += 1
            made["pools"] += pools
        made["pairs"] = float(len(out))
        if out:
            made["pair_gap"] = float(np.mean([e.payload["gap"] for e in out]))
            made["pair_reward"] = float(np.mean([e.payload["reward"] for e in out]))
        made["kept_share"] = made["pairs"] / made["pools"] if made["pools"] else 0.0
        made["sample_forwards"] = float(self.sampler.forwards - before)
        made["reward_forwards"] = float(self.reward_rows * self.pool * made["pools"])
        rows = len(out) * (2 if self.sampler.cfg else 1)  # denoiser rows of one guided pass over the pairs
        made["train_forwards"] = float(2 * rows)  # the policy's and the reference's
        made["train_backwards"] = float(rows)
        self._made = made
        return out

    def metrics(self) -> dict[str, float]:
        return dict(self._made)

    @torch.no_grad()
    def trajectory(self, prompt: str, gen: torch.Generator) -> tuple[list[Example], int]:
        """One trajectory for ``prompt``: (its kept pairs, how many pools it drew)."""
        s, k = self.sampler, self.pool
        x = s.noise(gen, 1)
        pred = s.predict(self.module, x, 0, [prompt])
        pairs: list[Example] = []
        pools = 0
        for i in range(self.steps):
            mean, std, _ = s.moments(pred, x, i)
            last = i == self.steps - 1
            if i < self.shared:
                x = s.draw(mean, std, gen, 1)
                pred = None if last else s.predict(self.module, x, i + 1, [prompt])
                continue
            cand = s.draw(mean, std, gen, k)  # [k, ...], all from the same latent
            pools += 1
            j = int(torch.randint(k, (1,), generator=gen))  # the resampler: drawn before, and apart from, the pair
            rewards, nxt_pred = self._rewards(prompt, cand, i, last)
            best, worst, gap = softmax_gap(rewards)
            if best != worst and gap > self.threshold:
                pairs.append(Example(prompt, (), 1.0, payload={
                    "x": x[0].cpu(), "next": torch.stack([cand[best], cand[worst]]).cpu(), "step": i,
                    "gap": gap, "reward": float(rewards[best])}))
            x = cand[j:j + 1]
            if not last:
                pred = nxt_pred[j:j + 1] if nxt_pred is not None else s.predict(self.module, x, i + 1, [prompt])
        return pairs, pools

    def _rewards(self, prompt: str, cand: torch.Tensor, i: int, last: bool) -> tuple[np.ndarray, torch.Tensor | None]:
        """The step-aware preference model's scores of a pool after step ``i`` (and the policy's
        predictions at the next step, when they were needed for it)."""
        from .lora_setup import adapter_disabled

        s, k = self.sampler, cand.shape[0]
        if self.mode == "noisy":  # the noisy latents themselves, at their noise level
            with adapter_disabled(self.module):  # the reward model reads the base model's features
                scores = self.reward.score_latents([prompt] * k, cand, s.time_after(i, k))
            dims = self.reward.dimensions
            return np.asarray(scores.get("overall", scores[dims[0]]), dtype=np.float64), None
        if last:
            nxt_pred, x0 = None, cand
        else:
            nxt_pred = s.predict(self.module, cand, i + 1, [prompt] * k)
            x0 = s.x0(nxt_pred, cand, i + 1)
        media = self.adapter.media_of_pixels(s.to_pixels(x0))
        with adapter_disabled(self.module):  # a reward model reading the model's own features reads the base's
            rewards = np.asarray(self.reward.overall(prompt, media), dtype=np.float64)
        return rewards, nxt_pred

    # -- training on the pairs ------------------------------------------------------------------------
    def batch(self, adapter: Any, examples: list[Example]) -> Any:
        from modalities.protocol import TrainingBatch

        return TrainingBatch([e.prompt for e in examples],
                             {"x": torch.stack([e.payload["x"] for e in examples]),
                              "next": torch.stack([e.payload["next"] for e in examples]),
                              "step": torch.tensor([e.payload["step"] for e in examples])}, {})

    def score(self, adapter: Any, module: Any, batch: Any, generator: Any) -> torch.Tensor:
        dev = adapter.device
        t = batch.tensors
        return self.sampler.logprob(module, t["x"].to(dev), t["step"], t["next"].to(dev), batch.prompts)


def _denoiser_readers(reward: Any) -> int:
    """How many of a reward model's parts read the generator's own features (a denoiser pass per
    candidate each): learned models on own features, counted through ensembles."""
    members = getattr(reward, "members", None)
    if members is not None:
        return sum(_denoiser_readers(m) for m in members)
    return int(getattr(reward, "kind", "") == "learned" and getattr(reward, "encoder", None) is None)
