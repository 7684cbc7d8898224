"""The methods Palate trains with, described once: the registry of losses and what each needs.

Plain data, importable without torch (the CLI builds its help from it); the loss functions themselves
are in :mod:`alignment.losses` and are imported when a method's ``fn`` is first used. Nothing outside
this module names a method: the trainer, the CLI and the app read ``needs_reference``,
``passes_labels``, ``listwise``, ``length_normalized``, the defaults and the presets from here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Preset:
    """A measured starting point, offered by the app and the CLI (the README says where it was measured)."""

    label: str
    steps: int
    lr: float
    beta: float
    lora_rank: int = 8


@dataclass(frozen=True)
class LossSpec:
    """A method and everything the trainer, the CLI and the app need to know about it -- the one place
    where methods are described (nothing outside this module names one).

    ``needs_reference``: scores of the reference model are computed and passed; ``needs_labels``: soft
    labels must be there (pairs without repeated votes get 1.0); ``uses_labels``: labels are passed when
    the data has them; ``listwise``: trains on rankings of K (``ranks``), not pairs;
    ``length_normalized``: autoregressive scores are per-token means; ``defaults``/``kwarg_help``: the
    method's keyword arguments (config ``loss_kwargs``) with their defaults and what they mean."""

    name: str
    function: str  # the loss function's name in alignment.losses (imported with torch on first use)
    needs_reference: bool
    paper: str
    default_beta: float
    default_lr: float = 1e-4
    summary: str = ""
    needs_labels: bool = False
    uses_labels: bool = False
    listwise: bool = False
    length_normalized: bool = False  # autoregressive scores should be per-token means
    score_kinds: tuple[str, ...] = ("autoregressive", "diffusion", "flow")
    defaults: dict[str, float] = field(default_factory=dict)
    kwarg_help: dict[str, str] = field(default_factory=dict)
    presets: tuple[Preset, ...] = ()
    # online methods: the example source that samples with the policy during training ("module:Class"),
    # and the bounds its keyword arguments must keep (name -> (low, high, what it is))
    source: str | None = None
    needs_reward: bool = False  # scores its samples with a reward model (the config's reward_model)
    takes_rewards: bool = False  # the loss reads each sample's reward (from its source), not a preference order
    requires: frozenset[str] = frozenset()  # capabilities the modality must declare (its spec's ``capabilities``)
    bounds: dict[str, tuple[float, float, str]] = field(default_factory=dict)

    @property
    def online(self) -> bool:
        return self.source is not None

    def check_kwargs(self, kwargs: dict[str, Any]) -> None:
        """Refuse keyword arguments outside their bounds, with what they mean."""
        for name, (lo, hi, what) in self.bounds.items():
            if name not in kwargs:
                continue
            try:
                v = float(kwargs[name])
            except (TypeError, ValueError):
                v = float("nan")
            if not lo <= v <= hi:
                raise ValueError(f"{self.name} {name} must be {what}, got {kwargs[name]!r}")

    @property
    def passes_labels(self) -> bool:
        return self.needs_labels or self.uses_labels

    @property
    def fn(self) -> Callable[..., tuple[Any, dict[str, float]]]:
        """The loss: ``fn(policy, reference, *, beta, **kwargs) -> (loss, metrics)``."""
        from . import losses

        return losses.FUNCTIONS[self.function]


_NLL_HELP = {"nll": "weight of the NLL term on the chosen answer (RPO; 0 = off; see nll_reduction)"}
_LM = ("autoregressive",)

