"""The arithmetic world: problems, overthinking traces, judge, segmenter, tokenizer."""
from __future__ import annotations

import random
import re
import statistics

import pytest

from modalities.text.arithmetic import (
    DIFFICULTIES,
    KINDS,
    STYLES,
    Difficulty,
    Segment,
    TraceStyle,
    build_tokenizer,
    evaluate,
    format_example,
    format_prompt,
    join,
    judge,
    kind_counts,
    make_trace,
    parse_answer,
    problem_from_seed,
    problems,
    prune,
    redundancy,
    sample_problem,
    segment,
    shortest_trace,
    split_of,
    trace_lines,
    vocabulary,
)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def _sample(n: int, seed: int = 0, difficulty: str = "medium"):
    rng = random.Random(seed)
    return [sample_problem(rng, difficulty) for _ in range(n)]


# -- problems -------------------------------------------------------------------


@pytest.mark.parametrize("difficulty", sorted(DIFFICULTIES))
def test_ground_truth_matches_python(difficulty):
    d = DIFFICULTIES[difficulty]
    for p in _sample(300, seed=1, difficulty=difficulty):
        assert re.fullmatch(r"\d+( [-+*] \d+)*", p.expression)
        assert eval(p.expression) == p.answer  # standard precedence, as Python reads it
        assert d.min_terms <= len(p.terms) <= d.max_terms
        total = 0
        for t in p.terms:  # the running total never goes below zero
            total += t.value if t.sign == "+" else -t.value
            assert total >= 0 and t.number <= d.max_number and t.factor <= d.max_factor
        assert p.answer == total
        if p.steps:
            assert p.steps[-1].result == p.answer
        for s in p.steps:
            assert all(evaluate(side) == s.result for side in s.text.split("="))
        if p.kind == "expression":
            assert p.prompt == f"What is {p.expression}?"
        else:  # a word problem carries the same numbers, in order
            assert re.findall(r"\d+", p.prompt) == re.findall(r"\d+", p.expression)
            assert p.prompt.endswith("have now?")


def test_problem_kinds_and_difficulty_knobs():
    ps = _sample(400)
    kinds = {p.kind for p in ps}
    assert kinds == {"word", "expression"}
    assert any(t.factor > 1 for p in ps for t in p.terms), "the default has products"
    assert max(p.answer for p in ps) >= 100, "the default reaches 3-digit totals"
    assert max(p.answer for p in _sample(200, difficulty="hard")) >= 500, "hard: larger numbers and factors"
    assert all(t.factor == 1 for p in _sample(100, difficulty="easy") for t in p.terms)
    only_words = Difficulty(word_prob=1.0)
    assert {p.kind for p in (sample_problem(random.Random(i), only_words) for i in range(20))} == {"word"}
    with pytest.raises(ValueError, match="min_terms"):
        Difficulty(min_terms=5, max_terms=3)
    with pytest.raises(ValueError, match="product_prob"):
        Difficulty(product_prob=1.5)


def test_word_problem_reads_like_one():
    p = next(p for p in _sample(50) if p.kind == "word" and any(t.factor > 1 for t in p.terms[1:]))
    print(p.prompt, "=>", p.expression, "=", p.answer)
    assert re.search(r"(buys|gets|gives away|sells) \d+ (bags|boxes|packs|jars) of \d+", p.prompt)
    assert p.prompt.count(".") == len(p.terms)


def test_split_is_deterministic_and_disjoint():
    train = problems(300, "train", seed=0)
    held = problems(60, "heldout", seed=0)
    assert problems(300, "train", seed=0) == train and problems(60, "heldout", seed=0) == held
    assert all(p.split == "train" for p in train) and all(p.split == "heldout" for p in held)
    assert len({p.prompt for p in train}) == 300
    other_train = problems(300, "train", seed=7)
    assert other_train != train
    held_chains = {p.expression for p in held}
    assert not held_chains & {p.expression for p in train + other_train}, "a held-out chain leaked into training"
    share = sum(split_of(p.expression) == "heldout" for p in _sample(2000, seed=3)) / 2000
    assert 0.06 < share < 0.14
    with pytest.raises(ValueError, match="split"):
        problems(1, "test")


