"""MusicRL in Palate: RL from sequence-level rewards against DPO, on one simulated listener's votes.

    .venv/bin/python bench/music_rl.py [--taste legato] [--rankings 50] [--k 4] [--steps 40]
        [--eval-prompts 100] [--eval-split held-out] [--lr METHOD=LR] [--beta METHOD=BETA] [--json out.json]

1. The user: the built-in melody model makes ``k`` clips for each of ``--rankings`` train-split prompts and
   the taste (``taste-<name>`` of the music modality) ranks them -- the user's whole budget of votes.
2. A reward model of the user (``python -m app reward train taste``: a head on the melody model's own
   features) learns those rankings; its 5-fold held-out accuracy is reported.
3. Runs, each from the base model with the same LoRA (rank 8) and ``--steps`` optimizer steps:
   - ``dpo`` on the votes (all pairs of each ranking);
   - ``dpo-self``: DPO on reward-ranked self-samples (the model samples ``k`` clips per prompt as it trains,
     the user's reward model picks the best and the worst);
   - ``musicrl`` with MusicRL's three recipes: R = the prompt-adherence judge (``melody-judge``), U = the
     user's reward model, RU = both (``melody-judge+taste``: the mean of their standardised scores), and
     ``musicrl-R-then-U``, the paper's RU: U trained on top of the R run's adapter (``--init-adapter``; its
     KL is then to the R model; reported wall time is both stages).
   The online runs sample for the prompts the user ranked.
4. On ``--eval-prompts`` prompts of ``--eval-split`` (held-out for the report; ``train``: train-split
   prompts the user did not rank, for choosing settings), base and tuned models write one clip each from
   the same seed; the taste judges blind (ties half), the judge scores adherence, and the KL to the base is
   estimated on the tuned model's clips, mean over clips of log p_tuned(y) - log p_base(y) (nats per clip).
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = {  # chosen on the train split before the held-out evaluation (--eval-split train; README)
    "dpo": {"lr": 3e-3, "beta": 0.1, "batch_size": 8},
    "dpo-self": {"lr": 3e-3, "beta": 0.1, "batch_size": 4},
    "musicrl": {"lr": 5e-3, "beta": 0.1, "batch_size": 4},
}


def cli(data_dir: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "app", "--data-dir", str(data_dir), *args], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def collect(store, taste: str, prompts: list[str], k: int) -> dict:
    """k clips per prompt from the built-in model, ranked by the taste (equal scores tie)."""
    from app.generation import generate_candidates
    from modalities.music import rewards

    fn = getattr(rewards, taste)
    t0 = time.time()
    for i, prompt in enumerate(prompts):
        gens = generate_candidates(store, modality="music", prompt=prompt, n=k, seed=10_000 + k * i)
        scores = fn(prompt, [store.media_bytes(g) for g in gens])
        ranking: list[list[int]] = []
        last = None
        for s, gid in sorted(zip(scores, (g.id for g in gens)), reverse=True):
            if last is not None and s == last:
                ranking[-1].append(gid)
            else:
                ranking.append([gid])
            last = s
        store.rank(ranking, annotator=f"taste:{taste}", annotator_kind="ai")
    return {"rankings": len(prompts), "clips": len(prompts) * k, "pairs": len(store.preference_pairs(modality="music")),
            "seconds": round(time.time() - t0, 1)}


def train(data_dir: Path, method: str, steps: int, k: int, reward: str | None, init: str | None = None) -> dict:
    s = SETTINGS[method]
    args = ["train", "--modality", "music", "--method", method, "--steps", str(steps), "--lr", str(s["lr"]),
            "--beta", str(s["beta"]), "--batch-size", str(s["batch_size"])]
    if init:
        args += ["--init-adapter", init]
    if reward:
        args += ["--reward-model", reward, "--option", f"samples={k}"]
    t0 = time.time()
    out = cli(data_dir, *args)
    seconds = time.time() - t0
    run_dir = Path(out.split("run ", 1)[1].split(": ", 1)[1].strip().splitlines()[0])
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    clips = int(sum(m.get("samples", 0) for m in metrics))
    return {"method": method, "reward": reward, "steps": steps, **s, "train_seconds": round(seconds, 1),
            "sampled_clips": clips, "adapter": str(run_dir / "adapter")}


def clips(adapter: str | None, prompts: list[str], seed0: int) -> tuple[list[bytes], object]:
    from modalities.music.adapter import MusicAdapter
    from modalities.protocol import GenerationRequest, ModelRef

    lm = MusicAdapter.load(ModelRef("melody-lm", adapter=adapter), device="cpu")
    out = [lm.generate(GenerationRequest(p, n=1, seeds=(seed0 + i,)))[0].data for i, p in enumerate(prompts)]
    return out, lm


def evaluate(taste: str, prompts: list[str], base: list[bytes], base_lm, run: dict, seed0: int) -> dict:
    import numpy as np
    import torch

    from modalities.music import rewards
    from modalities.protocol import Group

    tuned, lm = clips(run["adapter"], prompts, seed0)
    fn = getattr(rewards, taste)
    wins = []
    adh_base, adh_tuned, kl = [], [], []
    for p, b, t in zip(prompts, base, tuned):
        sb, st = fn(p, [b, t])
        wins.append(1.0 if st > sb else 0.5 if st == sb else 0.0)
        ab, at = rewards.adherence(p, [b, t])
        adh_base.append(ab)
        adh_tuned.append(at)
        with torch.no_grad():
            g = [Group(p, (t, t))]
            lt = lm.score(lm.trainable_module(), lm.encode(g), None)[0, 0].item()
            lb = base_lm.score(base_lm.trainable_module(), base_lm.encode(g), None)[0, 0].item()
        kl.append(lt - lb)
    w = float(np.mean(wins))
    half = 1.96 * math.sqrt(max(w * (1 - w), 1e-9) / len(wins))
    out = {**{k: v for k, v in run.items() if k != "adapter"}, "win_rate": round(w, 3),
           "ci95": [round(max(0.0, w - half), 3), round(min(1.0, w + half), 3)],
           "adherence": round(float(np.mean(adh_tuned)), 4),
           "adherence_change_points": round(100 * (float(np.mean(adh_tuned)) - float(np.mean(adh_base))), 1),
           "kl_to_base_nats": round(float(np.mean(kl)), 3)}
    print(json.dumps(out), file=sys.stderr, flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--taste", default="bright")
    ap.add_argument("--rankings", type=int, default=50)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--methods", default="dpo,dpo-self,musicrl-R,musicrl-U,musicrl-RU,musicrl-R-then-U",
                    help="also musicrl-oracle: MusicRL with the taste itself as reward (a perfect reward model)")
    ap.add_argument("--run", action="append", default=[], metavar="NAME=METHOD:REWARD",
                    help="another run: a method with a reward (e.g. dpo-self-mix=dpo-self:2*taste+melody-judge; "
                         "'taste' is the listener's learned reward model); add NAME to --methods")
    ap.add_argument("--lr", action="append", default=[], metavar="METHOD=LR", help="override a method's lr")
    ap.add_argument("--beta", action="append", default=[], metavar="METHOD=BETA", help="override a method's beta")
    ap.add_argument("--eval-prompts", type=int, default=100)
    ap.add_argument("--eval-split", default="held-out", choices=["held-out", "train"])
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    for key, items in (("lr", args.lr), ("beta", args.beta)):
        for item in items:
            method, _, value = item.partition("=")
            SETTINGS[method][key] = float(value)

    import numpy as np

    from modalities.music import melody as world, rewards
    from storage import Store

    train_prompts = world.split_prompts("train", args.rankings + 400, seed=0)
    user_prompts = train_prompts[: args.rankings]
    if args.eval_split == "held-out":
        eval_prompts, seed0 = world.split_prompts("test", args.eval_prompts, seed=1), 50_000
    else:
        eval_prompts, seed0 = train_prompts[args.rankings + 200: args.rankings + 200 + args.eval_prompts], 60_000
    t0 = time.time()
    base, base_lm = clips(None, eval_prompts, seed0)
    base_adherence = float(np.mean([rewards.adherence(p, [c])[0] for p, c in zip(eval_prompts, base)]))
    result = {"settings": {**vars(args), **{k: v for k, v in SETTINGS.items()}},
              "eval": {"prompts": len(eval_prompts), "split": args.eval_split, "base_adherence": round(base_adherence, 4),
                       "base_seconds": round(time.time() - t0, 1)}, "runs": []}
    recipes = {"musicrl-R": "melody-judge", "musicrl-U": "taste", "musicrl-RU": "melody-judge+taste",
               "musicrl-oracle": f"taste-{args.taste}"}
    methods_of: dict[str, str] = {}
    for item in args.run:
        name, _, rest = item.partition("=")
        method, _, reward_name = rest.partition(":")
        if not (name and method in SETTINGS and reward_name):
            raise SystemExit(f"--run {item!r}: use NAME=METHOD:REWARD with METHOD one of {', '.join(SETTINGS)}")
        recipes[name], methods_of[name] = reward_name, method
    with tempfile.TemporaryDirectory(prefix="palate-musicrl-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        with Store.open(data_dir) as store:
            result["votes"] = collect(store, args.taste, user_prompts, args.k)
        reward = json.loads(cli(data_dir, "reward", "train", "taste", "--modality", "music", "--json"))
        result["reward_model_heldout_accuracy"] = reward["metrics"]["heldout_accuracy"]
        print(json.dumps({"votes": result["votes"], "reward_acc": result["reward_model_heldout_accuracy"]}),
              file=sys.stderr, flush=True)
        trained: dict[str, dict] = {}
        for name in [m for m in args.methods.split(",") if m]:
            method = methods_of.get(name) or ("musicrl" if name.startswith("musicrl") else name)
            if name == "musicrl-R-then-U":  # the R run (reused when it ran above), then U on top of it
                first = trained.get("musicrl-R") or train(data_dir, method, args.steps, args.k, recipes["musicrl-R"])
                run = train(data_dir, method, args.steps, args.k, "taste", init=first["adapter"])
                run.update(reward="melody-judge, then taste", steps=2 * args.steps,
                           train_seconds=round(first["train_seconds"] + run["train_seconds"], 1),
                           sampled_clips=first["sampled_clips"] + run["sampled_clips"])
            else:
                reward_name = recipes.get(name) or ("taste" if name == "dpo-self" else None)
                run = train(data_dir, method, args.steps, args.k, reward_name)
            run["recipe"] = name
            trained[name] = run
            result["runs"].append(evaluate(args.taste, eval_prompts, base, base_lm, run, seed0))
    result["wall_seconds"] = round(time.time() - t0, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
