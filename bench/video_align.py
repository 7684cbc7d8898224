"""VideoAlign in Palate: Flow-DPO vs Flow-RWR vs SFT on one simulated viewer's per-dimension votes, a
VideoReward-style reward model, and Flow-NRG reward guidance -- on the built-in moving-shapes video model.

    .venv/bin/python bench/video_align.py [--taste centred] [--pairs 50] [--steps 60] [--eval-prompts 100]
        [--methods flow-dpo,flow-rwr,sft] [--nrg-dimension overall,motion,text] [--nrg-weights 0,25,50,100]
        [--reward-pairs 200] [--nrg-train-prompts 16] [--nrg-prompts 30] [--nrg-min-noise 0.8] [--json out.json]

1. The user: the built-in model makes 2 clips for each of ``--pairs`` train-split prompts (50 comparisons); the
   user votes on each pair about four dimensions: ``overall`` by their taste (``taste-<name>``), and
   ``visual``, ``motion``, ``text`` as the world's judge sees them (a tie when equal).
2. A VideoReward-style model (``python -m app reward train videoreward --noise-aware``: the video model's own
   features, one head per dimension, Bradley-Terry with ties) learns the votes; its 5-fold held-out accuracy
   per dimension is reported. A second one, ``videoreward-summary`` (``--summary --hidden 0``: a linear head on
   the predicted clean clip's summary only -- its colour statistics, where the shapes are and how they move --
   without the denoiser's pooled block), learns the same votes; whichever predicts the user's held-out overall votes better guides
   the overall dimension in 5 (a choice made on the user's own votes, as a user would make it in the app).
3. Runs, each from the base model with the same LoRA (rank 8), ``--steps`` optimizer steps, on the overall
   votes: ``flow-dpo`` (constant beta), ``flow-rwr`` (reward-weighted flow matching, rewards from the votes)
   and ``sft`` (the preferred clips only: the paper's baseline).
4. On ``--eval-prompts`` held-out prompts, base and tuned models write one clip each from the same seed; per
   dimension the tuned clip wins, ties (half) or loses (overall: the taste; visual, motion, text: the judge),
   and the judge's adherence (its text score) is compared.
5. Flow-NRG: the base model samples the held-out prompts guided by the reward model's ``--nrg-dimension``
   head (or each of several in turn) at each of ``--nrg-weights``; the judge's score of that dimension and of the others is reported per
   weight (the goal: the chosen one rises with the weight, the others stay within 2 points; ``overall`` is
   scored by the taste: minus the track's mean distance from the centre for ``centred``). With
   ``--nrg-train-prompts N`` the same weights are first run on N train-split prompts the user never saw (the
   split to choose weights on; reported apart as ``nrg_train``). With ``--reward-pairs N`` the judge first votes
   on N more train-split pairs and a second reward model, ``videoreward-judge``, guides the judged dimensions.
   ``--nrg-min-noise L`` guides only the steps at noise level L and above (0: every step, as the paper).
   ``--methods ''`` skips 3-4 (Flow-NRG only).
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

SETTINGS = {  # the same budget for each method; beta is each method's own default scale
    "flow-dpo": {"lr": 5e-4, "beta": 2000.0},
    "flow-rwr": {"lr": 5e-4, "beta": 1.0},
    "sft": {"lr": 5e-4, "beta": 1.0},
}
JUDGED = ("visual", "motion", "text")


def cli(data_dir: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "app", "--data-dir", str(data_dir), *args], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def _choice(a: float, b: float) -> str:
    return "tie" if abs(a - b) < 1e-9 else ("a" if a > b else "b")


def collect(store, taste: str | None, prompts: list[str], seed0: int = 10_000) -> dict:
    """Two clips per prompt, four votes per pair (overall by the taste, the judged dimensions by the judge);
    with no taste, the judge's three votes only."""
    from app.generation import generate_candidates
    from modalities.video import moving, mp4

    t0 = time.time()
    votes = 0
    for i, prompt in enumerate(prompts):
        a, b = generate_candidates(store, modality="video", prompt=prompt, n=2, seed=seed0 + 2 * i)
        clips = [mp4.decode(store.media_bytes(g))[0] for g in (a, b)]
        annotator = f"taste:{taste}" if taste else "judge"
        if taste:
            ta, tb = moving.taste(taste, clips)
            store.vote(a.id, b.id, _choice(ta, tb), annotator=annotator, annotator_kind="ai", dimension="overall")
            votes += 1
        ja, jb = (moving.judge(prompt, c) for c in clips)
        for d in JUDGED:
            store.vote(a.id, b.id, _choice(ja[d], jb[d]), annotator=annotator, annotator_kind="ai", dimension=d)
        votes += len(JUDGED)
    return {"pairs": len(prompts), "votes": votes, "seconds": round(time.time() - t0, 1)}


def train(data_dir: Path, method: str, steps: int, batch: int) -> dict:
    s = SETTINGS[method]
    t0 = time.time()
    out = cli(data_dir, "train", "--modality", "video", "--method", method, "--steps", str(steps), "--lr", str(s["lr"]),
              "--beta", str(s["beta"]), "--batch-size", str(batch))
    run_dir = Path(out.split("run ", 1)[1].split(": ", 1)[1].strip().splitlines()[0])
    return {"method": method, "steps": steps, **s, "batch_size": batch, "train_seconds": round(time.time() - t0, 1),
            "adapter": str(run_dir / "adapter")}


