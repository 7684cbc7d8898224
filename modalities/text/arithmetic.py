"""The arithmetic world: multi-step problems, overthinking traces, a judge.

A procedural world with a known ground truth for the text-reasoning modality
(see ../shared/DESIGN.md, "Built-in default models"). A small causal LM is
trained from scratch on its traces, and then tuned to think *shorter* without
losing accuracy -- the setting of "Don't Think Longer, Think Wisely:
Optimizing Thinking Dynamics for Large Reasoning Models" (2025), which
segments reasoning paths into thinking patterns, keeps the useful ones and
drops the detrimental ones, and trains on pairs (long, pruned) with a
preference loss.

- A :class:`Problem` is a chain of *terms* joined by ``+`` and ``-``; a
  term is a number or a product ``k * n`` of a small factor and a number
  (:data:`DIFFICULTIES`: "medium", the built-in model's level, has 3-5 terms,
  numbers 1-30, factors 2-5). **Standard precedence**: ``*`` binds tighter than
  ``+``/``-``, which associate to the left -- exactly Python's reading of the
  canonical :attr:`Problem.expression`, e.g. ``"12 + 7 * 4 - 35 + 3 * 9"``.
  Running totals never go below zero. A problem is either written as that
  expression ("What is 12 + 7 * 4 - 35 + 3 * 9?") or as a word problem from
  templates over the same chain ("Ana has 12 apples. She buys 7 bags of 4.
  She gives away 35. ...").
- :func:`make_trace` writes a reasoning trace, one line per segment: useful
  steps (``"12 + 7 * 4 = 12 + 28 = 40"``) and overthinking habits --
  re-verification, recomputation, detours that self-correct, filler -- ending
  in ``"Answer: N"``. The habits are the MAJORITY choice at their positions
  (:class:`TraceStyle`): a model sampled at temperature <= 0.7 sharpens its
  choices, so a habit that is a minority choice in the data all but vanishes
  from samples, and there would be nothing to tune away. Every training trace
  still ends in the right answer. :func:`shortest_trace` is the useful steps
  and the answer only.
- :func:`judge` reads the last ``Answer: N`` line of any text and counts its
  tokens; :func:`segment` splits any text (model output included, malformed
  or not) into typed :class:`Segment` s that :func:`join` puts back exactly.
- :func:`build_tokenizer` is a word-level tokenizer over the world's fixed
  vocabulary (digits one by one) that round-trips every prompt and trace.

The text format, fixed here once (the model sees ``format_prompt`` and then
continues with ``"\\n"`` and the trace; the caller adds BOS/EOS)::

    Q: What is 12 + 7 * 4 - 35 + 3 * 9?
    A:
    Hmm, let me think about this carefully.
    12 + 7 * 4 = 12 + 28 = 40
    Let me double-check: 40 - 28 = 12. Yes.
    40 - 35 = 6
    Wait, that is wrong.
    40 - 35 = 5
    5 + 3 * 9 = 5 + 27 = 32
    Answer: 32
"""
from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

if TYPE_CHECKING:  # transformers is imported only by build_tokenizer
    from transformers import PreTrainedTokenizerFast

# -- problems -----------------------------------------------------------------

SPLITS = ("train", "heldout")
HELDOUT_PERCENT = 10  # share of all chains, by a hash of the canonical expression


@dataclass(frozen=True)
class Difficulty:
    """Knobs of :func:`sample_problem`; :data:`DIFFICULTIES` names four levels.
    The field defaults are the "hard" level."""

    min_terms: int = 4
    max_terms: int = 6
    max_number: int = 99  # plain numbers and the large factor of a product: 1..max_number
    max_factor: int = 9  # the small factor k of a product k * n: 2..max_factor
    product_prob: float = 0.4  # chance that a term is a product
    minus_prob: float = 0.45  # chance that a later term is subtracted (when the total allows)
    word_prob: float = 0.5  # chance that the problem is written as a word problem

    def __post_init__(self) -> None:
        if not 1 <= self.min_terms <= self.max_terms:
            raise ValueError(f"need 1 <= min_terms <= max_terms, got {self.min_terms}, {self.max_terms}")
        if self.max_number < 2 or self.max_factor < 2:
            raise ValueError(f"max_number and max_factor must be >= 2, got {self.max_number}, {self.max_factor}")
        for name in ("product_prob", "minus_prob", "word_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")


