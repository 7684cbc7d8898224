"""Thinking-dynamics optimisation (DTO): concise reasoning traces and preference pairs.

After "Don't Think Longer, Think Wisely: Optimizing Thinking Dynamics for Large
Reasoning Models" (An, Wang, Zhou, Hsieh, 2025). A model's own reasoning trace
is split into thinking patterns (segments); a Monte-Carlo estimate of how often
the model reaches a correct answer from each prefix finds the earliest point
where the reasoning is already good enough; the trace is closed there with a
correct final answer, then detrimental segments are pruned while it stays
correct. Pairs (concise correct trace, original) and (correct, incorrect) --
optionally also (correct, incorrect) Monte-Carlo completions of the same
prefix, which the estimate draws anyway (:func:`rollout_pairs`) -- then
train the model with a preference loss -- SimPO in the paper, or iREPO on soft
labels from several noisy annotators -- through Palate's ordinary trainer:
:func:`store_pairs` writes the texts as ``text`` generations and the
preferences as pairwise votes, so ``python -m app train --modality text
--method simpo`` and the TRL export (``storage.exchange.export_dataset``) see
them like any other judgment.

Nothing here is tied to one model or world except through small callables:

- ``complete(prompt, prefix, n, seeds) -> list[str]``: ``n`` continuations of
  an answer that starts with ``prefix`` (the continuation only, one per seed;
  :func:`adapter_completer` builds one from a text adapter);
- ``is_correct(text) -> bool``: whether a whole answer is right;
- ``segmenter(text) -> segments`` with ``.text``, ``.kind``, ``.start`` and
  ``.end`` (character offsets into ``text``, contiguous); default: the
  arithmetic world's :func:`modalities.text.arithmetic.segment`, whose kinds
  name the redundant patterns (verify, recompute, detour, correction, filler)
  and the final ``answer``;
- ``length(text) -> int``: the cost of a trace (default: whitespace words;
  :func:`dto_round` counts the model's tokens).

Conventions: a preferred trace is always one judged correct (the pair builder
asserts it); the estimator uses the same seeds at every cut point (common
random numbers, so cut points are compared on the same draws); a "round" is
one call of :func:`dto_round` on freshly self-generated answers -- the caller
loops, loading round k's model with round k-1's LoRA.
"""
from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

__all__ = [
    "Concise",
    "DTOPair",
    "DTORound",
    "StoredPair",
    "adapter_completer",
    "build_pairs",
    "dto_round",
    "find_concise",
    "mc_seeds",
    "noisy_annotator_votes",
    "prefix_correctness",
    "rollout_pairs",
    "segment_boundaries",
    "store_pairs",
]

Completer = Callable[[str, str, int, Sequence[int]], list[str]]
Judge = Callable[[str], bool]
Rollouts = dict[str, list[tuple[str, bool, int]]]  # prefix -> [(whole text, judged correct, seed), ...]
Segmenter = Callable[[str], Sequence[Any]]

MAX_SEED = 2**32 - 1
PAIR_KINDS = ("concise", "correctness", "rollout")
CHECKS = ("direct", "mc")
_EPS = 1e-9


def _default_segmenter() -> Segmenter:
    from modalities.text.arithmetic import segment

    return segment


def _default_redundant() -> frozenset[str]:
    from modalities.text.arithmetic import REDUNDANT_KINDS

    return frozenset(REDUNDANT_KINDS)


def _words(text: str) -> int:
    return len(text.split())


# ---------------------------------------------------------------------------
# segments and prefixes
# ---------------------------------------------------------------------------


def segment_boundaries(trace: str, segmenter: Segmenter | None = None) -> list[int]:
    """Character offsets just after each segment of ``trace`` (the cut points),
    in order; the last one is ``len(trace)`` for a segmenter that covers the text."""
    segs = (segmenter or _default_segmenter())(trace)
    out = [int(s.end) for s in segs]
    if any(b < a for a, b in zip(out, out[1:])) or any(not 0 < b <= len(trace) for b in out):
        raise ValueError(f"the segmenter gave boundaries out of order or outside the text: {out}")
    return out


