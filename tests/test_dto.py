"""DTO (alignment/dto.py): cut points, Monte-Carlo prefix correctness, concise traces,
pairs that never prefer a wrong trace, the store/trainer/TRL path, noisy soft labels,
and the adapter-backed completer and one round on a tiny random Llama.

Most tests use an *oracle completer* over the arithmetic world: from any prefix it
writes the useful steps not yet written and the answer -- right unless the prefix
ends a line of wrong arithmetic that no "Wait, ..." corrects (optionally, it also
slips on chosen seeds while two or more steps remain, to give fractional estimates).
"""
from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignment.dto import (
    Concise,
    DTOPair,
    adapter_completer,
    build_pairs,
    dto_round,
    find_concise,
    noisy_annotator_votes,
    prefix_correctness,
    rollout_pairs,
    segment_boundaries,
    store_pairs,
)
from modalities.text import arithmetic as ar
from modalities.text.arithmetic import Problem, Term, Verdict, judge, kind_counts, parse_answer, segment

TERMS = (Term("+", 12), Term("+", 4, 7), Term("-", 35), Term("+", 9, 3))
PROBLEM = Problem(id="t", seed=0, kind="expression", prompt="What is 12 + 7 * 4 - 35 + 3 * 9?",
                  expression="12 + 7 * 4 - 35 + 3 * 9", terms=TERMS, steps=ar._steps(TERMS), answer=32)
PROMPT = ar.format_prompt(PROBLEM)
LINES = [
    ("filler", "Hmm, let me think about this carefully."),
    ("step", "12 + 7 * 4 = 12 + 28 = 40"),
    ("verify", "Let me double-check: 40 - 28 = 12. Yes."),
    ("detour", "40 - 35 = 6"),
    ("correction", "Wait, that is wrong."),
    ("step", "40 - 35 = 5"),
    ("recompute", "Again: 40 - 35 = 5"),
    ("step", "5 + 3 * 9 = 5 + 27 = 32"),
    ("verify", "Let me verify: 12 + 7 * 4 - 35 + 3 * 9 = 32. Correct."),
    ("answer", "Answer: 32"),
]
TRACE = "\n".join(line for _, line in LINES)
SHORTEST = ar.shortest_trace(PROBLEM)
REDUNDANT = {"verify", "filler", "recompute", "detour", "correction"}


def is_correct(text: str) -> bool:
    return judge(PROBLEM, text).correct


def oracle(problem: Problem = PROBLEM, slip_every: int | None = None):
    steps = ([problem.expression] if problem.kind == "word" else []) + [s.text for s in problem.steps]

    def complete(prompt, prefix, n, seeds):
        assert len(seeds) == n
        segs = segment(prefix)
        lines = {s.text.strip() for s in segs}
        wrong = any(s.ok is False and not (i + 1 < len(segs) and segs[i + 1].kind == "correction")
                    for i, s in enumerate(segs))
        if prefix.rstrip().endswith("Answer:"):  # a forced answer: right only if every step is done
            right = all(x in lines for x in steps) and not wrong
            return [f" {problem.answer if right else problem.answer + 1}"] * n
        if segs and segs[-1].kind == "answer":
            return [""] * n
        rest = [x for x in steps if x not in lines]
        sep = "" if not prefix or prefix.endswith("\n") else "\n"
        out = []
        for s in seeds:
            slip = slip_every is not None and len(rest) >= 2 and s % slip_every == 0
            ans = problem.answer + 1 if wrong or slip else problem.answer
            out.append(sep + "\n".join(rest + [f"Answer: {ans}"]))
        return out

    return complete


# -- segments and prefixes --------------------------------------------------------------


def test_segment_boundaries_are_the_line_ends():
    b = segment_boundaries(TRACE)
    ends, pos = [], 0
    for _, line in LINES:
        pos += len(line) + 1
        ends.append(pos)
    ends[-1] = len(TRACE)  # the last line has no newline
    assert b == ends
    assert [s.kind for s in segment(TRACE)] == [k for k, _ in LINES]
    # a custom segmenter: fixed-size chunks
    from types import SimpleNamespace as NS

    chunks = lambda t: [NS(text=t[i:i + 5], kind="x", start=i, end=min(i + 5, len(t))) for i in range(0, len(t), 5)]
    assert segment_boundaries("abcdefghijkl", chunks) == [5, 10, 12]


