"""The contract between a modality and the alignment core.

Every preference method Palate trains reduces to one number per sample, the
*score*: how likely the model finds sample x for prompt c. A modality adapter
(image, video, music, text) turns its model family into that number; the
losses in ``alignment`` only ever see scores.

Conventions -- written once, here, and kept everywhere:

* **Winner first.** A training group holds K samples of one prompt; column 0
  is the preferred sample. For a ranking, columns are in rank order, best
  first. Ties and "both bad" judgments never become groups (``storage``
  filters them), so a group never encodes a tie as a win.
* **Scores are float32, shape [B, K]**, higher = more likely:
  - autoregressive (text, MusicGen tokens): the sum of the response tokens'
    log-probabilities, prompt tokens masked; the mean instead of the sum for
    length-normalised losses (SimPO);
  - diffusion with epsilon or v prediction (SD 1.5 / 2.x / XL): minus the
    per-sample mean squared error between the model's prediction and its
    target at a noise level t;
  - flow matching (SD3, FLUX, Wan, LTX, small flow models): minus the
    per-sample mean squared error of the predicted velocity at time t, with
    ``x_t = (1 - t) * x0 + t * noise`` -- **t = 1 is pure noise** -- and
    velocity target ``noise - x0``.
* **Shared randomness.** ``score`` draws every random number (noise, t, token
  dropout, ...) from the ``generator`` it is given, in an order that depends
  only on the batch's shapes, and draws noise and t **once per group**
  (shape [B, 1, ...], broadcast over K). Winner and loser therefore see the
  same noise and t, and two calls with generators in the same state -- one for
  the policy, one for the reference -- see the same noise and t too.
* **The reference model** is the policy with its LoRA adapter disabled (one
  model in memory), never a second copy. Beware when training on top of an
  existing adapter: "adapter disabled" is then the *base* model, not the
  previous adapter. The trainer must choose on purpose -- merge the previous
  adapter into the base weights first (reference = previous adapter), or keep
  the base as reference and say so in the run's config -- never silently.

An adapter implements :class:`ModalityAdapter` and registers itself in
:mod:`modalities.registry`. :mod:`modalities.contract` holds the generic checks
every adapter must pass.
"""
from __future__ import annotations

import abc
import enum
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

if TYPE_CHECKING:  # torch is only needed by implementations, not to import the contract
    import torch
    from torch import nn

MAX_CANDIDATES = 64
MAX_SEED = 2**32 - 1


class ScoreKind(str, enum.Enum):
    """Which family of score a modality computes (see the module docstring)."""

    AUTOREGRESSIVE = "autoregressive"
    DIFFUSION = "diffusion"
    FLOW = "flow"


@dataclass(frozen=True)
class ModelRef:
    """A model to load: hub id or local folder, optional revision and adapter."""

    id: str
    revision: str | None = None
    adapter: str | None = None  # path of a LoRA adapter folder, or None for the base model

    def __post_init__(self) -> None:
        if not self.id or not str(self.id).strip():
            raise ValueError("a model reference needs a hub id or a local folder path")


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate: ``n`` candidates for ``prompt``.

    ``seeds``: one per candidate, or None to draw them at random (the drawn
    seeds are recorded in each sample's provenance, so every candidate can be
    regenerated). ``params``: the modality's settings (steps, guidance, size,
    scheduler, temperature, top_p, max_new_tokens, ...). ``guide``: reward guidance while sampling, for
    modalities that declare the ``reward-guidance`` capability (an object with ``gradient(adapter,
    prompts, latents, t)`` and ``describe()``; see ``modalities.video.guidance``).
    """

    prompt: str
    n: int = 4
    seeds: tuple[int, ...] | None = None
    negative_prompt: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    guide: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError("the prompt is empty; describe what the candidates should show")
        if not isinstance(self.n, int) or not 1 <= self.n <= MAX_CANDIDATES:
            raise ValueError(f"n must be between 1 and {MAX_CANDIDATES} candidates, got {self.n!r}")
        if self.seeds is not None:
            seeds = tuple(int(s) for s in self.seeds)
            if len(seeds) != self.n:
                raise ValueError(f"give one seed per candidate: n={self.n} but {len(seeds)} seeds")
            bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
            if bad:
                raise ValueError(f"seeds must be in [0, {MAX_SEED}], got {bad}")
            object.__setattr__(self, "seeds", seeds)

    def resolved_seeds(self, rng: random.Random | None = None) -> tuple[int, ...]:
        """The request's seeds, or ``n`` fresh random ones."""
        if self.seeds is not None:
            return self.seeds
        rng = rng or random.SystemRandom()
        return tuple(rng.randint(0, MAX_SEED) for _ in range(self.n))