def mc_seeds(seed: int, samples: int) -> list[int]:
    """The seeds of the ``samples`` Monte-Carlo completions: ``seed, seed+1, ...``
    (mod 2**32). The same list is used at every cut point of a trace."""
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    return [(int(seed) + k) % (MAX_SEED + 1) for k in range(int(samples))]


def _estimate(complete: Completer, is_correct: Judge, prompt: str, prefix: str, seeds: Sequence[int],
              cue: str = "", rollouts: Rollouts | None = None) -> tuple[float, list[str]]:
    """(share of completions of ``prefix + cue`` judged correct, the correct continuations).
    With ``rollouts``, every whole text drawn, its verdict and seed are recorded under ``prefix``."""
    start = prefix + cue
    conts = list(complete(prompt, start, len(seeds), list(seeds)))
    if len(conts) != len(seeds):
        raise ValueError(f"the completer returned {len(conts)} continuations for {len(seeds)} seeds")
    verdicts = [bool(is_correct(start + c)) for c in conts]
    if rollouts is not None:
        rollouts.setdefault(prefix, []).extend((start + c, v, int(sd)) for c, v, sd in zip(conts, verdicts, seeds))
    good = [c for c, v in zip(conts, verdicts) if v]
    return len(good) / len(conts), good


def prefix_correctness(complete: Completer, is_correct: Judge, prompt: str, trace: str,
                       boundaries: Sequence[int] | None = None, *, samples: int = 8, seed: int = 0,
                       cue: str = "") -> list[float]:
    """For each cut point ``b`` in ``boundaries`` (default: after every segment), the
    share of ``samples`` completions of ``trace[:b] + cue`` that are judged correct
    (``is_correct(trace[:b] + cue + continuation)``). ``cue`` (e.g. ``"Answer:"``)
    forces an early answer, as the paper's end-of-thinking cue; empty: the model
    continues freely. Seeds: :func:`mc_seeds` (the same at every cut point)."""
    if boundaries is None:
        boundaries = segment_boundaries(trace)
    seeds = mc_seeds(seed, samples)
    return [_estimate(complete, is_correct, prompt, trace[:int(b)], seeds, cue)[0] for b in boundaries]


# ---------------------------------------------------------------------------
# the concise trace
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Concise:
    """A shortened trace that is still judged correct."""

    text: str
    tokens: int  # length(text)
    original_tokens: int  # length(original trace)
    cut: int | None  # character offset in the original where it was cut (None: kept whole, then pruned)
    p_cut: float | None  # estimated correctness at the cut
    p_full: float | None  # estimated correctness of the whole reasoning (before the final answer)
    required: float  # what a cut point had to reach
    removed: tuple[str, ...]  # kinds of the segments pruned, in order
    estimates: dict[int, float] = field(default_factory=dict)  # cut offset -> estimate, for those computed
    correct: bool = True


def _last_answer(segs: Sequence[Any], answer_kinds: Iterable[str]) -> int | None:
    kinds = set(answer_kinds)
    for i in range(len(segs) - 1, -1, -1):
        if segs[i].kind in kinds:
            return i
    return None


def _lead(text: str) -> str:
    return text[:len(text) - len(text.lstrip())]


