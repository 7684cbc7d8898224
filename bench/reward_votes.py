"""How many votes does a learned reward model need to predict a user's taste?

    .venv/bin/python bench/reward_votes.py [--tastes saturated,large,clean,centered] [--votes 10,20,50,100]
        [--orders fixed,active] [--train-prompts 40] [--eval-prompts 30] [--k 4] [--json out.json]

A simulated user (a shapes-world taste) plays the user. The built-in model generates ``k`` candidates
for each of ``--train-prompts`` prompts of the *train* split; the user votes on pairs of them (a tie when
the taste sees no clear difference), in one of two orders: ``fixed`` (one random pair per prompt, round
after round) or ``active`` (the first 10 votes as in the fixed order, then each next pair is the one the
reward model trained on the votes so far is least sure of -- closest scores -- among the pairs not yet
asked, refitting every 5 votes, as the app's *Ask the least sure pair next* does).
After the first 10, 20, 50, 100 votes a reward model (the model's own features at noise level 0.5 and a
head trained with Bradley-Terry with ties, exactly as ``python -m app reward train``) is fitted, and its
pair accuracy is measured on *held-out* prompts and seeds: every pair of the ``k`` candidates of each of
``--eval-prompts`` held-out prompts on which the taste has a clear preference. Reported per taste and
vote count and order: accuracy, the held-out pairs, the votes and the wall time.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tastes", default="saturated,large,clean,centered")
    ap.add_argument("--votes", default="10,20,50,100")
    ap.add_argument("--orders", default="fixed,active")
    ap.add_argument("--train-prompts", type=int, default=40)
    ap.add_argument("--eval-prompts", type=int, default=30)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch
    from PIL import Image

    from alignment.rewards.learned import HeadConfig, fit_head, pair_accuracy
    from modalities.image import shapes
    from modalities.image.adapter import ImageAdapter
    from modalities.protocol import GenerationRequest, ModelRef

    t_start = time.time()
    adapter = ImageAdapter.load(ModelRef("shapes-diffusion"), device="cpu")
    train_prompts, heldout = shapes.split_prompts()
    rng = random.Random(args.seed)
    train_prompts = rng.sample(train_prompts, args.train_prompts)
    eval_prompts = rng.sample(heldout, args.eval_prompts)

    def candidates(prompts, seed0):
        out = []
        for i, p in enumerate(prompts):
            seeds = tuple(seed0 + i * args.k + j for j in range(args.k))
            out.append((p, [s.data for s in adapter.generate(GenerationRequest(p, n=args.k, seeds=seeds))]))
        return out

    t0 = time.time()
    train = candidates(train_prompts, 10_000)
    evals = candidates(eval_prompts, 900_000)
    gen_s = time.time() - t0

    def feats_of(groups):
        return adapter.reward_features([p for p, ms in groups for _ in ms], [m for _, ms in groups for m in ms],
                                       noise_level=0.5)

    t0 = time.time()
    f_train, f_eval = feats_of(train), feats_of(evals)
    feat_s = time.time() - t0
    img = lambda b: Image.open(io.BytesIO(b)).convert("RGB")  # noqa: E731
    results = []
    for taste_name in args.tastes.split(","):
        taste = shapes.TASTES[taste_name]
        s_train = [[taste.score(img(m)) / taste.scale for m in ms] for _, ms in train]
        s_eval = [[taste.score(img(m)) / taste.scale for m in ms] for _, ms in evals]
        pool = [(gi * args.k + i, gi * args.k + j, s_train[gi][i] - s_train[gi][j])
                for gi in range(len(train)) for i in range(args.k) for j in range(i + 1, args.k)]
        vote_of = lambda d: 0.5 if abs(d) < 1.0 else float(d > 0)  # noqa: E731
        # the fixed order: one random pair per prompt, round after round
        order_rng = random.Random(args.seed + 1)
        fixed = []
        while len(fixed) < max(int(v) for v in args.votes.split(",")):
            for gi in order_rng.sample(range(len(train)), len(train)):
                i, j = order_rng.sample(range(args.k), 2)
                fixed.append((gi * args.k + i, gi * args.k + j, s_train[gi][i] - s_train[gi][j]))
        ea, eb, ep = [], [], []
        for gi, scores in enumerate(s_eval):
            for i in range(args.k):
                for j in range(i + 1, args.k):
                    if abs(scores[i] - scores[j]) >= 1.0:  # a clear preference of the taste
                        ea.append(gi * args.k + i)
                        eb.append(gi * args.k + j)
                        ep.append(float(scores[i] > scores[j]))
        ea, eb, ep = torch.tensor(ea), torch.tensor(eb), torch.tensor(ep)
        counts = [int(v) for v in args.votes.split(",")]
        for order in args.orders.split(","):
            t_order = time.time()
            if order == "fixed":
                asked = fixed[: max(counts)]
            elif order == "active":
                asked = list(fixed[:10])
                seen = {(x, y) for x, y, _ in asked} | {(y, x) for x, y, _ in asked}
                head = None
                while len(asked) < max(counts):
                    if head is None or len(asked) % 5 == 0:
                        head = fit_head(f_train, torch.tensor([x for x, _, _ in asked]),
                                        torch.tensor([y for _, y, _ in asked]),
                                        torch.tensor([vote_of(d) for _, _, d in asked]), HeadConfig())
                        with torch.no_grad():
                            r = head(f_train)[:, 0]
                    x, y, d = min((c for c in pool if (c[0], c[1]) not in seen),
                                  key=lambda c: abs(float(r[c[0]] - r[c[1]])))
                    asked.append((x, y, d))
                    seen |= {(x, y), (y, x)}
            else:
                raise SystemExit(f"unknown order {order!r}: fixed or active")
            select_s = time.time() - t_order
            for n in counts:
                t0 = time.time()
                votes = asked[:n]
                head = fit_head(f_train, torch.tensor([x for x, _, _ in votes]), torch.tensor([y for _, y, _ in votes]),
                                torch.tensor([vote_of(d) for _, _, d in votes]), HeadConfig())
                right, total = pair_accuracy(head, f_eval, ea, eb, ep)
                row = {"taste": taste_name, "order": order, "votes": n,
                       "ties_in_votes": sum(vote_of(d) == 0.5 for _, _, d in votes), "heldout_pairs": total,
                       "accuracy": right / total if total else None, "fit_s": round(time.time() - t0, 2),
                       "selection_s": round(select_s, 2) if order == "active" else 0.0}
                results.append(row)
                print(json.dumps(row), flush=True)
    out = {"args": {k: str(v) for k, v in vars(args).items()}, "generate_s": round(gen_s, 1),
           "features_s": round(feat_s, 1), "total_s": round(time.time() - t_start, 1), "rows": results}
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
