"""Judge scores of the built-in image model on held-out prompts.

    .venv/bin/python bench/eval_image_default.py [--model shapes-diffusion] [--prompts 200] [--json out.json]

Generates one image per held-out prompt (seed = its index, default settings)
and reports the judge's per-attribute accuracy; the same for the world's own
renders, as the ceiling. The prompts are the held-out split of the shapes
world (never seen in training), shuffled with a fixed seed.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def held_out_prompts(n: int, split: str = "held-out") -> list[str]:
    """``n`` prompts of a split, in a fixed shuffled order (held-out: never trained on;
    train: for choosing settings without peeking at the held-out set)."""
    from modalities.image.shapes import split_prompts

    train, held = split_prompts()
    chosen = sorted(held if split == "held-out" else train)
    random.Random(1234).shuffle(chosen)
    return chosen[:n]


def generate_images(model: str, prompts: list[str], params: dict | None = None) -> tuple[list, float]:
    """One image per prompt, seed = the prompt's index, default settings."""
    import io

    from PIL import Image

    from modalities.image.adapter import ImageAdapter
    from modalities.protocol import GenerationRequest, ModelRef

    adapter = ImageAdapter.load(ModelRef(model))
    pairs = []
    t0 = time.time()
    for i, prompt in enumerate(prompts):
        (s,) = adapter.generate(GenerationRequest(prompt, n=1, seeds=(i,), params=params or {}))
        pairs.append((Image.open(io.BytesIO(s.data)), prompt))
    return pairs, time.time() - t0


def evaluate_renders(prompts: list[str]) -> dict:
    from modalities.image.shapes import Judge, evaluate, parse_prompt, render

    return evaluate(Judge(), [(render(parse_prompt(p), seed=i), p) for i, p in enumerate(prompts)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shapes-diffusion")
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--smoke", type=int, default=24, help="size of the small fixed set the tests re-check")
    ap.add_argument("--split", default="held-out", choices=["held-out", "train"])
    ap.add_argument("--guidance", type=float, help="override the default guidance (to choose it)")
    ap.add_argument("--steps", type=int, help="override the default steps (to choose them)")
    args = ap.parse_args(argv)
    from modalities.image.shapes import Judge, evaluate

    prompts = held_out_prompts(args.prompts, args.split)
    params = {k: v for k, v in (("guidance", args.guidance), ("steps", args.steps)) if v is not None}
    pairs, seconds = generate_images(args.model, prompts, params)
    judge = Judge()
    result = {
        "split": args.split,
        "prompts": len(prompts),
        "settings": params or "defaults",
        "model": {**evaluate(judge, pairs), "seconds": round(seconds, 1)},
        "renders": evaluate_renders(prompts),
        "smoke": {"prompts": prompts[: args.smoke], "scores": evaluate(judge, pairs[: args.smoke])},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