def test_prefix_correctness_on_a_hand_written_trace():
    b = segment_boundaries(TRACE)
    assert prefix_correctness(oracle(), is_correct, PROMPT, TRACE, b, samples=4, seed=0) == [
        1, 1, 1, 0, 1, 1, 1, 1, 1, 1]  # 0 right after the uncorrected detour
    # a weaker model slips on seeds 0 and 4 of 0..7 while two or more steps remain
    assert prefix_correctness(oracle(slip_every=4), is_correct, PROMPT, TRACE, b, samples=8, seed=0) == [
        0.75, 0.75, 0.75, 0, 0.75, 1, 1, 1, 1, 1]
    # forced answer (the paper's end-of-thinking cue): right only once every step is written
    assert prefix_correctness(oracle(), is_correct, PROMPT, TRACE, b, samples=2, cue="Answer:") == [
        0, 0, 0, 0, 0, 0, 0, 1, 1, 0]  # after the answer line, "Answer:" has no newline before it


# -- the concise trace -----------------------------------------------------------------


def _check_concise(c: Concise, original: str = TRACE):
    assert c is not None and c.correct and is_correct(c.text)
    assert c.tokens < c.original_tokens == len(original.split())
    assert not (set(kind_counts(c.text)) & REDUNDANT)
    assert c.text == SHORTEST


def test_find_concise_cuts_early_and_prunes_the_redundant_segments():
    b = segment_boundaries(TRACE)
    c = find_concise(oracle(), is_correct, PROMPT, TRACE, samples=4)
    _check_concise(c)
    assert c.cut == b[0] and c.p_full == 1.0 and c.required == 1.0  # at least the full reasoning's estimate
    assert "filler" in c.removed
    # the weaker model must keep reasoning until one step remains
    c = find_concise(oracle(slip_every=4), is_correct, PROMPT, TRACE, samples=8)
    _check_concise(c)
    assert c.cut == b[5] and c.p_cut == 1.0 and c.estimates[b[0]] == 0.75
    assert set(c.removed) == {"filler", "verify", "detour", "correction"}
    # without "at least the full trace's", 0.75 passes a 0.7 threshold at the first cut
    c = find_concise(oracle(slip_every=4), is_correct, PROMPT, TRACE, samples=8, threshold=0.7, at_least_full=False)
    assert c.cut == b[0] and c.text == SHORTEST
    # a forced answer closes the trace right after the last step
    c = find_concise(oracle(), is_correct, PROMPT, TRACE, samples=2, cue="Answer:")
    _check_concise(c)
    assert c.cut == b[7] and set(c.removed) == REDUNDANT


def test_find_concise_keeps_the_leading_newline_and_fixes_a_wrong_trace():
    c = find_concise(oracle(), is_correct, PROMPT, "\n" + TRACE, samples=2)
    assert c.text == "\n" + SHORTEST
    wrong = "Hmm, let me think.\n12 + 7 * 4 = 12 + 28 = 40\n40 - 35 = 6\n6 + 3 * 9 = 6 + 27 = 33\nAnswer: 33"
    assert not is_correct(wrong)
    c = find_concise(oracle(), is_correct, PROMPT, wrong, samples=2)
    assert c.text == SHORTEST and c.p_full == 0.0 and c.required == 0.8
    # nothing reaches the threshold and the original is wrong: None
    assert find_concise(oracle(slip_every=1), is_correct, PROMPT, wrong, samples=2) is None


def test_find_concise_mc_check_and_prune_any():
    with pytest.raises(ValueError, match="prune_any"):
        find_concise(oracle(), is_correct, PROMPT, TRACE, prune_any=True)
    c = find_concise(oracle(), is_correct, PROMPT, TRACE, samples=2, check="mc")
    _check_concise(c)
    # any segment may go, but a step the model has to redo is no saving: the steps stay
    c = find_concise(oracle(), is_correct, PROMPT, TRACE, samples=2, check="mc", prune_any=True)
    _check_concise(c)


# -- pairs ------------------------------------------------------------------------------


def _verdicts(traces):
    return [judge(PROBLEM, t) for t in traces]


