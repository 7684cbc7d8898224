"""How long the built-in image model takes to make 4 candidates at default settings.

    .venv/bin/python bench/image_speed.py [--model shapes-diffusion] [--repeats 5]

Reports load time and the median and best of several runs (after one warm-up).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    import torch

    from modalities.image.adapter import ImageAdapter
    from modalities.protocol import GenerationRequest, ModelRef

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shapes-diffusion")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("-n", type=int, default=4)
    args = ap.parse_args(argv)
    t0 = time.time()
    adapter = ImageAdapter.load(ModelRef(args.model))
    load_s = time.time() - t0
    prompt = "two small red circles on a blue background"
    adapter.generate(GenerationRequest(prompt, n=args.n, seeds=tuple(range(args.n))))  # warm-up
    times = []
    for r in range(args.repeats):
        t = time.time()
        adapter.generate(GenerationRequest(prompt, n=args.n, seeds=tuple(range(r * 10, r * 10 + args.n))))
        times.append(time.time() - t)
    print(json.dumps({
        "model": args.model, "candidates": args.n, "settings": adapter.default_params(), "torch_threads": torch.get_num_threads(),
        "load_seconds": round(load_s, 2), "median_seconds": round(statistics.median(times), 2),
        "best_seconds": round(min(times), 2),
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