def clips(adapter: str | None, prompts: list[str], seed0: int, guide=None) -> list:
    from modalities.protocol import GenerationRequest, ModelRef
    from modalities.video import mp4
    from modalities.video.adapter import VideoAdapter

    model = VideoAdapter.load(ModelRef("moving-shapes-video", adapter=adapter), device="cpu")
    out = []
    for i, p in enumerate(prompts):
        data = model.generate(GenerationRequest(p, n=1, seeds=(seed0 + i,), guide=guide(model) if guide else None))[0].data
        out.append(mp4.decode(data)[0])
    return out


def evaluate(taste: str, prompts: list[str], base: list, run: dict, seed0: int) -> dict:
    import numpy as np

    from modalities.video import moving

    tuned = clips(run["adapter"], prompts, seed0)
    wins = {d: [] for d in ("overall", *JUDGED)}
    text_base, text_tuned = [], []
    for p, b, t in zip(prompts, base, tuned):
        sb, st = moving.taste(taste, [b, t])
        wins["overall"].append(1.0 if st > sb else 0.5 if st == sb else 0.0)
        jb, jt = moving.judge(p, b), moving.judge(p, t)
        for d in JUDGED:
            wins[d].append(1.0 if jt[d] > jb[d] else 0.5 if jt[d] == jb[d] else 0.0)
        text_base.append(jb["text"])
        text_tuned.append(jt["text"])
    out = {**{k: v for k, v in run.items() if k != "adapter"}}
    for d, w in wins.items():
        m = float(np.mean(w))
        half = 1.96 * math.sqrt(max(m * (1 - m), 1e-9) / len(w))
        out[f"win_{d}"] = round(m, 3)
        out[f"win_{d}_ci95"] = [round(max(0.0, m - half), 3), round(min(1.0, m + half), 3)]
    out["adherence"] = round(float(np.mean(text_tuned)), 4)
    out["adherence_change_points"] = round(100 * (float(np.mean(text_tuned)) - float(np.mean(text_base))), 1)
    print(json.dumps(out), file=sys.stderr, flush=True)
    return out


