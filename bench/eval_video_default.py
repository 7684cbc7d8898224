"""Judge scores of the built-in video model on held-out prompts, and its speed.

    .venv/bin/python bench/eval_video_default.py [--model moving-shapes-video] [--prompts 200] [--json out.json]

Generates one clip per held-out prompt of the moving-shapes world (never trained on; seed = its index,
default settings: 8 frames of 32x32, 20 steps, guidance 4) and reports the judge's accuracy per attribute
(shape, colour, count, direction, speed, background) and its per-dimension scores (visual, motion, text);
the same for the world's own renders (smooth, centred), as the ceiling. Speed: the wall time of one call
that generates 4 clips, the best of 3 (after one warm-up call).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def score(prompts: list[str], clips: list) -> dict:
    import numpy as np

    from modalities.video import moving

    heard = {a: [] for a in moving.ATTRIBUTES}
    dims = {d: [] for d in moving.DIMENSIONS}
    for p, c in zip(prompts, clips):
        spec, analysis = moving.parse_prompt(p), moving.analyse(c)
        for a, ok in moving.attributes_heard(spec, analysis).items():
            heard[a].append(ok)
        for d, v in moving.judge(p, c).items():
            dims[d].append(v)
    return {"attributes": {a: round(float(np.mean(v)), 3) for a, v in heard.items()},
            "dimensions": {d: round(float(np.mean(v)), 3) for d, v in dims.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="moving-shapes-video")
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--split", default="test", choices=["test", "train"])
    ap.add_argument("--steps", type=int)
    ap.add_argument("--guidance", type=float)
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    import torch

    from modalities.protocol import GenerationRequest, ModelRef
    from modalities.video import moving, mp4
    from modalities.video.adapter import VideoAdapter

    prompts = moving.split_prompts(args.split, args.prompts, seed=1234)
    params = {k: v for k, v in (("steps", args.steps), ("guidance", args.guidance)) if v is not None}
    adapter = VideoAdapter.load(ModelRef(args.model), device="cpu")
    t0 = time.time()
    clips = [mp4.decode(adapter.generate(GenerationRequest(p, n=1, seeds=(i,), params=params))[0].data)[0]
             for i, p in enumerate(prompts)]
    gen_seconds = time.time() - t0
    renders = [moving.render(moving.parse_prompt(p), seed=i)[0] for i, p in enumerate(prompts)]
    adapter.generate(GenerationRequest(prompts[0], n=4, seeds=(0, 1, 2, 3), params=params))  # warm-up
    times = []
    for _ in range(3):
        t = time.time()
        adapter.generate(GenerationRequest(prompts[0], n=4, seeds=(0, 1, 2, 3), params=params))
        times.append(time.time() - t)
    result = {"split": args.split, "prompts": len(prompts), "settings": params or "defaults",
              "torch_threads": torch.get_num_threads(), "model": score(prompts, clips),
              "renders": score(prompts, renders), "seconds_per_clip": round(gen_seconds / len(prompts), 3),
              "four_clips_seconds": round(min(times), 2)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
