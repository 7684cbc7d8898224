"""Procedures that build their own training pairs between runs, in rounds.

A procedure is chosen like a method (``python -m app train --method dto ...``) but is not a loss: each
round it makes pairs with the current model, stores them as votes in the round's own context, and then
trains one ordinary run on them (with one of the registry's losses; the caller launches it, the CLI as
``python -m alignment.train``), the next round continuing from that run's adapter. It declares its
options, which the CLI adds to ``train``'s flags, and the score families it applies to.

Today: thinking-dynamics optimization (:mod:`alignment.dto`) on a reasoning world.
"""
from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

# a launcher trains one round on the model's stored judgments: (method, model, init_adapter) -> (exit code,
# the new adapter's folder)
Launcher = Callable[[str, str, "str | None"], "tuple[int, str | None]"]


@dataclass(frozen=True)
class Option:
    """A procedure's option: an argparse flag (``kwargs`` as ``add_argument`` takes them)."""

    flag: str
    kwargs: Mapping[str, Any]

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Procedure:
    name: str
    title: str
    score_kinds: tuple[str, ...]
    run: Callable[..., int]  # run(store_opener, options, model, init_adapter, launch, device) -> exit code
    options: tuple[Option, ...] = field(default_factory=tuple)


def _problem_counts(value: str) -> list[int]:
    """`--problems 64` (every round) or `--problems 64,64,256` (one count per round)."""
    try:
        counts = [int(x) for x in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or comma-separated numbers, got {value!r}") from None
    return counts


def dto_schedule(problems: list[int], rounds: int | None) -> list[int]:
    """Problems per round from --problems and --rounds (a list of counts sets the rounds itself)."""
    if len(problems) > 1:
        if rounds is not None and rounds != len(problems):
            raise ValueError(f"--problems gives {len(problems)} per-round counts but --rounds is {rounds}")
        return list(problems)
    return list(problems) * (1 if rounds is None else rounds)


def _dto_round_pairs(open_store, opts: Mapping[str, Any], modality: str, model: str, init_adapter: str | None,
                     round_no: int, schedule: list[int], device: str | None) -> int:
    """One round of thinking-dynamics optimization: the model answers the world's problems,
    concise-but-correct versions of its traces are built, and the pairs are stored as votes."""
    from modalities import registry
    from modalities.protocol import ModelRef

    from .dto import dto_round, noisy_annotator_votes

    world = importlib.import_module(opts["world"])
    lm = registry.get(modality).load(ModelRef(model, adapter=init_adapter), device=device)
    # round k answers the next schedule[k] problems of one seeded stream: fresh ones every round
    start, end = sum(schedule[:round_no]), sum(schedule[:round_no + 1])
    problems = world.problems(end, "train", seed=opts["seed_problems"])[start:]
    prompt_fn = (lambda p: p.prompt) if lm.has_chat_template else world.format_prompt
    context = f"dto-round-{round_no}"
    with open_store() as store:
        params = {"max_tokens": opts["max_tokens"]} if opts.get("max_tokens") else None
        result = dto_round(lm, problems, n_samples=opts["samples"], mc_samples=opts["mc_samples"], store=store,
                           params=params, seed=round_no, prompt_fn=prompt_fn, context=context,
                           with_rollouts=opts["rollout_pairs"])
        if opts["dto_loss"] == "irepo" and result.stored:
            noisy_annotator_votes(store, result.stored, annotators=5, seed=round_no, context=context)
    st = result.stats
    print(f"DTO round {round_no}: {st.get('correct')} of {st.get('traces')} traces correct, "
          f"{len(result.pairs)} pairs ({st.get('pairs_by_kind', {})})", flush=True)
    return len(result.pairs)


def run_dto(open_store, opts: Mapping[str, Any], *, modality: str, model: str, init_adapter: str | None,
            launch: Launcher, device: str | None = None) -> int:
    """Thinking-dynamics optimization in rounds; returns the last round's exit code."""
    for name in ("rounds", "samples", "mc_samples"):
        if opts.get(name) is not None and opts[name] < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {opts[name]}")
    if min(opts["problems"]) < 1:
        raise ValueError(f"--problems must be at least 1 per round, got {','.join(map(str, opts['problems']))}")
    schedule = dto_schedule(opts["problems"], opts.get("rounds"))
    code = 0
    for round_no in range(len(schedule)):
        if _dto_round_pairs(open_store, opts, modality, model, init_adapter, round_no, schedule, device) == 0:
            raise ValueError("thinking-dynamics optimization found no pair to learn from (no correct trace "
                             "among the samples); use a model that solves some of the problems, or more --samples")
        code, adapter_dir = launch(opts["dto_loss"], model, init_adapter)
        if code != 0:
            return code
        init_adapter = adapter_dir
    return code


DTO = Procedure(
    name="dto",
    title="thinking-dynamics optimization for reasoning models",
    score_kinds=("autoregressive",),
    run=run_dto,
    options=(
        Option("--dto-loss", {"default": "simpo", "choices": ["simpo", "dpo", "irepo"],
                              "help": "the preference loss trained on DTO's pairs (irepo: soft labels from 5 noisy "
                                      "AI annotators)"}),
        Option("--problems", {"type": _problem_counts, "default": [64], "metavar": "N[,N...]",
                              "help": "problems per round, or one count per round (64,64,256: three rounds)"}),
        Option("--samples", {"type": int, "default": 4, "help": "answers sampled per problem"}),
        Option("--mc-samples", {"type": int, "default": 4, "help": "completions per cut point (Monte-Carlo)"}),
        Option("--max-tokens", {"type": int, "help": "longest sampled trace (default: the model's own default)"}),
        Option("--rounds", {"type": int, "help": "rounds, each on fresh problems answered by the last adapter, "
                                                 "continuing from it (default 1, or the number of --problems counts)"}),
        Option("--rollout-pairs", {"action": "store_true", "help": "also pair the Monte-Carlo completions of the "
                                                                   "same prefix: correct over incorrect"}),
        Option("--world", {"default": "modalities.text.arithmetic", "help": "the module of the reasoning world "
                           "(problems, prompts, judge) (default: the arithmetic world)"}),
        Option("--seed-problems", {"type": int, "default": 0, "help": argparse.SUPPRESS}),
    ),
)

PROCEDURES: dict[str, Procedure] = {p.name: p for p in (DTO,)}


def get(name: str) -> Procedure | None:
    """The procedure called ``name``, or None (then it is a method of the loss registry)."""
    return PROCEDURES.get(name)