def nrg(data_dir: Path, prompts: list[str], seed0: int, dimension: str, weights: list[float], taste: str,
        reward: str = "videoreward", min_noise: float = 0.0) -> list[dict]:
    """The judge's scores (and the taste's, as ``overall``) of clips the base model samples with the reward
    model's guidance on ``dimension``."""
    import numpy as np

    from alignment.rewards import service
    from alignment.rewards.guidance import RewardGuide
    from modalities.video import moving
    from storage import Store

    rows = []
    with Store.open(data_dir) as store:
        for w in weights:
            t0 = time.time()
            guide = None if w == 0 else (lambda model, w=w: RewardGuide(service.load(store, reward, "video", model),
                                                                         {dimension: w}, min_noise))
            got = clips(None, prompts, seed0, guide)
            scores = [moving.judge(p, c) for p, c in zip(prompts, got)]
            row = {"weight": w, "overall": round(float(np.mean(moving.taste(taste, got))), 4),
                   **{d: round(float(np.mean([s[d] for s in scores])), 4) for d in JUDGED},
                   "seconds": round(time.time() - t0, 1)}
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--taste", default="centred")
    ap.add_argument("--pairs", type=int, default=50)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--methods", default="flow-dpo,flow-rwr,sft")
    ap.add_argument("--eval-prompts", type=int, default=100)
    ap.add_argument("--eval-split", default="test", choices=["test", "train"],
                    help="test: held-out prompts (the report); train: train-split prompts the user did not see")
    ap.add_argument("--nrg-dimension", default="text", help="the guided dimension (comma-separated: each in turn)")
    ap.add_argument("--nrg-weights", default="0,10,20,40")
    ap.add_argument("--nrg-prompts", type=int, default=50)
    ap.add_argument("--nrg-train-prompts", type=int, default=0,
                    help="first run the weights on this many unseen train-split prompts (to choose weights on)")
    ap.add_argument("--reward-pairs", type=int, default=0,
                    help="before Flow-NRG, the judge votes on this many more train-split pairs (visual, motion, text; "
                         "at most 277) and a second reward model, videoreward-judge, learns them and the user's votes; "
                         "the judged dimensions are then guided by it")
    ap.add_argument("--nrg-min-noise", type=float, default=0.0,
                    help="guide only the steps at or above this noise level (0: every step)")
    ap.add_argument("--lr", action="append", default=[], metavar="METHOD=LR", help="override a method's lr")
    ap.add_argument("--beta", action="append", default=[], metavar="METHOD=BETA", help="override a method's beta")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    for key, items in (("lr", args.lr), ("beta", args.beta)):
        for item in items:
            method, _, value = item.partition("=")
            SETTINGS[method][key] = float(value)

    import numpy as np

    from modalities.video import moving
    from storage import Store

    if args.pairs + 300 + args.reward_pairs > 627:
        raise SystemExit("--pairs + --reward-pairs may not exceed 327 (the train split has 627 prompts; 300 are set "
                         "aside for evaluation and guidance)")
    train_prompts = moving.split_prompts("train", args.pairs + 300 + args.reward_pairs, seed=0)
    user_prompts = train_prompts[: args.pairs]
    if args.eval_split == "test":
        eval_prompts, seed0 = moving.split_prompts("test", args.eval_prompts, seed=1), 50_000
    else:
        eval_prompts, seed0 = train_prompts[args.pairs + 100: args.pairs + 100 + args.eval_prompts], 60_000
    methods = [m for m in args.methods.split(",") if m]
    t0 = time.time()
    result = {"settings": {**vars(args), **SETTINGS}, "runs": []}
    if methods:
        base = clips(None, eval_prompts, seed0)
        base_text = float(np.mean([moving.judge(p, c)["text"] for p, c in zip(eval_prompts, base)]))
        result["eval"] = {"prompts": len(eval_prompts), "split": args.eval_split, "base_adherence": round(base_text, 4),
                          "base_seconds": round(time.time() - t0, 1)}
    with tempfile.TemporaryDirectory(prefix="palate-video-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        with Store.open(data_dir) as store:
            result["votes"] = collect(store, args.taste, user_prompts)
        t1 = time.time()
        reward = json.loads(cli(data_dir, "reward", "train", "videoreward", "--modality", "video", "--noise-aware",
                                "--dimensions", "overall,visual,motion,text", "--json"))
        result["reward_model"] = {"heldout_accuracy": reward["metrics"].get("heldout_accuracy"),
                                  "per_dimension": reward["metrics"].get("per_dimension"),
                                  "seconds": round(time.time() - t1, 1)}
        print(json.dumps(result["reward_model"]), file=sys.stderr, flush=True)
        t1 = time.time()
        summary = json.loads(cli(data_dir, "reward", "train", "videoreward-summary", "--modality", "video",
                                 "--noise-aware", "--summary", "--hidden", "0",
                                 "--dimensions", "overall,visual,motion,text", "--json"))
        result["summary_reward_model"] = {"heldout_accuracy": summary["metrics"].get("heldout_accuracy"),
                                          "per_dimension": summary["metrics"].get("per_dimension"),
                                          "seconds": round(time.time() - t1, 1)}
        print(json.dumps(result["summary_reward_model"]), file=sys.stderr, flush=True)
        def overall_of(m: dict) -> float:
            return (m["per_dimension"].get("overall") or {}).get("heldout_accuracy") or 0.0

        better = overall_of(result["summary_reward_model"]) > overall_of(result["reward_model"])
        user_reward = "videoreward-summary" if better else "videoreward"
        result["overall_guided_by"] = user_reward
        for method in methods:
            run = train(data_dir, method, args.steps, args.batch_size)
            result["runs"].append(evaluate(args.taste, eval_prompts, base, run, seed0))
        judge_reward = {}
        if args.reward_pairs:  # a VideoReward trained at scale for guidance, as the paper's is: the judge's votes
            extra = train_prompts[args.pairs + 300: args.pairs + 300 + args.reward_pairs]
            with Store.open(data_dir) as store:
                result["judge_votes"] = collect(store, None, extra, seed0=20_000)
            t2 = time.time()
            trained = json.loads(cli(data_dir, "reward", "train", "videoreward-judge", "--modality", "video",
                                     "--noise-aware", "--dimensions", ",".join(JUDGED), "--json"))
            result["judge_reward_model"] = {"heldout_accuracy": trained["metrics"].get("heldout_accuracy"),
                                            "per_dimension": trained["metrics"].get("per_dimension"),
                                            "seconds": round(time.time() - t2, 1)}
            print(json.dumps(result["judge_reward_model"]), file=sys.stderr, flush=True)
            judge_reward = {d: "videoreward-judge" for d in JUDGED}
        judge_reward["overall"] = user_reward
        weights = [float(w) for w in args.nrg_weights.split(",") if w]
        dimensions = [d for d in args.nrg_dimension.split(",") if d]
        if weights and args.nrg_train_prompts:
            chosen_from = train_prompts[args.pairs + 200: args.pairs + 200 + args.nrg_train_prompts]
            result["nrg_train"] = [{"dimension": d, "prompts": len(chosen_from),
                                    "reward": judge_reward.get(d, "videoreward"),
                                    "rows": nrg(data_dir, chosen_from, 70_000, d, weights, args.taste,
                                                judge_reward.get(d, "videoreward"), args.nrg_min_noise)}
                                   for d in dimensions]
        if weights and args.nrg_prompts:
            result["nrg"] = [{"dimension": d, "prompts": args.nrg_prompts, "reward": judge_reward.get(d, "videoreward"),
                              "rows": nrg(data_dir, eval_prompts[: args.nrg_prompts], seed0, d, weights, args.taste,
                                          judge_reward.get(d, "videoreward"), args.nrg_min_noise)}
                             for d in dimensions]
    result["wall_seconds"] = round(time.time() - t0, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