def find_concise(
    complete: Completer,
    is_correct: Judge,
    prompt: str,
    trace: str,
    *,
    samples: int = 8,
    seed: int = 0,
    threshold: float = 0.8,
    at_least_full: bool = True,
    cue: str = "",
    segmenter: Segmenter | None = None,
    redundant_kinds: Iterable[str] | None = None,
    answer_kinds: Iterable[str] = ("answer",),
    prune_any: bool = False,
    check: str = "direct",
    length: Callable[[str], int] | None = None,
    rollouts: Rollouts | None = None,
) -> Concise | None:
    """A concise version of ``trace`` that is still correct, or None.

    1. **Cut.** Cut points are the segment boundaries up to the start of the
       final answer segment. Each is scored by :func:`prefix_correctness`'s
       estimate (``samples`` completions, seeds :func:`mc_seeds`); ``p_full``
       is the estimate with all the reasoning kept (the cut just before the
       final answer, or the whole text when there is none). The earliest cut
       whose estimate reaches ``required = max(threshold, p_full)`` (just
       ``threshold`` with ``at_least_full=False``) and has at least one correct
       completion is taken -- so the cut is never judged less likely to be
       right than the full reasoning.
    2. **Close.** The trace is closed there with the shortest correct
       completion among those samples (``prefix + cue + completion``). When
       the original is correct, it is also a candidate as it is (cut after its
       final answer); with no passing cut, it is the only one; an incorrect
       original with no passing cut gives None.
    3. **Prune.** Each segment of a redundant kind or an answer line before
       the final one (any segment but the final answer with ``prune_any``) is
       removed in turn, the text re-segmented after
       each removal, and the removal kept when the trace stays correct:
       ``check="direct"`` judges the pruned text with ``is_correct`` (it still
       ends in its answer); ``check="mc"`` re-estimates the pruned reasoning
       (without its answer) and, if it reaches ``required``, re-closes it with
       the shortest correct completion, keeping it only if that is shorter.
       ``prune_any`` needs ``check="mc"`` (judged directly, every line but the
       answer could go).

    The shortest pruned candidate is returned (ties: the cut one). With
    ``rollouts`` (a dict), every Monte-Carlo completion drawn is recorded there
    with its verdict, by prefix (for :func:`rollout_pairs`).
    """
    if check not in CHECKS:
        raise ValueError(f"check must be one of {CHECKS}, got {check!r}")
    if prune_any and check != "mc":
        raise ValueError("prune_any needs check='mc': judged directly, every segment but the answer could be removed")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    seg_fn = segmenter or _default_segmenter()
    redundant = frozenset(redundant_kinds) if redundant_kinds is not None else _default_redundant()
    answer_kinds = frozenset(answer_kinds)
    L = length or _words
    seeds = mc_seeds(seed, samples)
    cache: dict[str, tuple[float, list[str]]] = {}

    def est(prefix: str) -> tuple[float, list[str]]:
        if prefix not in cache:
            cache[prefix] = _estimate(complete, is_correct, prompt, prefix, seeds, cue, rollouts)
        return cache[prefix]

    def close(prefix: str, good: Sequence[str]) -> str:
        return min((prefix + cue + c for c in good), key=lambda t: (L(t), len(t), t))

    segs = list(seg_fn(trace))
    ans = _last_answer(segs, answer_kinds)
    reasoning_end = segs[ans].start if ans is not None else len(trace)
    cuts = [int(s.end) for s in segs if 0 < int(s.end) <= reasoning_end]
    estimates: dict[int, float] = {}
    p_full: float | None = None
    if reasoning_end > 0:
        p_full = est(trace[:reasoning_end])[0]
        estimates[reasoning_end] = p_full
    required = float(threshold)
    if at_least_full and p_full is not None:
        required = max(required, p_full)

    # 1. the earliest cut good enough
    cut = p_cut = None
    for c in cuts:
        p, good = est(trace[:c])
        estimates[c] = p
        if p >= required - _EPS and good:
            cut, p_cut = c, p
            break

    # 2. close it; the original (up to its final answer) competes when it is correct
    candidates: list[tuple[str, int | None, float | None]] = []
    if cut is not None:
        candidates.append((close(trace[:cut], est(trace[:cut])[1]), cut, p_cut))
    if ans is not None and is_correct(trace[:segs[ans].end]):
        candidates.append((trace[:segs[ans].end], None, None))
    elif is_correct(trace):
        candidates.append((trace, None, None))
    if not candidates:
        return None

    # 3. prune
    def check_removal(candidate: str, current: str) -> str | None:
        if check == "direct":
            return candidate if is_correct(candidate) else None
        c_segs = list(seg_fn(candidate))
        a = _last_answer(c_segs, answer_kinds)
        reasoning = candidate[:c_segs[a].start] if a is not None else candidate
        p, good = est(reasoning)
        if not good or p < required - _EPS:
            return None
        new = close(reasoning, good)
        return new if L(new) < L(current) and is_correct(new) else None

    def prune(text: str) -> tuple[str, list[str]]:
        current, removed, i = text, [], 0
        while True:
            c_segs = list(seg_fn(current))
            if i >= len(c_segs):
                return current, removed
            s = c_segs[i]
            final = _last_answer(c_segs, answer_kinds)
            # never the final answer; an earlier answer line is redundant
            removable = i != final and (prune_any or s.kind in redundant or s.kind in answer_kinds)
            if removable:
                candidate = current[:s.start] + current[s.end:]
                if i == 0:
                    candidate = _lead(current) + candidate  # the answer keeps its leading whitespace
                new = check_removal(candidate, current)
                if new is not None and len(new) < len(current):
                    current = new
                    removed.append(s.kind)
                    continue  # the same position, re-segmented
            i += 1

    best: tuple[int, int, str, list[str], int | None, float | None] | None = None
    for order, (text, c, p) in enumerate(candidates):
        pruned, removed = prune(text)
        if not is_correct(pruned):  # cannot happen with a consistent judge; never return a wrong trace
            continue
        key = (L(pruned), order)
        if best is None or key < (best[0], best[1]):
            best = (L(pruned), order, pruned, removed, c, p)
    if best is None:
        return None
    tokens, _, text, removed, c, p = best
    return Concise(text=text, tokens=tokens, original_tokens=L(trace), cut=c, p_cut=p, p_full=p_full,
                   required=required, removed=tuple(removed), estimates=dict(sorted(estimates.items())))