DIFFICULTIES: dict[str, Difficulty] = {
    "easy": Difficulty(min_terms=2, max_terms=4, max_number=50, product_prob=0.0),
    # the built-in reasoning model's level (models/arith-reasoner/README.md)
    "medium": Difficulty(min_terms=3, max_terms=5, max_number=30, max_factor=5, product_prob=0.3, word_prob=0.3),
    # a 0.8M-parameter model trained 40 minutes on this level answered 19% at temperature 0.7
    "hard": Difficulty(),
    "expert": Difficulty(min_terms=5, max_terms=7, max_number=99, max_factor=12, product_prob=0.5),
}


@dataclass(frozen=True)
class Term:
    """One term of the chain: ``sign`` times ``factor * number`` (factor 1 for a plain number)."""

    sign: str  # "+" or "-" ("+" for the first term)
    number: int
    factor: int = 1

    @property
    def value(self) -> int:
        return self.factor * self.number

    @property
    def text(self) -> str:
        return f"{self.factor} * {self.number}" if self.factor > 1 else str(self.number)


@dataclass(frozen=True)
class Step:
    """One useful step: ``before sign term = result``, written as :attr:`text`."""

    term: Term
    before: int | None  # the running total before this term (None for the first term)
    result: int
    text: str


@dataclass(frozen=True)
class Problem:
    id: str
    seed: int  # sample_problem(random.Random(seed), difficulty) gives this problem back
    kind: str  # "expression" or "word"
    prompt: str  # the problem as the user writes it (without "Q: ")
    expression: str  # canonical expression, standard precedence, e.g. "12 + 7 * 4 - 35"
    terms: tuple[Term, ...]
    steps: tuple[Step, ...]
    answer: int

    @property
    def split(self) -> str:
        return split_of(self.expression)


def split_of(expression: str) -> str:
    """"train" or "heldout", fixed forever by a hash of the canonical
    expression: the expression and word renderings of a chain share a side."""
    h = int(hashlib.sha256(expression.encode()).hexdigest()[:8], 16)
    return "heldout" if h % 100 < HELDOUT_PERCENT else "train"


def _expression(terms: Sequence[Term]) -> str:
    out = terms[0].text
    for t in terms[1:]:
        out += f" {t.sign} {t.text}"
    return out


def _steps(terms: Sequence[Term]) -> tuple[Step, ...]:
    """Left to right, one line per term; a product is worked out inside its line."""
    first = terms[0]
    steps = []
    if first.factor > 1:
        steps.append(Step(first, None, first.value, f"{first.text} = {first.value}"))
    total = first.value
    for t in terms[1:]:
        result = total + t.value if t.sign == "+" else total - t.value
        if t.factor > 1:
            text = f"{total} {t.sign} {t.text} = {total} {t.sign} {t.value} = {result}"
        else:
            text = f"{total} {t.sign} {t.number} = {result}"
        steps.append(Step(t, total, result, text))
        total = result
    return tuple(steps)


