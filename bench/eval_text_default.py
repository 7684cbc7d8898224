"""Accuracy and overthinking of a reasoning model on held-out arithmetic-world problems.

    .venv/bin/python bench/eval_text_default.py --model models/arith-reasoner [--problems 500] [--adapter DIR]
        [--temperature 0.7] [--json out.json]

One answer per problem (seed = its index) at the model's default sampling
settings unless overridden. Reports accuracy, the share of traces containing
redundant thinking patterns (re-verification, recomputation, detours, filler),
mean response tokens, and the mean length of the shortest correct trace of the
same problems (the world's ``shortest_trace``), in the model's own tokens,
and which problems were answered correctly (``correct_by_problem``, "1"/"0"
in order: the first N of 500 problems are the 500-problem run's first N, so
the shipped model's test re-checks a prefix against its card).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def evaluate_model(model: str, n: int, *, adapter: str | None = None, params: dict | None = None,
                   difficulty: str = "medium", split: str = "heldout", problem_seed: int = 0) -> dict:
    from modalities.protocol import GenerationRequest, ModelRef
    from modalities.text import arithmetic as world
    from modalities.text.adapter import TextAdapter

    lm = TextAdapter.load(ModelRef(model, adapter=adapter))
    tok = lm.tokenizer
    problems = world.problems(n, split, seed=problem_seed, difficulty=difficulty)
    correct = redundant = 0
    marks = []  # per problem: "1" correct, "0" not
    tokens = shortest = 0
    t0 = time.time()
    for i, p in enumerate(problems):
        question = p.prompt if lm.has_chat_template else world.format_prompt(p)  # the built-in model has one
        (s,) = lm.generate(GenerationRequest(question, n=1, seeds=(i,), params=params or {}))
        text = s.data.decode()
        v = world.judge(p, text, tok)
        correct += v.correct
        marks.append("1" if v.correct else "0")
        redundant += world.redundancy(text)
        tokens += s.provenance.params["response_tokens"]
        shortest += world.count_tokens("\n" + world.shortest_trace(p), tok) + 1  # + end of sequence
    return {"problems": n, "accuracy": round(correct / n, 4), "redundant_share": round(redundant / n, 4),
            "mean_response_tokens": round(tokens / n, 1), "mean_shortest_tokens": round(shortest / n, 1),
            "length_ratio": round(tokens / max(1, shortest), 2), "seconds": round(time.time() - t0, 1),
            "params": params or "defaults", "adapter": adapter, "difficulty": difficulty, "split": split,
            "settings": lm.default_params() if not params else {**lm.default_params(), **params},
            "correct_by_problem": "".join(marks)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/arith-reasoner")
    ap.add_argument("--adapter")
    ap.add_argument("--problems", type=int, default=500)
    ap.add_argument("--difficulty", default="medium")
    ap.add_argument("--split", default="heldout", choices=["heldout", "train"],
                    help="train: for choosing settings without looking at the held-out problems")
    ap.add_argument("--problem-seed", type=int, default=0, help="which draw of problems (train split)")
    ap.add_argument("--temperature", type=float)
    ap.add_argument("--max-tokens", type=int)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    params = {k: v for k, v in (("temperature", args.temperature), ("max_tokens", args.max_tokens)) if v is not None}
    result = evaluate_model(args.model, args.problems, adapter=args.adapter, params=params,
                            difficulty=args.difficulty, split=args.split, problem_seed=args.problem_seed)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