# ---------------------------------------------------------------------------
# the model as a completer
# ---------------------------------------------------------------------------


def adapter_completer(adapter: Any, params: Mapping[str, Any] | None = None) -> Completer:
    """A completer over a causal-LM text adapter (:class:`modalities.text.adapter.TextAdapter`
    or anything with its ``prompt_ids``, ``tokenizer``, ``_params``, ``_sample``,
    ``context_length`` and ``model``).

    ``complete(prompt, prefix, n, seeds)`` formats ``prompt`` as the adapter's
    ``generate`` does (``prompt_ids``: the chat template when the tokenizer has
    one), appends the tokens of ``prefix`` as a forced start of the answer
    (tokenized alone, as ``encode`` tokenizes an answer after its prompt) and
    samples one continuation per seed with the adapter's own sampler
    (temperature, top-p, a CPU generator per seed; the seeds run as one batch
    when the adapter has ``_sample_batch`` -- so a seed gives the same text
    whatever ``n``, and with an empty prefix the same text as ``generate``, up
    to float rounding between batch sizes).
    ``params`` are the adapter's generation settings; ``max_tokens`` shrinks to
    the room the context leaves after the prefix (no room: empty strings).
    Returns the continuations only, decoded without special tokens.
    """
    import torch

    from modalities.protocol import GenerationRequest

    base = dict(params or {})

    def complete(prompt: str, prefix: str, n: int, seeds: Sequence[int] | None = None) -> list[str]:
        seeds = list(seeds) if seeds is not None else mc_seeds(0, n)
        if len(seeds) != n:
            raise ValueError(f"give one seed per completion: n={n} but {len(seeds)} seeds")
        tok = adapter.tokenizer
        ids = list(adapter.prompt_ids(prompt))
        if prefix:
            ids += list(tok(prefix, add_special_tokens=False, verbose=False)["input_ids"])
        room = int(adapter.context_length) - len(ids)
        if room < 1:
            return [""] * n
        given = dict(base)
        for key in ("max_tokens", "max_new_tokens"):
            if key in given:
                given[key] = min(int(given[key]), room)
        request = GenerationRequest(prompt=prompt if prompt.strip() else "(empty)", n=n, seeds=tuple(seeds),
                                    params=given)
        settings = adapter._params(request, len(ids))
        model = adapter.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                batch = getattr(adapter, "_sample_batch", None)
                if batch is not None:
                    out = [t for t, _ in batch(ids, settings, seeds)]
                else:
                    out = [adapter._sample(ids, settings, s)[0] for s in seeds]
        finally:
            model.train(was_training)
        return [tok.decode(t, skip_special_tokens=True, clean_up_tokenization_spaces=False) for t in out]

    return complete


# ---------------------------------------------------------------------------
# pairs
# ---------------------------------------------------------------------------


class DTOPair(NamedTuple):
    """One preference, winner first: ``(prompt, chosen, rejected, kind)``."""

    prompt: str
    chosen: str
    rejected: str
    kind: str  # "concise" (a concise correct trace over its longer original), "correctness", or "rollout"
    # (two Monte-Carlo completions of the same prefix, correct over incorrect: rollout_pairs)