WRONG = "12 + 7 * 4 = 12 + 28 = 40\n40 - 35 = 6\n6 + 3 * 9 = 6 + 27 = 33\nAnswer: 33"


def test_build_pairs_kinds():
    traces = [TRACE, WRONG, TRACE, SHORTEST]
    concise = [find_concise(oracle(), is_correct, PROMPT, t, samples=2) for t in traces]
    pairs = build_pairs(PROMPT, traces, _verdicts(traces), concise)
    assert all(isinstance(p, tuple) and len(p) == 4 for p in pairs)
    assert DTOPair(PROMPT, SHORTEST, TRACE, "concise") in pairs
    # the wrong trace's concise fix is no shorter (one number differs): a correctness pair
    assert DTOPair(PROMPT, SHORTEST, WRONG, "correctness") in pairs
    assert DTOPair(PROMPT, TRACE, WRONG, "correctness") in pairs
    assert all(p.chosen != WRONG for p in pairs)
    assert len(pairs) == len(set(pairs)) == 3  # the repeated trace and SHORTEST's own concise add nothing


texts = st.sampled_from(["a", "a b", "a b c", "x y", "x y z w", "q"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(texts, st.booleans(), st.one_of(st.none(), st.tuples(texts, st.booleans()))),
                min_size=1, max_size=6))
def test_build_pairs_never_prefers_an_incorrect_trace(rows):
    traces = [t for t, _, _ in rows]
    verdicts = [Verdict(ok, None, len(t.split())) for t, ok, _ in rows]
    concise = [None if c is None else Concise(c[0], len(c[0].split()), len(t.split()), None, None, None, 0.8, (),
                                              correct=c[1]) for t, _, c in rows]
    pairs = build_pairs("p", traces, verdicts, concise)
    wrong = {t for t, ok, _ in rows if not ok} | {c[0] for _, _, c in rows if c is not None and not c[1]}
    for p in pairs:
        assert p.chosen not in wrong and p.chosen != p.rejected
        if p.kind == "concise":
            assert len(p.chosen.split()) < len(p.rejected.split())
    assert len({(p.chosen, p.rejected) for p in pairs}) == len(pairs)
    ok_texts = {t for t in traces if t not in wrong}
    assert {(p.chosen, p.rejected) for p in pairs} >= {  # every correct sample over every incorrect one
        (g, b) for g in ok_texts for b in set(traces) & wrong}


def test_rollout_pairs_from_the_estimates_completions():
    rollouts = {}
    c = find_concise(oracle(slip_every=4), is_correct, PROMPT, TRACE, samples=8, seed=0, rollouts=rollouts)
    _check_concise(c)
    # every estimate the search made is recorded: 8 draws (text, verdict, seed) per prefix, the seeds 0..7
    assert rollouts and all(len(d) == 8 and [sd for _, _, sd in d] == list(range(8)) for d in rollouts.values())
    for prefix, draws in rollouts.items():
        assert all(t.startswith(prefix) and ok == is_correct(t) for t, ok, _ in draws)
    pairs = rollout_pairs(PROMPT, rollouts)
    mixed = [pre for pre, d in rollouts.items() if len({ok for _, ok, _ in d}) == 2]
    assert mixed and len(pairs) == len({(q.chosen, q.rejected) for q in pairs}) <= len(mixed)
    for q in pairs:
        assert q.kind == "rollout" and is_correct(q.chosen) and not is_correct(q.rejected)
        assert any(q.chosen.startswith(pre) and q.rejected.startswith(pre) for pre in mixed)  # a shared prefix
    # by hand: the shortest correct text over the most frequent incorrect one; a text judged both ways is unused
    hand = {"P": [("P a", True, 0), ("P b b", True, 1), ("P x", False, 2), ("P y", False, 3), ("P y", False, 4)],
            "Q": [("Q a", True, 0), ("Q z", False, 1)], "R": [("Q a", False, 0), ("R ok", True, 1)],
            "S": [("S ok", True, 0), ("S ok 2", True, 1)]}
    got = rollout_pairs("p", hand)
    assert got == [DTOPair("p", "P a", "P y", "rollout")]  # Q's and R's use "Q a", judged both ways; S has no error