def _sample_terms(rng: random.Random, d: Difficulty) -> list[Term]:
    n_terms = rng.randint(d.min_terms, d.max_terms)
    terms: list[Term] = []
    total = 0
    for i in range(n_terms):
        product = rng.random() < d.product_prob
        sign = "-" if i > 0 and rng.random() < d.minus_prob else "+"
        factor = rng.randint(2, d.max_factor) if product else 1
        if sign == "-":
            # keep the running total >= 0; fall back to a plain number, then to "+"
            if factor > 1 and total // factor < 2:
                factor = 1
            if total < 1:
                sign = "+"
        cap = d.max_number if sign == "+" else min(d.max_number, total // factor)
        number = rng.randint(2 if factor > 1 else 1, cap)
        term = Term(sign if i > 0 else "+", number, factor)
        terms.append(term)
        total += term.value if term.sign == "+" else -term.value
    return terms


# Word problems: a person, what they count, and how a term reads.
_PEOPLE = (("Ana", "she"), ("Ben", "he"), ("Cara", "she"), ("Dan", "he"), ("Eva", "she"), ("Finn", "he"),
           ("Gia", "she"), ("Hugo", "he"))
_ITEMS = ("apples", "pears", "eggs", "cards", "coins", "stamps", "marbles", "books", "shells", "beads")
_CONTAINERS = ("bags", "boxes", "packs", "jars")
_FIRST = "{name} has {n} {items}."
_FIRST_PRODUCT = "{name} has {k} {box} of {n} {items}."
_MORE = ("{Pron} buys {n} more.", "{Pron} finds {n} more.", "{Pron} gets {n} more.")
_MORE_PRODUCT = ("{Pron} buys {k} {box} of {n}.", "{Pron} gets {k} {box} of {n}.")
_LESS = ("{Pron} gives away {n}.", "{Pron} sells {n}.", "{Pron} loses {n}.")
_LESS_PRODUCT = ("{Pron} gives away {k} {box} of {n}.", "{Pron} sells {k} {box} of {n}.")
_QUESTION = "How many {items} does {pron} have now?"
_EXPRESSION_PROMPT = "What is {expr}?"


def _word_prompt(terms: Sequence[Term], rng: random.Random) -> str:
    name, pron = rng.choice(_PEOPLE)
    items = rng.choice(_ITEMS)
    fmt = dict(name=name, pron=pron, Pron=pron.capitalize(), items=items)
    out = []
    for i, t in enumerate(terms):
        fmt.update(n=t.number, k=t.factor, box=rng.choice(_CONTAINERS))
        if i == 0:
            template = _FIRST_PRODUCT if t.factor > 1 else _FIRST
        elif t.sign == "+":
            template = rng.choice(_MORE_PRODUCT if t.factor > 1 else _MORE)
        else:
            template = rng.choice(_LESS_PRODUCT if t.factor > 1 else _LESS)
        out.append(template.format(**fmt))
    out.append(_QUESTION.format(**fmt))
    return " ".join(out)


def sample_problem(rng: random.Random, difficulty: Difficulty | str = "medium") -> Problem:
    """A random problem. Deterministic in ``rng``'s state: the problem's
    :attr:`~Problem.seed` is drawn first, and the problem from that seed."""
    d = DIFFICULTIES[difficulty] if isinstance(difficulty, str) else difficulty
    return problem_from_seed(rng.randrange(2**63), d)


def problem_from_seed(seed: int, difficulty: Difficulty | str = "medium") -> Problem:
    d = DIFFICULTIES[difficulty] if isinstance(difficulty, str) else difficulty
    rng = random.Random(seed)
    while True:
        terms = _sample_terms(rng, d)
        steps = _steps(terms)
        # A useful step that repeats an earlier computation would read as a
        # recomputation to the segmenter (and to a reader): draw again.
        if all(s.kind == "step" for s in segment("\n".join(s.text for s in steps))):
            break
    expression = _expression(terms)
    kind = "word" if rng.random() < d.word_prob else "expression"
    prompt = _word_prompt(terms, rng) if kind == "word" else _EXPRESSION_PROMPT.format(expr=expression)
    digest = hashlib.sha256(f"{kind}|{prompt}".encode()).hexdigest()[:12]
    return Problem(id=digest, seed=seed, kind=kind, prompt=prompt, expression=expression, terms=tuple(terms),
                   steps=steps, answer=steps[-1].result if steps else terms[0].value)


def problems(n: int, split: str = "train", *, seed: int = 0, difficulty: Difficulty | str = "medium") -> list[Problem]:
    """``n`` distinct problems of ``split`` ("train" or "heldout"), the same
    for the same arguments. A held-out problem's chain is never a training
    chain, whichever ``seed`` drew the training set."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(f"arithmetic/{split}/{seed}")
    out: list[Problem] = []
    seen: set[str] = set()
    while len(out) < n:
        p = sample_problem(rng, difficulty)
        if p.split == split and p.prompt not in seen:
            seen.add(p.prompt)
            out.append(p)
    return out


# -- traces ---------------------------------------------------------------------

OPENING_FILLERS = ("Hmm, let me think about this carefully.", "Let me work through this step by step.")
FILLERS = ("Hmm, let me think.", "Okay, next.", "Let me be careful here.")
CORRECTIONS = ("Wait, that is wrong.", "Wait, that's not right.")
VERIFY_PREFIXES = ("Let me double-check:", "Let me verify:")
VERIFY_SUFFIXES = ("Yes.", "Correct.")
RECOMPUTE_PREFIX = "Again:"
ANSWER_PREFIX = "Answer:"

KINDS = ("step", "verify", "recompute", "detour", "correction", "filler", "answer", "other")
REDUNDANT_KINDS = frozenset({"verify", "recompute", "detour", "correction", "filler"})


@dataclass(frozen=True)
class TraceStyle:
    """How often each overthinking habit fires at its position.

    The defaults make verification (after a step), the opening filler and the
    final check the majority choice -- as in real reasoning models, and so
    that they survive sampling at temperature <= 0.7 -- while detours stay a
    sizeable minority (each one self-corrects, so the answer stays right).
    """

    opening_filler: float = 0.6  # a filler line before the first step
    filler: float = 0.3  # a filler line before a later step
    detour: float = 0.3  # a wrong step, a correction ("Wait, ..."), then the right step
    verify: float = 0.6  # a check of the step just done
    recompute: float = 0.35  # the step just done, done again
    final_check: float = 0.6  # the whole expression checked before the answer

    def __post_init__(self) -> None:
        for f in fields(self):
            if not 0.0 <= getattr(self, f.name) <= 1.0:
                raise ValueError(f"TraceStyle.{f.name} must lie in [0, 1], got {getattr(self, f.name)}")


STYLES: dict[str, TraceStyle] = {
    "overthinking": TraceStyle(),
    "concise": TraceStyle(0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
}


def _slip(value: int, rng: random.Random) -> int:
    """A plausible wrong value: off by one or two, or by ten (a dropped carry)."""
    for _ in range(20):
        wrong = value + rng.choice((-10, -2, -1, 1, 2, 10))
        if wrong >= 0 and wrong != value:
            return wrong
    return value + 1


def _detour(step: Step, rng: random.Random) -> str:
    t = step.term
    if step.before is not None and t.factor > 1 and rng.random() < 0.5:
        # precedence slip: the running total meets the small factor first
        wrong = step.before + t.factor if t.sign == "+" else step.before - t.factor
        return f"{step.before} {t.sign} {t.factor} = {wrong}"
    if t.factor > 1 and rng.random() < 0.5:
        # a wrong product, carried through consistently
        p = _slip(t.value, rng)
        if step.before is None:
            return f"{t.text} = {p}"
        r = step.before + p if t.sign == "+" else step.before - p
        if r >= 0:
            return f"{step.before} {t.sign} {t.text} = {step.before} {t.sign} {p} = {r}"
    # a wrong final result
    head = step.text.rsplit(" = ", 1)[0]
    return f"{head} = {_slip(step.result, rng)}"


def _verify(step: Step, rng: random.Random) -> str:
    t = step.term
    if step.before is not None and rng.random() < 0.5:
        inverse = "-" if t.sign == "+" else "+"  # undo the step: result -/+ value = before
        check = f"{step.result} {inverse} {t.value} = {step.before}"
    else:
        check = step.text
    return f"{rng.choice(VERIFY_PREFIXES)} {check}. {rng.choice(VERIFY_SUFFIXES)}"


def _recompute(step: Step, rng: random.Random) -> str:
    t = step.term
    r = rng.random()
    if t.factor > 1 and step.before is not None and r < 0.3:
        return f"{t.text} = {t.value}"  # the product, once more
    if r < 0.65:
        return step.text  # the step verbatim
    return f"{RECOMPUTE_PREFIX} {step.text}"


def trace_lines(
    problem: Problem, rng: random.Random | int, style: TraceStyle | str = "overthinking"
) -> list[tuple[str, str]]:
    """A trace as (kind, line) pairs: the ground truth that :func:`segment`
    recovers from the text. :func:`make_trace` joins the lines."""
    rng = random.Random(rng) if isinstance(rng, int) else rng
    st = STYLES[style] if isinstance(style, str) else style
    lines: list[tuple[str, str]] = []
    if problem.kind == "word":
        lines.append(("step", problem.expression))  # the word problem, written as arithmetic
    for i, step in enumerate(problem.steps):
        if rng.random() < (st.opening_filler if i == 0 else st.filler):
            lines.append(("filler", rng.choice(OPENING_FILLERS if i == 0 else FILLERS)))
        if rng.random() < st.detour:
            lines.append(("detour", _detour(step, rng)))
            lines.append(("correction", rng.choice(CORRECTIONS)))
        lines.append(("step", step.text))
        if rng.random() < st.verify:
            lines.append(("verify", _verify(step, rng)))
        if rng.random() < st.recompute:
            lines.append(("recompute", _recompute(step, rng)))
    if len(problem.steps) > 1 and rng.random() < st.final_check:
        lines.append(("verify", f"{rng.choice(VERIFY_PREFIXES)} {problem.expression} = {problem.answer}. "
                                f"{rng.choice(VERIFY_SUFFIXES)}"))
    lines.append(("answer", f"{ANSWER_PREFIX} {problem.answer}"))
    return lines


def make_trace(problem: Problem, rng: random.Random | int, style: TraceStyle | str = "overthinking") -> str:
    """A reasoning trace for ``problem``, one segment per line, ending in
    ``"Answer: N"`` with the right N. ``style`` is a :class:`TraceStyle` or
    a name in :data:`STYLES`."""
    return "\n".join(line for _, line in trace_lines(problem, rng, style))


def shortest_trace(problem: Problem) -> str:
    """The useful steps and the answer, nothing else."""
    return make_trace(problem, random.Random(0), "concise")


def format_prompt(problem: Problem | str) -> str:
    """What the model is conditioned on; it continues with "\\n" and the trace."""
    text = problem.prompt if isinstance(problem, Problem) else problem
    return f"Q: {text}\nA:"


def format_example(problem: Problem | str, trace: str) -> str:
    """A whole training text (without BOS/EOS): the prompt, a newline, the trace."""
    return f"{format_prompt(problem)}\n{trace}"


# -- judging --------------------------------------------------------------------

_ANSWER_RE = re.compile(r"Answer:\s*(-?\d{1,18})\.?")


@dataclass(frozen=True)
class Verdict:
    correct: bool
    answer: int | None  # the last "Answer: N" line's N, None when there is none
    tokens: int  # length of the trace text, in the given tokenizer's tokens


def parse_answer(text: str) -> int | None:
    """N from the last line that reads exactly "Answer: N" (a final period allowed)."""
    for line in reversed(text.splitlines()):
        m = _ANSWER_RE.fullmatch(line.strip())
        if m:
            return int(m.group(1))
    return None


def count_tokens(text: str, tokenizer: Any = None) -> int:
    """Tokens of ``text``: whitespace-separated words by default; or a
    callable returning a sequence of tokens; or a Hugging Face tokenizer
    (anything with ``.encode``), without special tokens."""
    if tokenizer is None:
        return len(text.split())
    if hasattr(tokenizer, "encode"):
        try:
            return len(tokenizer.encode(text, add_special_tokens=False))
        except TypeError:  # an encode without that keyword (e.g. tokenizers.Tokenizer)
            out = tokenizer.encode(text)
            return len(getattr(out, "ids", out))
    return len(tokenizer(text))


def judge(problem: Problem, trace_text: str, tokenizer: Callable[[str], Sequence] | Any = None) -> Verdict:
    """Right or wrong by the last "Answer: N" line, and how long the trace is."""
    answer = parse_answer(trace_text)
    return Verdict(correct=answer == problem.answer, answer=answer, tokens=count_tokens(trace_text, tokenizer))


# -- segmenting -----------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """A line of a trace (with its trailing newline, and any blank lines after
    it) and what kind of thinking it is; ``text == source[start:end]``."""

    text: str
    kind: str  # one of KINDS
    start: int
    end: int
    ok: bool | None = None  # whether the line's arithmetic holds; None if it has none


_MAX_DIGITS = 18  # longer numbers (runaway model output) are not evaluated
_CALC_LINE_RE = re.compile(r"[\d\s+\-*=]*\d[\d\s+\-*=]*")
_EXPR_RE = re.compile(r"\s*\d+(?:\s*[-+*]\s*\d+)*\s*")
_EQUATION_RE = re.compile(r"\d[\d\s+\-*]*(?:=[\d\s+\-*]*\d)+")
_PRODUCT_RE = re.compile(r"\d+(?:\*\d+)+")


def evaluate(expr: str) -> int | None:
    """Value of an expression of non-negative integers, ``+``, ``-`` and
    ``*`` (standard precedence), or None if it is not one."""
    if not _EXPR_RE.fullmatch(expr):
        return None
    toks = re.findall(r"\d+|[-+*]", expr)
    if any(len(t) > _MAX_DIGITS for t in toks):
        return None
    total, sign, prod = 0, 1, int(toks[0])
    for op, num in zip(toks[1::2], toks[2::2]):
        if op == "*":
            prod *= int(num)
        else:
            total += sign * prod
            sign, prod = (1 if op == "+" else -1), int(num)
    return total + sign * prod


def _chains(line: str) -> list[list[str]]:
    """Every equation chain ``a = b = c`` in a line, as its sides."""
    return [m.group(0).split("=") for m in _EQUATION_RE.finditer(line)]


def _arithmetic_ok(line: str) -> bool | None:
    chains = _chains(line)
    if not chains:
        return None
    for sides in chains:
        values = [evaluate(s) for s in sides]
        if None in values or len(set(values)) != 1:
            return False
    return True


def _facts(line: str) -> frozenset[str]:
    """What a calculation line works out: each side that is not a bare number,
    and each product inside a sum (spaces removed). A bare expression (the
    setup line of a word problem) is one fact of its own sort: writing the
    problem down is not working out any part of it."""
    sides = line.split("=")
    if len(sides) == 1:
        return frozenset({"expression:" + re.sub(r"\s+", "", line)})
    out = set()
    for side in sides:
        s = re.sub(r"\s+", "", side)
        if not s.isdigit():
            out.add(s)
            out.update(_PRODUCT_RE.findall(s))
    return frozenset(out)


def _line_kind(line: str) -> str:
    """Kind by the fixed phrasings; "calc" for a bare calculation (decided later)."""
    s = line.strip()
    if _ANSWER_RE.fullmatch(s):
        return "answer"
    if s.startswith(("Let me double-check", "Let me verify", "Check")):
        return "verify"
    if s.startswith("Wait"):
        return "correction"
    if s.startswith(("Again", "Recompute")):
        return "recompute"
    if s in OPENING_FILLERS or s in FILLERS or (
        s.startswith(("Hmm", "Okay", "Let me think", "Let me be careful", "Let me work")) and not re.search(r"\d", s)
    ):
        return "filler"
    if _CALC_LINE_RE.fullmatch(s) and re.search(r"[-+*=]", s) and all(evaluate(x) is not None for x in s.split("=")):
        return "calc"
    return "other"


def segment(trace_text: str) -> list[Segment]:
    """Typed segments of any text, one per non-blank line (blank lines stick
    to the segment before; leading ones to the first). Kinds:

    - by phrasing: "answer" ("Answer: N"), "verify" ("Let me double-check:",
      "Let me verify:"), "correction" ("Wait, ..."), "recompute" ("Again:"),
      "filler" (the known filler lines, or a digit-free "Hmm..."/"Okay...");
    - a bare calculation is a "detour" if its arithmetic is wrong or the next
      line is a correction, a "recompute" if everything it works out was
      worked out by an earlier step, and a "step" otherwise;
    - anything else (e.g. malformed model output) is "other".
    """
    # 1. lines, with their trailing newline; blank lines join the line before
    spans: list[list[int]] = []
    pos = 0
    for raw in trace_text.splitlines(keepends=True):
        if raw.strip() or not spans:
            spans.append([pos, pos + len(raw)])
        else:
            spans[-1][1] = pos + len(raw)
        pos += len(raw)
    if len(spans) > 1 and not trace_text[spans[0][0]:spans[0][1]].strip():
        spans[1][0] = spans[0][0]  # leading blank lines belong to the first real line
        spans.pop(0)
    texts = [trace_text[a:b] for a, b in spans]
    kinds = [_line_kind(t) for t in texts]
    oks = [_arithmetic_ok(t) for t in texts]
    # 2. bare calculations: detour, recompute or step
    seen: set[str] = set()
    for i, kind in enumerate(kinds):
        if kind != "calc":
            continue
        corrected = i + 1 < len(kinds) and kinds[i + 1] == "correction"
        if oks[i] is False or corrected:
            kinds[i] = "detour"
            continue
        facts = _facts(texts[i].strip())
        kinds[i] = "recompute" if facts and facts <= seen else "step"
        seen |= facts
    return [Segment(t, k, a, b, ok) for t, k, (a, b), ok in zip(texts, kinds, spans, oks)]


def join(segments: Iterable[Segment]) -> str:
    """The text the segments came from (or, with some dropped, the pruned trace)."""
    return "".join(s.text for s in segments)


def _segments(trace: str | Sequence[Segment]) -> Sequence[Segment]:
    return segment(trace) if isinstance(trace, str) else trace


def kind_counts(trace: str | Sequence[Segment]) -> Counter:
    """How many segments of each kind a trace has."""
    return Counter(s.kind for s in _segments(trace))


def redundancy(trace: str | Sequence[Segment]) -> bool:
    """Whether a trace has any redundant pattern: verification,
    recomputation, a detour (or its correction), or filler."""
    return any(s.kind in REDUNDANT_KINDS for s in _segments(trace))


def prune(trace: str | Sequence[Segment]) -> str:
    """The trace without its redundant segments (for a trace whose steps are
    right, the shortest trace). Unknown ("other") lines are kept."""
    return join(s for s in _segments(trace) if s.kind not in REDUNDANT_KINDS)


# -- tokenizer ------------------------------------------------------------------

SPECIAL_TOKENS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<bos>", "eos_token": "<eos>"}
# One piece per word, per digit, per other character; a single space is glued
# to the piece after it (as in GPT-2), so the pieces concatenate back to the text.
_PIECE_PATTERN = r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]|\s"
_PUNCTUATION = ".,:;?!'+-*=()"


def vocabulary() -> list[str]:
    """Every word the world's prompts and traces use (for the tokenizer)."""
    phrases: list[str] = [
        _FIRST, _FIRST_PRODUCT, *_MORE, *_MORE_PRODUCT, *_LESS, *_LESS_PRODUCT, _QUESTION, _EXPRESSION_PROMPT,
        *OPENING_FILLERS, *FILLERS, *CORRECTIONS, *VERIFY_PREFIXES, *VERIFY_SUFFIXES, RECOMPUTE_PREFIX,
        ANSWER_PREFIX, "Q: A:", *_ITEMS, *_CONTAINERS,
    ]
    for name, pron in _PEOPLE:
        phrases += [name, pron, pron.capitalize()]
    words: set[str] = set()
    for p in phrases:
        words.update(re.findall(r"[A-Za-z]+", re.sub(r"\{[^}]*\}", " ", p)))
    return sorted(words)


def _pieces() -> list[str]:
    atoms = vocabulary() + list("0123456789") + list(_PUNCTUATION)
    return [*atoms, *(" " + a for a in atoms), " ", "\n"]


def build_tokenizer() -> "PreTrainedTokenizerFast":
    """A word-level tokenizer over the world's fixed vocabulary, built offline.

    Digits are single tokens; a space is part of the token after it; "\\n" is
    a token. ``decode(encode(text))`` gives back ``text`` for every prompt and
    trace of the world (the decoder concatenates pieces, and Hugging Face's
    space clean-up is off). Special tokens: ``<pad>`` (id 0), ``<unk>``,
    ``<bos>``, ``<eos>``; none is added automatically -- the training script
    writes ``<bos> Q: ...\\nA:\\n<trace><eos>`` itself.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS.values())
    vocab = {tok: i for i, tok in enumerate(specials + _pieces())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_PIECE_PATTERN), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **SPECIAL_TOKENS)