def _tokens_of(obj: Any, text: str, length: Callable[[str], int] | None) -> int:
    if length is not None:
        return int(length(text))
    tokens = getattr(obj, "tokens", None)
    return int(tokens) if isinstance(tokens, int) else _words(text)


def build_pairs(problem_prompt: str, traces: Sequence[str], verdicts: Sequence[Any],
                concise: Sequence[Concise | None] | None = None, *,
                length: Callable[[str], int] | None = None) -> list[DTOPair]:
    """Preference pairs for one prompt from sampled ``traces``, their ``verdicts``
    (anything with ``.correct``; ``.tokens`` gives the length unless ``length``
    is given) and their concise versions (:class:`Concise` or None, aligned with
    ``traces``):

    - ``"concise"``: a concise correct trace over its own original, when
      strictly shorter;
    - ``"correctness"``: every correct sampled trace over every incorrect one;
      also a concise trace over its incorrect original when it is not shorter.

    A text counts as correct only if every verdict on it says so (a text
    judged both ways is never preferred). Identical texts, equal lengths of
    a concise pair, and repeats are skipped. Never prefers an incorrect trace.
    """
    if len(verdicts) != len(traces):
        raise ValueError(f"{len(traces)} traces but {len(verdicts)} verdicts")
    concise = list(concise) if concise is not None else [None] * len(traces)
    if len(concise) != len(traces):
        raise ValueError(f"{len(traces)} traces but {len(concise)} concise entries")
    ok: dict[str, bool] = {}
    for t, v in zip(traces, verdicts):
        ok[t] = ok.get(t, True) and bool(v.correct)
    for c in concise:
        if c is not None:
            ok[c.text] = ok.get(c.text, True) and bool(c.correct)
    out: list[DTOPair] = []
    seen: set[tuple[str, str]] = set()

    def add(chosen: str, rejected: str, kind: str) -> None:
        if chosen == rejected or (chosen, rejected) in seen or (rejected, chosen) in seen:
            return
        assert ok.get(chosen, False), "DTO never prefers a trace that is not judged correct"
        seen.add((chosen, rejected))
        out.append(DTOPair(problem_prompt, chosen, rejected, kind))

    for t, v, c in zip(traces, verdicts, concise):
        if c is None or not ok.get(c.text, False) or c.text == t:
            continue
        if _tokens_of(c, c.text, length) < _tokens_of(v, t, length):
            add(c.text, t, "concise")
        elif not ok[t]:
            add(c.text, t, "correctness")
    good = [t for t in dict.fromkeys(traces) if ok[t]]
    bad = [t for t in dict.fromkeys(traces) if not ok[t]]
    for g in good:
        for b in bad:
            add(g, b, "correctness")
    return out


def rollout_pairs(problem_prompt: str, rollouts: Mapping[str, Sequence[tuple[str, bool, int]]], *,
                  length: Callable[[str], int] | None = None) -> list[DTOPair]:
    """Correct-over-incorrect pairs from the Monte-Carlo completions the estimate
    drew anyway (``rollouts`` as :func:`find_concise` records them): for each
    prefix whose completions were judged both ways, its shortest correct text
    over its most frequent incorrect one (ties: the first drawn). The two share
    the prefix, so the pair points at where the reasoning went wrong -- on the
    model's own errors, at the sampling settings of the estimate.

    A text judged both ways anywhere in ``rollouts`` is never used; repeats
    are skipped; never prefers an incorrect text.
    """
    L = length or _words
    verdict: dict[str, bool] = {}
    for draws in rollouts.values():
        for text, ok, _ in draws:
            verdict[text] = verdict.get(text, True) and bool(ok)
    mixed = {t for draws in rollouts.values() for t, ok, _ in draws if bool(ok) != verdict[t]}
    out: list[DTOPair] = []
    seen: set[tuple[str, str]] = set()
    for draws in rollouts.values():
        good = [t for t, ok, _ in draws if ok and t not in mixed]
        bad = [t for t, ok, _ in draws if not ok and t not in mixed]
        if not good or not bad:
            continue
        chosen = min(good, key=lambda t: (L(t), len(t), t))
        counts = Counter(bad)
        rejected = max(dict.fromkeys(bad), key=lambda t: counts[t])  # the most frequent; ties: first drawn
        key = (chosen, rejected)
        if chosen == rejected or key in seen or key[::-1] in seen:
            continue
        assert verdict[chosen], "DTO never prefers a trace that is not judged correct"
        seen.add(key)
        out.append(DTOPair(problem_prompt, chosen, rejected, "rollout"))
    return out