def test_determinism_per_seed():
    a, b = _sample(20, seed=11), _sample(20, seed=11)
    assert a == b and a != _sample(20, seed=12)
    for p in a:
        assert problem_from_seed(p.seed) == p
        assert make_trace(p, random.Random(5)) == make_trace(p, random.Random(5)) == make_trace(p, 5)
    assert any(make_trace(p, 5) != make_trace(p, 6) for p in a)


# -- traces ---------------------------------------------------------------------


def test_traces_end_in_the_right_answer():
    rng = random.Random(0)
    for difficulty in DIFFICULTIES:
        for p in _sample(150, seed=2, difficulty=difficulty):
            trace = make_trace(p, rng)
            assert trace.splitlines()[-1] == f"Answer: {p.answer}"
            v = judge(p, trace)
            assert v.correct and v.answer == p.answer and v.tokens == len(trace.split())


def test_shortest_trace_is_correct_and_shorter():
    rng = random.Random(4)
    for p in _sample(200, seed=4):
        short = shortest_trace(p)
        trace = make_trace(p, rng)
        assert judge(p, short).correct
        assert not redundancy(short) and {s.kind for s in segment(short)} <= {"step", "answer"}
        assert len(short) <= len(trace) and (len(short) < len(trace) or not redundancy(trace))
        assert short == make_trace(p, rng, STYLES["concise"])
        assert prune(trace) == short, "dropping the redundant segments gives the shortest trace"
        lines = short.splitlines()
        assert len(lines) == len(p.steps) + 1 + (p.kind == "word")


def test_overthinking_is_the_majority_habit():
    ps = problems(500, "train", seed=3)
    rng = random.Random(3)
    traces = [make_trace(p, rng) for p in ps]
    redundant = sum(map(redundancy, traces)) / len(traces)
    long = statistics.mean(len(t.split()) for t in traces)
    short = statistics.mean(len(shortest_trace(p).split()) for p in ps)
    kinds = sum((kind_counts(t) for t in traces), start=kind_counts(""))
    print(f"redundant traces: {redundant:.1%}; mean words {long:.1f} vs shortest {short:.1f} "
          f"(x{long / short:.2f}); {dict(kinds)}")
    assert redundant >= 0.6
    assert long >= 1.5 * short
    # verification stays the majority choice after a step even when sampling
    # sharpens it at temperature 0.7 (p^(1/T) renormalised)
    p, t = TraceStyle().verify, 0.7
    assert p ** (1 / t) / (p ** (1 / t) + (1 - p) ** (1 / t)) > 0.5
    with pytest.raises(ValueError, match="verify"):
        TraceStyle(verify=2.0)


def test_segmenter_recovers_the_generated_kinds():
    rng = random.Random(9)
    for difficulty in DIFFICULTIES:
        for p in _sample(150, seed=9, difficulty=difficulty):
            lines = trace_lines(p, rng)
            text = "\n".join(line for _, line in lines)
            segs = segment(text)
            assert [s.kind for s in segs] == [k for k, _ in lines]
            assert join(segs) == text
            assert all(text[s.start:s.end] == s.text for s in segs)


# -- judge and segmenter on hand-written and malformed text ------------------------


HAND_WRITTEN = """\
Hmm, let me think about this carefully.
12 + 7 * 4 = 12 + 28 = 40
Let me double-check: 40 - 28 = 12. Yes.
40 - 35 = 6
Wait, that is wrong.
40 - 35 = 5
40 - 35 = 5
Okay, next.
5 + 3 = 8
Wait, that's not right.
5 + 3 * 9 = 5 + 27 = 32
Again: 5 + 3 * 9 = 5 + 27 = 32
3 * 9 = 27
Let me verify: 12 + 7 * 4 - 35 + 3 * 9 = 32. Correct.
Answer: 32"""