# -- the store, the trainer's view, TRL, soft labels ----------------------------------


def _stored(store, **kw):
    traces = [TRACE, WRONG, SHORTEST + "\n"]
    concise = [find_concise(oracle(), is_correct, PROMPT, t, samples=2) for t in traces]
    pairs = build_pairs(PROMPT, traces, _verdicts(traces), concise)
    return pairs, store_pairs(store, "arith-lm", pairs, modality="text", **kw)


def test_store_pairs_votes_come_back_winner_first_and_export_to_trl(store, tmp_path):
    from storage.exchange import export_dataset

    pairs, stored = _stored(store)
    got = store.preference_pairs(modality="text")
    assert len(got) == len(pairs) == len(stored)
    texts = {g.id: store.media_bytes(g).decode() for g in store.list_generations(modality="text")}
    assert len(texts) == len({t for p in pairs for t in (p.chosen, p.rejected)})  # one generation per text
    as_pairs = {(texts[p.winner_id], texts[p.loser_id]) for p in got}
    assert as_pairs == {(p.chosen, p.rejected) for p in pairs}
    assert all(p.label == 1.0 and p.prompt == PROMPT for p in got)
    gens = {g.id: g for g in store.list_generations(modality="text")}
    first = gens[stored[0].chosen_id]
    assert first.params["dto"] in ("concise", "sample") and first.mime == "text/plain"
    assert any(g.params["dto"] == "concise" for g in gens.values())
    j = store.get_judgment(stored[0].judgment_id)
    assert (j.annotator, j.annotator_kind, j.choice) == ("dto", "ai", "a")
    rep = export_dataset(store, tmp_path / "dto.jsonl", fmt="trl-jsonl")
    rows = [json.loads(line) for line in (tmp_path / "dto.jsonl").read_text().splitlines()]
    assert rep.rows == len(rows) == len(pairs)
    assert {(r["prompt"][0]["content"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows} == \
        {tuple(p[:3]) for p in pairs}  # conversational rows: TRL applies the model's chat template


def test_noisy_annotators_give_soft_labels(store):
    pairs, stored = _stored(store, vote=False)
    out = noisy_annotator_votes(store, stored, annotators=5, flip_prob=0.45, seed=1)
    assert out["votes"] == 5 * len(stored)
    got = store.preference_pairs(modality="text")
    labels = [p.label for p in got]
    assert len(got) == len(stored) and all(0.5 < x <= 1.0 for x in labels)
    assert any(0.0 < x < 1.0 for x in labels)
    winners = {(p.winner_id, p.loser_id) for p in got}
    assert winners == {(s.chosen_id, s.rejected_id) for s in stored}  # the majority never turns around
    soft = store.soft_labels(modality="text", min_votes=2)
    assert soft and all(s.n_votes == 5 for s in soft)


# -- the tiny model -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from modalities.protocol import ModelRef
    from modalities.text.adapter import TextAdapter
    from tests.tiny_pipelines import save_tiny_lm

    torch.set_num_threads(1)
    path = save_tiny_lm(tmp_path_factory.mktemp("dto") / "lm")
    return TextAdapter.load(ModelRef(str(path)), device="cpu")


def test_adapter_completer_is_deterministic_per_seed_and_matches_generate(tiny):
    from modalities.protocol import GenerationRequest

    params = {"max_tokens": 6, "temperature": 1.0}
    complete = adapter_completer(tiny, params)
    a = complete("Q: 2 + 9?\nA:", " 11. double", 3, [1, 2, 3])
    assert len(a) == 3 and all(isinstance(x, str) for x in a)
    assert complete("Q: 2 + 9?\nA:", " 11. double", 3, [1, 2, 3]) == a
    assert complete("Q: 2 + 9?\nA:", " 11. double", 1, [2]) == [a[1]]
    assert len(set(complete("Q: 2 + 9?\nA:", "", 4, [5, 6, 7, 8]))) > 1
    gen = tiny.generate(GenerationRequest("Q: 2 + 9?\nA:", n=2, seeds=(4, 9), params=params))
    assert complete("Q: 2 + 9?\nA:", "", 2, [4, 9]) == [s.text for s in gen]
    # a prefix that fills the context leaves no room
    assert complete("Q: 2 + 9?\nA:", " 11" * 80, 2, [0, 1]) == ["", ""]


def _fake_judge(problem, text):
    return Verdict(sum(text.encode()) % 2 == 0, parse_answer(text), len(text.split()))


def test_dto_round_on_a_tiny_model(tiny, store):
    probs = ar.problems(2, difficulty="easy", seed=1)  # "What is 25 + 2 + 27 - 3?": short prompts
    params = {"max_tokens": 8, "temperature": 1.0}
    r = dto_round(tiny, probs, n_samples=3, mc_samples=2, params=params, seed=0)
    assert r.stats["problems"] == 2 and r.stats["traces"] == 6
    assert set(r.stats) >= {"correct", "mean_tokens", "mean_concise_tokens", "pairs_by_kind"}
    assert r.stats["pairs"] == sum(r.stats["pairs_by_kind"].values()) == len(r.pairs)
    for rec in r.records:  # whatever the random model writes, no incorrect trace is ever chosen
        wrong = {t for t, v in zip(rec["traces"], rec["verdicts"]) if not v.correct}
        assert all(p.chosen not in wrong for p in rec["pairs"])
    # a judge that accepts about half the (random) texts: pairs get built, stored and trained on
    r = dto_round(tiny, probs, n_samples=3, mc_samples=2, params=params, seed=0, judge_fn=_fake_judge, store=store)
    assert r.stats["traces"] == 6 and r.stats["pairs"] == len(r.pairs) == len(r.stored) > 0
    for p in r.pairs:
        assert _fake_judge(None, p.chosen).correct
        assert p.kind == "concise" or not _fake_judge(None, p.rejected).correct
    got = store.preference_pairs(modality="text", model=tiny.model_name)
    assert len(got) == len(r.pairs)
    samples = [g for g in store.list_generations(modality="text") if g.params["dto"] == "sample"]
    assert samples and all(g.seed is not None and g.params["max_tokens"] == 8 for g in samples)
    # with the Monte-Carlo completions' pairs: correct over incorrect, stored with their MC seed and settings
    r2 = dto_round(tiny, probs, n_samples=3, mc_samples=2, params=params, seed=0, judge_fn=_fake_judge, store=store,
                   with_rollouts=True, context="with-rollouts")
    kinds = r2.stats["pairs_by_kind"]
    assert kinds["rollout"] > 0 and r2.stats["pairs"] == len(r2.pairs) == len(r2.stored)
    assert {k: v for k, v in kinds.items() if k != "rollout"} == {k: v for k, v in r.stats["pairs_by_kind"].items()
                                                                 if k != "rollout"}  # the same samples otherwise
    for sp in r2.stored:
        if sp.pair.kind == "rollout":
            assert _fake_judge(None, sp.pair.chosen).correct and not _fake_judge(None, sp.pair.rejected).correct
            g = store.get_generation(sp.chosen_id)
            assert g.params["dto"] in ("rollout", "sample", "concise")  # a concise trace may equal a completion
            if g.params["dto"] == "rollout":
                assert "mc_seed" in g.params and g.params["max_tokens"] == 8 and g.params["temperature"] == 1.0


@pytest.mark.parametrize("method", ["simpo", "irepo"])
def test_dto_pairs_train(tiny, store, tmp_path, method):
    from alignment.config import TrainConfig
    from alignment.train import train

    probs = ar.problems(2, difficulty="easy", seed=1)  # "What is 25 + 2 + 27 - 3?": short prompts
    r = dto_round(tiny, probs, n_samples=3, mc_samples=1, params={"max_tokens": 8, "temperature": 1.0},
                  judge_fn=_fake_judge, store=store)
    assert r.pairs
    if method == "irepo":  # soft labels from noisy annotators on top of the DTO votes
        noisy_annotator_votes(store, r.stored, annotators=3, flip_prob=0.5, seed=0)
    cfg = {"modality": "text", "method": method, "model": tiny.model_name, "data_dir": str(store.data_dir),
           "steps": 1, "batch_size": 2, "lora_rank": 2, "validation_count": 0, "device": "cpu"}
    TrainConfig.from_dict(cfg).save(tmp_path / "run")
    assert train(tmp_path / "run") == 0
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