# ---------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredPair:
    pair: DTOPair
    chosen_id: int
    rejected_id: int
    judgment_id: int | None  # the vote store_pairs cast (None with vote=False)


def _model_of(model: Any) -> tuple[str, str | None, str | None]:
    if isinstance(model, str):
        return model, None, None
    return str(model.model_name), getattr(model, "revision", None), getattr(model, "adapter_name", None)


def store_pairs(store: Any, model: Any, pairs: Sequence[DTOPair], annotator: str = "dto",
                annotator_kind: str = "ai", *, sources: Mapping[str, Mapping[str, Any]] | None = None,
                params: Mapping[str, Any] | None = None, model_revision: str | None = None,
                context: str = "dto", vote: bool = True, modality: str | None = None) -> list[StoredPair]:
    """Store each pair's texts as generations of ``model`` (its recorded name, or an adapter: its
    ``model_name``, ``revision`` and ``adapter_name``; ``modality``: the adapter's own, or given with a
    name) and each preference as a pairwise vote for the chosen text (position A) by ``annotator`` --
    so ``Store.preference_pairs(modality=...)`` yields them winner first, and the trainer and the TRL
    export see them.

    A text gets one generation per prompt (within this call), with params
    ``{"dto": "concise" | "sample", **params, **sources[text]["params"]}`` (``dto_round``'s sources
    set "rollout" for a Monte-Carlo completion, with its seed and sampling settings)
    ("concise": chosen in a concise pair) and seed ``sources[text]["seed"]``
    (e.g. a sample's ``Provenance.storage_kwargs()``). ``context`` tags the
    votes (the trainer reads every context). ``vote=False``: generations only
    (then :func:`noisy_annotator_votes` casts all the votes).
    """
    name, revision, lora = _model_of(model)
    revision = model_revision if model_revision is not None else revision
    modality = modality or getattr(type(model), "name", None)
    if not isinstance(modality, str):
        raise ValueError("store_pairs needs the modality of the answers: pass modality=, or the model's adapter")
    constructed = {(p.prompt, p.chosen) for p in pairs if p.kind == "concise"}
    ids: dict[tuple[str, str], int] = {}
    out: list[StoredPair] = []

    def gen(prompt: str, text: str) -> int:
        key = (prompt, text)
        if key not in ids:
            src = dict((sources or {}).get(text, {}))
            extra = dict(src.get("params") or {})
            role = "concise" if key in constructed else "sample"
            p = {"dto": role, **dict(params or {}), **extra}
            if lora is not None:
                p.setdefault("adapter", lora)
            g = store.add_generation(prompt=prompt, modality=modality, model=name, media=text.encode("utf-8"),
                                     mime="text/plain", model_revision=src.get("model_revision", revision),
                                     seed=src.get("seed"), params=p)
            ids[key] = g.id
        return ids[key]

    with store.write():
        for p in pairs:
            if p.chosen == p.rejected:
                raise ValueError("a pair compares a text with itself")
            a, b = gen(p.prompt, p.chosen), gen(p.prompt, p.rejected)
            jid = store.vote(a, b, "a", annotator=annotator, annotator_kind=annotator_kind,
                             context=context) if vote else None
            out.append(StoredPair(p, a, b, jid))
    return out


def _closeness_flip(flip_prob: float, length: Callable[[str], int]) -> Callable[[StoredPair], float]:
    def p_flip(sp: StoredPair) -> float:
        a, b = length(sp.pair.chosen), length(sp.pair.rejected)
        hi = max(a, b)
        return flip_prob * (min(a, b) / hi if hi > 0 else 1.0)

    return p_flip