def test_segmenter_on_a_hand_written_trace():
    segs = segment(HAND_WRITTEN)
    assert [s.kind for s in segs] == [
        "filler", "step", "verify", "detour", "correction", "step", "recompute", "filler",
        "detour", "correction", "step", "recompute", "recompute", "verify", "answer",
    ]
    assert [s.ok for s in segs][:4] == [None, True, True, False]
    assert join(segs) == HAND_WRITTEN
    assert segs[0].start == 0 and segs[-1].end == len(HAND_WRITTEN)
    assert prune(HAND_WRITTEN) == "12 + 7 * 4 = 12 + 28 = 40\n40 - 35 = 5\n5 + 3 * 9 = 5 + 27 = 32\nAnswer: 32"
    assert set(kind_counts(HAND_WRITTEN)) <= set(KINDS)


def test_segmenter_on_malformed_model_output():
    # what a half-trained model may write after "A:": a leading newline, blank
    # lines, unknown words, broken equations, a wrong step nobody corrects,
    # CRLF line ends, no final newline, no well-formed answer
    text = ("\n12 + 5 = 17\n\n\nbanana 17 17 =\n17 - = 4\r\n17 * 2 = 35\n"
            "Let me double-check: 17 * 2 = 34. Yes.\nAnswer: forty\n  ")
    segs = segment(text)
    assert join(segs) == text
    assert [s.kind for s in segs] == ["step", "other", "other", "detour", "verify", "other"]
    assert segs[0].text == "\n12 + 5 = 17\n\n\n" and segs[-1].text == "Answer: forty\n  "
    assert all(text[s.start:s.end] == s.text for s in segs)
    assert redundancy(text)
    v = judge(problem_from_seed(1), text)
    assert v.answer is None and not v.correct
    for odd in ("", "   ", "\n\n", "Answer: 3"):
        assert join(segment(odd)) == odd
    assert [s.kind for s in segment("   ")] == ["other"] and segment("") == []
    assert segment("Answer: 3") == [Segment("Answer: 3", "answer", 0, 9, None)]


def test_judge_reads_the_last_answer_and_counts_tokens(tokenizer):
    p = next(p for p in _sample(10) if p.answer not in (0, 1))
    wrong = f"Answer: {p.answer + 1}"
    assert judge(p, f"{wrong}\nAnswer: {p.answer}").correct
    assert not judge(p, f"Answer: {p.answer}\n{wrong}").correct
    assert parse_answer("x\nAnswer: 42.\n") == 42 and parse_answer("Answer: 42 apples") is None
    assert parse_answer("no answer here") is None
    trace = make_trace(p, 1)
    assert judge(p, trace, tokenizer=list).tokens == len(trace)
    hf = judge(p, trace, tokenizer=tokenizer).tokens
    assert hf == len(tokenizer.encode(trace, add_special_tokens=False)) > judge(p, trace).tokens


# -- tokenizer ------------------------------------------------------------------


def test_tokenizer_round_trips_every_prompt_and_trace(tokenizer):
    assert tokenizer.pad_token_id == 0 and tokenizer.unk_token == "<unk>"
    assert {tokenizer.bos_token, tokenizer.eos_token} == {"<bos>", "<eos>"}
    rng = random.Random(6)
    lengths = []
    for difficulty in DIFFICULTIES:
        for p in _sample(100, seed=6, difficulty=difficulty):
            for text in (format_prompt(p), format_example(p, make_trace(p, rng)), shortest_trace(p)):
                ids = tokenizer.encode(text, add_special_tokens=False)
                assert tokenizer.unk_token_id not in ids, text
                assert tokenizer.decode(ids) == text
            lengths.append(len(tokenizer.encode(make_trace(p, rng), add_special_tokens=False)))
    print(f"vocabulary: {len(tokenizer)} tokens ({len(vocabulary())} words); "
          f"trace tokens: median {statistics.median(lengths)}, max {max(lengths)}")
    assert len(tokenizer) < 300
    # digits are single tokens; unknown words become <unk>; special tokens are added only on purpose
    assert tokenizer.tokenize("Answer: 407") == ["Answer", ":", " 4", "0", "7"]
    assert tokenizer.encode("Q: zebra", add_special_tokens=False)[-1] == tokenizer.unk_token_id
    ids = [tokenizer.bos_token_id, *tokenizer.encode("A:", add_special_tokens=False), tokenizer.eos_token_id]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "A:"
    assert format_example(p, "Answer: 1") == f"Q: {p.prompt}\nA:\nAnswer: 1"