LOSSES: dict[str, LossSpec] = {
    s.name: s
    for s in (
        LossSpec("simpo", "simpo", False, "Meng et al. 2024", 2.0, 1e-4, "reference-free, length-normalised "
                 "log-probabilities with a margin gamma", length_normalized=True, score_kinds=_LM,
                 defaults={"gamma": 0.5}, kwarg_help={"gamma": "target reward margin", **_NLL_HELP},
                 presets=(Preset("SimPO · 100 steps", 100, 1e-4, 2.0), Preset("SimPO · quick, 20 steps", 20, 1e-4, 2.0))),
        LossSpec("dpo", "dpo", True, "Rafailov et al. 2023", 0.1, 3e-4, "DPO, sigmoid loss on the implicit "
                 "reward margin", score_kinds=_LM, kwarg_help=_NLL_HELP,
                 presets=(Preset("DPO · 100 steps", 100, 3e-4, 0.5),)),
        LossSpec("ipo", "ipo", True, "Azar et al. 2023", 0.1, 1e-4, "IPO, squared loss towards a target "
                 "margin 1/(2 beta) (with --score-reduction mean: TRL's IPO)", score_kinds=_LM, kwarg_help=_NLL_HELP,
                 presets=(Preset("IPO · 100 steps", 100, 1e-4, 0.1),)),
        LossSpec("hinge", "hinge", True, "Zhao et al. 2023 (SLiC-HF)", 0.1, 1e-4, "hinge loss on the margin",
                 score_kinds=_LM, kwarg_help=_NLL_HELP),
        LossSpec("conservative-dpo", "conservative_dpo", True, "Mitchell 2023", 0.1, 3e-4,
                 "DPO assuming a share of flipped labels", score_kinds=_LM, defaults={"label_smoothing": 0.1},
                 kwarg_help={"label_smoothing": "assumed share of flipped labels, in [0, 0.5)", **_NLL_HELP}),
        LossSpec("irepo", "irepo", True, "Le et al. 2024", 0.1, 3e-4, "regression onto the logit of soft "
                 "labels from repeated votes", needs_labels=True, score_kinds=_LM, defaults={"clip": 0.01},
                 kwarg_help={"clip": "soft labels are clipped to [clip, 1 - clip]", **_NLL_HELP},
                 presets=(Preset("iREPO · 100 steps (needs repeated votes)", 100, 3e-4, 0.5),)),
        LossSpec("diffusion-dpo", "diffusion_dpo", True, "Wallace et al. 2023", 2000.0, 5e-4, "DPO on denoising errors",
                 score_kinds=("diffusion",),
                 presets=(Preset("Diffusion-DPO · 100 steps", 100, 5e-4, 2000.0),
                          Preset("Diffusion-DPO · quick, 20 steps", 20, 5e-4, 2000.0),
                          Preset("Diffusion-DPO · long, 300 steps, rank 16", 300, 2.5e-4, 2000.0, 16))),
        LossSpec("mapo", "mapo", False, "Hong et al. 2024", 0.1, 2.5e-4, "reference-free: likelihood of the preferred "
                 "sample plus a margin", score_kinds=("diffusion", "flow"),
                 presets=(Preset("MaPO · 100 steps", 100, 2.5e-4, 0.1),)),
        LossSpec("rankdpo", "rankdpo", True, "Karthik et al. 2024", 2000.0, 5e-4, "listwise DPO over rankings, "
                 "DCG-weighted", listwise=True, score_kinds=("diffusion", "flow"),
                 presets=(Preset("RankDPO · 100 steps", 100, 5e-4, 2000.0),)),
        LossSpec("flow-dpo", "flow_dpo", True, "Liu et al. 2025", 2000.0, 5e-4, "DPO on velocity errors, constant beta",
                 score_kinds=("flow",), presets=(Preset("Flow-DPO · 100 steps", 100, 5e-4, 2000.0),)),
        LossSpec("spo", "spo", True, "Liang et al. 2024", 10.0, 1e-4, "step-aware: per denoising step, a pool of "
                 "candidates from one latent, a reward model picks a pair, clipped likelihood-ratio loss; continues "
                 "from a random candidate (online: samples with the model as it trains)", score_kinds=("diffusion", "flow"),
                 source="alignment.spo:StepwiseResampler", needs_reward=True, requires=frozenset({"stochastic-step"}),
                 defaults={"clip": 0.1, "pool": 4, "threshold": 0.3, "sample_steps": 20, "shared_steps": 4,
                           "guidance": 5.0, "eta": 1.0},
                 kwarg_help={"clip": "the likelihood ratio to the reference is clamped to [1 - clip, 1 + clip]",
                             "pool": "candidates drawn per step from the same latent (SDXL: 2)",
                             "threshold": "a pair is kept when the softmax of its two rewards differs by more than "
                                          "this (SDXL: 0.4)",
                             "sample_steps": "denoising steps of a training trajectory",
                             "shared_steps": "first steps sampled without a pool (layout noise, no pairs)",
                             "guidance": "classifier-free guidance while sampling and training (built-in model: 3; "
                                         "guidance-distilled models keep their embedded guidance)",
                             "eta": "the step's noise: DDIM eta (UNet models), SDE noise scale (flow models: 0.7)"},
                 bounds={"clip": (1e-6, 1 - 1e-6, "in (0, 1)"), "pool": (2, 64, "2 or more (at most 64)"),
                         "threshold": (1e-6, 1 - 1e-6, "in (0, 1)"), "sample_steps": (2, 200, "between 2 and 200"),
                         "shared_steps": (0, 199, "0 or more, fewer than sample_steps"),
                         "guidance": (0, 30, "between 0 and 30"), "eta": (1e-3, 1, "in (0, 1]")},
                 presets=(Preset("SPO · 50 steps (needs a reward model)", 50, 1e-4, 10.0),)),
        LossSpec("musicrl", "rloo_kl", True, "Cideron et al. 2024", 0.1, 5e-3, "RL from sequence-level rewards "
                 "(MusicRL): the model samples K candidates per prompt as it trains, a reward model scores them, "
                 "REINFORCE with a leave-one-out baseline and a KL penalty to the base (beta); recipes by reward "
                 "model: R = the prompt judge, U = a model of your votes, RU = both joined with + (online)",
                 score_kinds=("autoregressive",), source="alignment.rl:PolicySamples", needs_reward=True,
                 takes_rewards=True, defaults={"samples": 4, "temperature": 1.0},
                 kwarg_help={"samples": "candidates sampled per prompt (K, at least 2)",
                             "temperature": "sampling temperature of the candidates"},
                 bounds={"samples": (2, 16, "between 2 and 16"), "temperature": (0.05, 5, "between 0.05 and 5")},
                 presets=(Preset("MusicRL · 40 steps (needs a reward model)", 40, 5e-3, 0.1),)),
        LossSpec("dpo-self", "dpo", True, "Rafailov et al. 2023", 0.1, 3e-3, "DPO on reward-ranked self-samples: the "
                 "model samples K candidates per prompt as it trains, a reward model picks the best and the worst "
                 "(online; the cheaper alternative to musicrl)", score_kinds=("autoregressive",),
                 source="alignment.rl:PolicySamples", needs_reward=True, defaults={"samples": 4, "temperature": 1.0},
                 kwarg_help={"samples": "candidates sampled per prompt (the best and worst make the pair)",
                             "temperature": "sampling temperature of the candidates"},
                 bounds={"samples": (2, 16, "between 2 and 16"), "temperature": (0.05, 5, "between 0.05 and 5")},
                 presets=(Preset("DPO on self-samples · 40 steps (needs a reward model)", 40, 3e-3, 0.1),)),
        LossSpec("flow-rwr", "flow_rwr", False, "Liu et al. 2025", 1.0, 5e-4, "reward-weighted flow matching (beta is "
                 "the temperature)", uses_labels=True, score_kinds=("flow",)),
        LossSpec("sft", "sft", False, "Liu et al. 2025 (their baseline)", 1.0, 5e-4, "supervised fine-tuning on the "
                 "preferred samples only (the denoising / flow-matching loss of each pair's winner; beta unused)",
                 score_kinds=("diffusion", "flow")),
    )
}


def get_loss(name: str) -> LossSpec:
    if name not in LOSSES:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def losses_for(score_kind: str) -> list[str]:
    """Methods that make sense for a modality's score family."""
    return sorted(n for n, s in LOSSES.items() if score_kind in s.score_kinds)


def methods_for(score_kinds: tuple[str, ...] | list[str], capabilities: Any = ()) -> list[str]:
    """Methods for any of ``score_kinds`` (a modality's families) whose required capabilities the
    modality declares (``capabilities``: its spec's), in registry order."""
    caps = set(capabilities)
    return [n for n, s in LOSSES.items() if set(s.score_kinds) & set(score_kinds) and s.requires <= caps]
