"""The built-in melody model on held-out melody-world prompts: what the judge hears, and how fast.

    .venv/bin/python bench/eval_music_default.py --model melody-lm [--prompts 200] [--adapter DIR]
        [--json models/melody-lm/eval.json]

One clip per held-out prompt (seed = its index) at the model's default sampling settings. Reports, per
attribute the prompts state, the share of clips the judge hears it in (key = tonic and mode; tempo =
within 10% of the tempo word's bpm; instrument, register, contour), the mean adherence, the same figures
for the world's own melodies rendered for those prompts (the judge's ceiling), and the wall time of 4
clips of one prompt (the app's default batch), median of 5 batches, on this machine's threads.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def evaluate(model: str, n: int, *, adapter: str | None = None, seed: int = 0) -> dict:
    import numpy as np

    from modalities.music import judge, melody as world, wav
    from modalities.music.adapter import MusicAdapter
    from modalities.protocol import GenerationRequest, ModelRef

    lm = MusicAdapter.load(ModelRef(model, adapter=adapter), device="cpu")
    prompts = world.split_prompts("test", n, seed=seed)
    hits: dict[str, list[bool]] = {}
    truth: dict[str, list[bool]] = {}
    adherence, truth_adherence, seconds, empty = [], [], [], 0
    rng = random.Random(seed)
    t0 = time.time()
    for i, prompt in enumerate(prompts):
        spec = world.parse_prompt(prompt)
        (clip,) = lm.generate(GenerationRequest(prompt, n=1, seeds=(i,)))
        audio, rate = wav.decode(clip.data, allow_silent=True)
        a = judge.analyze(audio, rate)
        for k, v in judge.checks(spec, a).items():
            hits.setdefault(k, []).append(v)
        adherence.append(judge.adherence(prompt, a))
        m = world.parse_words(wav.read_tokens(clip.data)["text"], strict=False)
        empty += not m.notes
        seconds.append(m.seconds)
        ref = judge.analyze(world.render(world.sample_melody(spec, rng)), world.RATE)
        for k, v in judge.checks(spec, ref).items():
            truth.setdefault(k, []).append(v)
        truth_adherence.append(judge.adherence(prompt, ref))
    eval_s = time.time() - t0
    batches = []
    for j in range(5):
        t = time.time()
        lm.generate(GenerationRequest(prompts[j], n=4, seeds=(100 + 4 * j, 101 + 4 * j, 102 + 4 * j, 103 + 4 * j)))
        batches.append(time.time() - t)
    import torch

    return {
        "model": model, "adapter": adapter, "prompts": n, "split": "test", "seed": seed,
        "heard": {k: round(float(np.mean(v)), 3) for k, v in sorted(hits.items())},
        "stated": {k: len(v) for k, v in sorted(hits.items())},
        "adherence": round(float(np.mean(adherence)), 3),
        "world_melodies_heard": {k: round(float(np.mean(v)), 3) for k, v in sorted(truth.items())},
        "world_melodies_adherence": round(float(np.mean(truth_adherence)), 3),
        "clip_seconds_mean": round(float(np.mean(seconds)), 2), "empty_clips": empty,
        "four_clips_seconds_median": round(statistics.median(batches), 3),
        "four_clips_seconds": [round(b, 3) for b in batches],
        "torch_threads": torch.get_num_threads(), "eval_minutes": round(eval_s / 60, 2),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="melody-lm")
    p.add_argument("--adapter", default=None)
    p.add_argument("--prompts", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the figures here")
    args = p.parse_args(argv)
    out = evaluate(args.model, args.prompts, adapter=args.adapter, seed=args.seed)
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