@dataclass(frozen=True)
class Provenance:
    """Everything needed to reproduce one sample (stored with it)."""

    modality: str
    model: str
    seed: int
    params: Mapping[str, Any]
    revision: str | None = None
    adapter: str | None = None

    def storage_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``storage.Store.add_generation``."""
        params = dict(self.params)
        if self.adapter is not None:
            params.setdefault("adapter", self.adapter)
        return {
            "modality": self.modality,
            "model": self.model,
            "model_revision": self.revision,
            "seed": self.seed,
            "params": params,
        }


@dataclass(frozen=True)
class Sample:
    """One generated candidate, encoded the way it is stored and shown.

    ``data``: PNG for images, WAV for audio, MP4 for video, UTF-8 for text.
    """

    data: bytes
    mime: str
    provenance: Provenance

    @property
    def text(self) -> str | None:
        return self.data.decode("utf-8") if self.mime.startswith("text/") else None


@dataclass(frozen=True)
class Group:
    """One training example before encoding: K encoded samples of one prompt,
    winner (or best-ranked) first."""

    prompt: str
    samples: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if len(self.samples) < 2:
            raise ValueError(f"a training group needs at least 2 samples (winner first), got {len(self.samples)}")


@dataclass
class TrainingBatch:
    """Encoded groups, ready for ``score``.

    ``tensors``: each of shape [B, K, ...] (latents, token ids, masks, ...);
    ``conditioning``: per-prompt tensors of shape [B, ...] (text embeddings,
    prompt token ids); keys are the adapter's own.
    """

    prompts: list[str]
    tensors: dict[str, "torch.Tensor"]
    conditioning: dict[str, "torch.Tensor"] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return len(self.prompts)

    @property
    def group_size(self) -> int:
        first = next(iter(self.tensors.values()))
        return int(first.shape[1])

    def to(self, device: Any) -> "TrainingBatch":
        return TrainingBatch(
            list(self.prompts),
            {k: v.to(device) for k, v in self.tensors.items()},
            {k: v.to(device) for k, v in self.conditioning.items()},
        )

    def select(self, columns: Sequence[int]) -> "TrainingBatch":
        """The same batch with its K columns reordered/selected (winner first)."""
        idx = list(columns)
        return TrainingBatch(
            list(self.prompts),
            {k: v[:, idx] for k, v in self.tensors.items()},
            dict(self.conditioning),
        )


class ModalityAdapter(abc.ABC):
    """What a modality must provide. Subclass it, fill in the class attributes
    and the four methods, register the class in ``modalities.registry``, and
    run ``modalities.contract.check_adapter`` in your tests.

    ``load`` (a classmethod) builds an adapter from a :class:`ModelRef` (hub
    id or local folder); it must raise a clear error for an unknown id, a
    folder that is not a model of this family, or no network.
    """

    #: registry name: "image", "video", "music" or "text"
    name: ClassVar[str]
    #: which score family ``score`` computes (an instance may override it when
    #: the loaded model decides, e.g. a UNet or a flow transformer pipeline)
    score_kind: ScoreKind
    #: module-name patterns LoRA wraps by default (peft ``target_modules``)
    default_lora_targets: ClassVar[tuple[str, ...]]

    @classmethod
    @abc.abstractmethod
    def load(cls, ref: ModelRef, *, device: str | None = None, dtype: "torch.dtype | None" = None,
             cache_dir: "Path | None" = None) -> "ModalityAdapter":
        """Load the model (hub id or local folder) with sensible device/dtype. ``cache_dir``: a
        folder the adapter may keep derived data in (encoded latents, ...), or None."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> list[Sample]:
        """``request.n`` samples, one per seed, each with full provenance."""

    @abc.abstractmethod
    def encode(self, groups: Sequence[Group]) -> TrainingBatch:
        """Encode groups of K samples into tensors [B, K, ...] (cacheable)."""

    @abc.abstractmethod
    def score(self, model: "nn.Module", batch: TrainingBatch, generator: "torch.Generator") -> "torch.Tensor":
        """Scores [B, K], float32, column 0 the preferred sample, all
        randomness from ``generator`` and shared within each group."""

    @abc.abstractmethod
    def trainable_module(self) -> "nn.Module":
        """The module LoRA wraps (the UNet, the transformer, the LM)."""

    def lora_target_modules(self) -> list[str]:
        """LoRA targets for the loaded model; defaults to ``default_lora_targets``."""
        return list(self.default_lora_targets)

    def reward_features(self, prompts: Sequence[str], media: Sequence[bytes], *, noise_level: float = 0.0,
                        seed: int = 0) -> "torch.Tensor":
        """Features of candidates (``media[i]`` answering ``prompts[i]``) for a learned reward model's
        head: float32 [N, D] on the CPU, from the loaded model itself (a denoiser at ``noise_level``, a
        language model's hidden states), deterministic in ``seed``. Modalities without them raise
        ``NotImplementedError``, which the reward trainer reports as a backbone that does not fit."""
        raise NotImplementedError(f"{type(self).__name__} offers no features for a reward model")

    def stochastic_sampler(self, *, steps: int, guidance: float, eta: float, size: int | None = None) -> Any:
        """A sampler that steps the model stochastically with log-probabilities (online methods such
        as SPO). It answers ``noise(generator, n)``, ``predict(module, x, i, prompts)`` (guided),
        ``moments(pred, x, i) -> (mean, std, x0)``, ``draw(mean, std, generator, n)``, ``x0(pred, x, i)``,
        ``time_after(i, n)``, ``logprob(module, x, i, next, prompts) -> [B, K]``, ``to_pixels(x0)``, and
        has ``steps``, ``cfg`` (guided by an unconditional pass) and ``forwards`` (denoiser rows run); see
        ``modalities.diffusion.trajectory.StochasticSampler``. Modalities without one raise
        ``NotImplementedError``."""
        raise NotImplementedError(f"{type(self).__name__} has no stochastic step with log-probabilities")

    def latent_reward_features(self, prompts: Sequence[str], noisy: "torch.Tensor", t: "torch.Tensor",
                               clean: "torch.Tensor | None" = None) -> "torch.Tensor":
        """Reward features (as ``reward_features`` reads them) of latents ``noisy`` at model times ``t``
        -- a trajectory's samples, for noise-aware reward models. Modalities without them raise
        ``NotImplementedError``."""
        raise NotImplementedError(f"{type(self).__name__} offers no features of noisy latents")

    def noise_level_of(self, t: "torch.Tensor") -> "torch.Tensor":
        """Model times as noise levels in [0, 1) (the scale of ``reward_features``' ``noise_level``)."""
        raise NotImplementedError(f"{type(self).__name__} has no noise levels")

    def online_defaults(self) -> dict[str, float]:
        """Sampling defaults of online methods for the loaded model (e.g. SDXL: a pool of 2), over
        the method's own (``alignment.methods``)."""
        return {}

    def media_of_pixels(self, pixels: "torch.Tensor") -> list[bytes]:
        """Images [N, 3, H, W] in [-1, 1] as this modality's stored media (for reward models that score
        a trajectory's predicted clean sample). Modalities that are not images raise ``NotImplementedError``."""
        raise NotImplementedError(f"{type(self).__name__} does not turn pixels into media")

    def configure_training(self, **options: Any) -> None:
        """The modality's own training options (its spec's ``train_options``, from the run's config
        ``modality_options``), set once before training; raise ``ValueError`` for an unknown one."""
        if options:
            raise ValueError(f"{type(self).__name__} takes no training options, got {sorted(options)}")

    def configure_scores(self, *, per_token: bool) -> None:
        """Autoregressive modalities: make ``score`` return per-token means instead of sums (the
        trainer sets it from the method and the config, for policy and reference alike). Other score
        families have nothing to configure."""

    def token_counts(self, batch: TrainingBatch) -> "torch.Tensor | None":
        """Autoregressive modalities: how many tokens each sample's score covers, [B, K]
        (for per-token reductions such as TRL's NLL term). None for other score families."""
        return None

    # -- exports of a trained adapter (the formats are the spec's export_formats) --
    @classmethod
    def export_adapter(cls, adapter_dir: "Path", out: "Path", fmt: str, *, base_model: str,
                       metadata: dict[str, Any]) -> "Path":
        """Write the trained adapter in ``adapter_dir`` to ``out`` (a folder or file) as ``fmt``."""
        raise NotImplementedError(f"{cls.__name__} exports no adapters")

    @classmethod
    def verify_export(cls, base_model: str, adapter_dir: "Path", exported: "Path", fmt: str) -> float:
        """Load ``exported`` as its target tool would and compare it with the trained adapter;
        raise ``ValueError`` when they differ. Returns the largest difference seen."""
        raise NotImplementedError(f"{cls.__name__} exports no adapters")

    @classmethod
    def prompt_renderer(cls) -> Any:
        """For modalities whose models see a rendered prompt (a chat template): an object with
        ``has_chat_template(model)`` and ``render(model, prompt)`` that dataset exports use to write
        the prompt each model saw. None (the default): the prompt is what the model saw."""
        return None

    # -- LoRA files (defaults: a PEFT folder, as transformers models use) -------
    def save_lora(self, module: "nn.Module", out: "Path", state: "dict[str, torch.Tensor]",
                  config: dict[str, Any]) -> None:
        """Write the trained LoRA (``state``: peft's state dict, ``config``: its LoraConfig
        as a dict) into the folder ``out`` in the format ``ModelRef.adapter`` loads back.
        Default: a PEFT folder (``adapter_model.safetensors`` + ``adapter_config.json``)."""
        from . import lora

        lora.save_folder(out, state, config)

    def load_lora(self, module: "nn.Module", path: "Path", adapter_name: str) -> None:
        """Load a saved LoRA into ``module`` as the extra, frozen adapter ``adapter_name``
        (the active adapter stays active; the trainer switches with ``modalities.lora``).
        Default: a PEFT folder, through peft's functional API."""
        from . import lora

        lora.load_folder(module, path, adapter_name)