def noisy_annotator_votes(store: Any, pairs: Sequence[StoredPair], annotators: int = 5,
                          flip_prob: float | Callable[[StoredPair], float] = 0.3, seed: int = 0, *,
                          name: str = "dto-noisy", annotator_kind: str = "ai",
                          length: Callable[[str], int] | None = None, keep_majority: bool = True,
                          context: str = "dto") -> dict[str, Any]:
    """Simulated AI annotators for iREPO's empirical soft labels: each of
    ``annotators`` judges (``{name}-0``, ``{name}-1``, ...) votes on every stored
    pair, for the chosen text unless it flips. The flip probability is
    ``flip_prob(pair)`` when callable, else ``flip_prob * shorter / longer``
    (lengths by ``length``, default whitespace words): two traces of nearly
    the same length are easy to confuse, very different ones are not.

    ``keep_majority`` (default): at most ``(annotators - 1) // 2`` flips per
    pair, so the chosen text keeps the majority and ``preference_pairs``
    never turns a pair around to prefer an incorrect trace; the label (share
    of votes for the winner, ``store_pairs``' own vote included) lies in
    (0.5, 1], and below 1 wherever some annotator flipped. Returns counts.
    """
    if annotators < 1:
        raise ValueError(f"annotators must be at least 1, got {annotators}")
    if not callable(flip_prob) and not 0.0 <= float(flip_prob) <= 1.0:
        raise ValueError(f"flip_prob must be a probability, got {flip_prob}")
    p_of = flip_prob if callable(flip_prob) else _closeness_flip(float(flip_prob), length or _words)
    rng = random.Random(f"dto-noisy/{seed}")
    cap = (annotators - 1) // 2 if keep_majority else annotators
    votes = flipped = 0
    soft = 0
    with store.write():
        for sp in pairs:
            p = float(p_of(sp))
            if not 0.0 <= p <= 1.0 or math.isnan(p):
                raise ValueError(f"flip probability {p} is not a probability")
            flips = [rng.random() < p for _ in range(annotators)]
            while sum(flips) > cap:
                flips[max(i for i, f in enumerate(flips) if f)] = False
            for k, f in enumerate(flips):
                store.vote(sp.chosen_id, sp.rejected_id, "b" if f else "a", annotator=f"{name}-{k}",
                           annotator_kind=annotator_kind, context=context)
            votes += annotators
            flipped += sum(flips)
            soft += any(flips)
    return {"pairs": len(pairs), "votes": votes, "flipped": flipped, "soft_pairs": soft}


# ---------------------------------------------------------------------------
# one round
# ---------------------------------------------------------------------------


