"""Scores and a short training run on the built-in models, printed to full precision.

A refactor of the modality or training code must leave these bit-identical: run it before and after
and compare the two files (``--compare A B`` does). Everything is seeded and on the CPU.

    python bench/score_fingerprint.py --out before.json
    python bench/score_fingerprint.py --out after.json --compare before.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

IMAGE_PROMPTS = ["two small red circles on a blue background", "a large green square on a white background"]
TEXT_PROMPTS = ["Tom has 3 apples and buys 4 more. How many apples does he have?",
                "A box holds 12 pens; 5 are taken out. How many are left?"]


def _scores(modality: str, prompts: list[str], params: dict) -> dict:
    from modalities import registry
    from modalities.protocol import GenerationRequest, Group, ModelRef

    torch.manual_seed(0)
    cls = registry.get(modality)
    model = {"image": "shapes-diffusion", "text": "arith-reasoner"}[modality]
    adapter = cls.load(ModelRef(model), device="cpu")
    groups, media = [], []
    for p in prompts:
        samples = adapter.generate(GenerationRequest(p, n=2, seeds=(0, 1), params=params))
        media.append([hashlib.sha256(s.data).hexdigest()[:16] for s in samples])
        groups.append(Group(p, tuple(s.data for s in samples)))
    batch = adapter.encode(groups)
    with torch.no_grad():
        s = adapter.score(adapter.trainable_module(), batch, torch.Generator("cpu").manual_seed(0))
    return {"media_heads": media, "scores": [[float(x) for x in row] for row in s.tolist()]}


def _train(modality: str, method: str, prompts: list[str], params: dict) -> list[dict]:
    from alignment.config import TrainConfig
    from alignment.train import train
    from app.generation import generate_candidates
    from storage import Store

    model = {"image": "shapes-diffusion", "text": "arith-reasoner"}[modality]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        with Store.open(data) as store:
            for p in prompts:
                g = generate_candidates(store, modality=modality, prompt=p, n=3, model=model, seed=0, params=params)
                store.rank([g[2].id, g[0].id, g[1].id])
        run_dir = Path(tmp) / "run"
        TrainConfig(modality=modality, method=method, model=model, data_dir=str(data), steps=3, batch_size=2,
                    lr=1e-3, seed=0, validation_count=0, device="cpu").save(run_dir)
        assert train(run_dir) == 0
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("seconds", "lr")} for r in rows]


def fingerprint() -> dict:
    torch.set_num_threads(1)
    image_params = {"steps": 4}
    text_params = {"max_tokens": 48}
    return {
        "image": _scores("image", IMAGE_PROMPTS, image_params),
        "text": _scores("text", TEXT_PROMPTS, text_params),
        "image_train": _train("image", "diffusion-dpo", IMAGE_PROMPTS, image_params),
        "text_train": _train("text", "simpo", TEXT_PROMPTS, text_params),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--compare", type=Path, help="an earlier output: exit 1 unless identical")
    args = ap.parse_args()
    result = fingerprint()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result)[:2000])
    if args.compare:
        before = json.loads(args.compare.read_text())
        same = before == result
        print("identical to", args.compare if same else f"DIFFERENT from {args.compare}")
        sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