@dataclass
class DTORound:
    pairs: list[DTOPair]
    stats: dict[str, Any]
    records: list[dict[str, Any]]  # per problem: prompt, traces, verdicts, concise, pairs, rollouts
    stored: list[StoredPair] = field(default_factory=list)


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def dto_round(
    adapter: Any,
    problems: Sequence[Any],
    *,
    n_samples: int = 4,
    mc_samples: int = 4,
    params: Mapping[str, Any] | None = None,
    mc_params: Mapping[str, Any] | None = None,
    judge_fn: Callable[[Any, str], Any] | None = None,
    prompt_fn: Callable[[Any], str] | None = None,
    store: Any = None,
    seed: int = 0,
    threshold: float = 0.8,
    cue: str = "",
    check: str = "direct",
    prune_any: bool = False,
    segmenter: Segmenter | None = None,
    annotator: str = "dto",
    context: str = "dto",
    with_rollouts: bool = False,
) -> DTORound:
    """One DTO round on freshly self-generated answers.

    For each problem: sample ``n_samples`` answers with ``adapter.generate``
    (prompt ``prompt_fn(problem)``, default the arithmetic world's
    ``format_prompt``; seeds drawn from ``seed``), judge them with
    ``judge_fn(problem, text)`` (anything with ``.correct`` and ``.tokens``;
    default the arithmetic world's ``judge`` in the model's tokens), build a
    concise version of each (:func:`find_concise` with :func:`adapter_completer`,
    ``mc_samples`` completions per cut point, ``mc_params`` default ``params``)
    and the pairs (:func:`build_pairs`, lengths in model tokens; with
    ``with_rollouts`` also :func:`rollout_pairs` from the Monte-Carlo
    completions of each problem's traces). With a
    ``store``, the pairs are stored (:func:`store_pairs`; the samples keep
    their real seed and settings). Returns the pairs and statistics.
    """
    from modalities.protocol import GenerationRequest

    if n_samples < 1 or mc_samples < 1:
        raise ValueError("n_samples and mc_samples must be at least 1")
    if prompt_fn is None or judge_fn is None:
        from modalities.text import arithmetic

        prompt_fn = prompt_fn or arithmetic.format_prompt
        judge_fn = judge_fn or (lambda problem, text: arithmetic.judge(problem, text, adapter.tokenizer))
    tok = adapter.tokenizer

    def length(text: str) -> int:
        return len(tok(text, add_special_tokens=False, verbose=False)["input_ids"])

    mc_settings = dict(mc_params if mc_params is not None else (params or {}))
    complete = adapter_completer(adapter, mc_settings)
    rng = random.Random(f"dto-round/{seed}")
    pairs: list[DTOPair] = []
    records: list[dict[str, Any]] = []
    stored: list[StoredPair] = []
    n_traces = n_correct = 0
    tokens: list[int] = []
    concise_tokens: list[int] = []
    for problem in problems:
        prompt = prompt_fn(problem)
        seeds = tuple(rng.randint(0, MAX_SEED) for _ in range(n_samples))
        samples = adapter.generate(GenerationRequest(prompt=prompt, n=n_samples, seeds=seeds,
                                                     params=dict(params or {})))
        traces = [s.data.decode("utf-8") for s in samples]
        verdicts = [judge_fn(problem, t) for t in traces]

        def is_correct(text: str, _problem: Any = problem) -> bool:
            return bool(judge_fn(_problem, text).correct)

        concise: list[Concise | None] = []
        sources: dict[str, dict[str, Any]] = {}
        rollouts: Rollouts | None = {} if with_rollouts else None
        for s, t in zip(samples, traces):
            c = find_concise(complete, is_correct, prompt, t, samples=mc_samples, seed=rng.randint(0, MAX_SEED),
                             threshold=threshold, cue=cue, check=check, prune_any=prune_any,
                             segmenter=segmenter, length=length, rollouts=rollouts)
            concise.append(c)
            kw = s.provenance.storage_kwargs()
            sources.setdefault(t, {"seed": kw["seed"], "model_revision": kw["model_revision"],
                                   "params": {**kw["params"], "dto": "sample"}})
            if c is not None and c.text != t:
                sources.setdefault(c.text, {"params": {"dto": "concise", "source_seed": s.provenance.seed,
                                                       "cut": c.cut, "removed": list(c.removed)}})
        problem_pairs = build_pairs(prompt, traces, verdicts, concise, length=length)
        if rollouts:
            have = {(q.chosen, q.rejected) for q in problem_pairs}
            judged_wrong = {t for t, v in zip(traces, verdicts) if not v.correct}
            for q in rollout_pairs(prompt, rollouts, length=length):
                if (q.chosen, q.rejected) in have or (q.rejected, q.chosen) in have or q.chosen in judged_wrong:
                    continue
                problem_pairs.append(q)
            for prefix, draws in rollouts.items():
                for text, _, mc_seed in draws:
                    sources.setdefault(text, {"params": {**mc_settings, "dto": "rollout", "mc_seed": mc_seed,
                                                         "prefix_chars": len(prefix)}})
        pairs.extend(problem_pairs)
        if store is not None and problem_pairs:
            stored.extend(store_pairs(store, adapter, problem_pairs, annotator, sources=sources, context=context))
        n_traces += len(traces)
        n_correct += sum(bool(v.correct) for v in verdicts)
        tokens.extend(length(t) for t in traces)
        concise_tokens.extend(c.tokens for c in concise if c is not None)
        records.append({"prompt": prompt, "traces": traces, "verdicts": verdicts, "concise": concise,
                        "pairs": problem_pairs, "rollouts": rollouts})
    by_kind = Counter(p.kind for p in pairs)
    stats = {
        "problems": len(problems),
        "traces": n_traces,
        "correct": n_correct,
        "accuracy": n_correct / n_traces if n_traces else None,
        "mean_tokens": _mean(tokens),
        "concise_found": len(concise_tokens),
        "mean_concise_tokens": _mean(concise_tokens),
        "pairs": len(pairs),
        "pairs_by_kind": {k: by_kind.get(k, 0) for k in PAIR_KINDS},
    }
    return DTORound(pairs, stats, records, stored)
