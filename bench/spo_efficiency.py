"""Does step-aware credit need less compute? SPO against Diffusion-DPO (and MaPO) on the same 20 user
rankings, as curves of the owner's blind win rate against compute.

    .venv/bin/python bench/spo_efficiency.py [--owners centered,saturated] [--rankings 20] [--k 4]
        [--dpo-steps 10,25,50,100] [--spo-steps 5,10,20,40] [--spo-lr 5e-4] [--eval-prompts 100]
        [--eval-split held-out] [--oracle] [--json out.json]

For each owner taste of the shapes world (``centered`` is about layout, which the first denoising steps
settle; ``saturated`` about colour):

1. the built-in model makes ``k`` candidates for each of ``--rankings`` train-split prompts and the
   taste ranks them (the user's votes: the same budget for every method);
2. a reward model learns the taste from those rankings (``python -m app reward train --noise-aware``: the
   model's own features at five noise levels; its 5-fold held-out accuracy is reported) -- SPO's
   step-aware preference model, scoring each candidate's noisy latent (``--no-noise-aware``: a model of
   clean samples, scoring the clean image the denoiser predicts from each candidate);
3. Diffusion-DPO trains on the rankings' pairs for each of ``--dpo-steps`` (separate runs: with a
   constant learning rate a shorter run is the start of a longer one), MaPO once at its preset, and SPO
   (``--method spo``, one prompt per step: the user's 20 prompts) for each of ``--spo-steps``; with
   ``--oracle`` SPO also runs with the taste itself as its reward (what a perfect reward model would give);
4. on ``--eval-prompts`` prompts of ``--eval-split`` (held-out for the report; train for choosing
   settings), base and tuned models draw one image each from the same seed; the owner judges blind
   (ties half) and the judge scores adherence.

Compute per run, from its metrics: denoiser forward passes (sampling, the reward model's features,
policy and reference; one guided row counts two) and backward passes, as forward-equivalents (a backward pass costs about two forwards),
and training wall time on this machine.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.eval_image_default import held_out_prompts  # noqa: E402
from bench.taste_benchmark import PRESETS, collect, compare, images  # noqa: E402

SPO = {"lr": 5e-4, "beta": 10.0, "batch_size": 1}


def cli(data_dir: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "app", "--data-dir", str(data_dir), *args], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def compute_of(method: str, metrics: list[dict], batch: int) -> dict:
    """Denoiser passes of a run, from its metrics."""
    if method == "spo":
        fwd = sum(m.get("sample_forwards", 0) + m.get("reward_forwards", 0) + m.get("train_forwards", 0)
                  for m in metrics)
        bwd = sum(m.get("train_backwards", 0) for m in metrics)
    else:  # a pair's two samples: the policy's and the reference's forward, and the policy's backward
        rows = 2 * batch * len(metrics)
        fwd, bwd = (2 if method != "mapo" else 1) * rows, rows
    return {"forwards": int(fwd), "backwards": int(bwd), "forward_equivalents": int(fwd + 2 * bwd)}


def train(data_dir: Path, method: str, steps: int, settings: dict, extra: list[str] = ()) -> dict:
    args = ["train", "--method", method, "--steps", str(steps), "--lr", str(settings["lr"]), "--beta",
            str(settings["beta"]), "--batch-size", str(settings.get("batch_size", 8)), *extra]
    t0 = time.time()
    out = cli(data_dir, *args)
    seconds = time.time() - t0
    run_dir = Path(out.split("run ", 1)[1].split(": ", 1)[1].strip().splitlines()[0])
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    info = {"method": method, "steps": steps, "train_seconds": round(seconds, 1), "adapter": str(run_dir / "adapter"),
            **compute_of(method, metrics, settings.get("batch_size", 8))}
    if method == "spo":
        info["pairs"] = int(sum(m.get("pairs", 0) for m in metrics))
        info["kept_share"] = round(sum(m.get("pairs", 0) for m in metrics) / max(1, sum(m.get("pools", 0) for m in metrics)), 3)
    return info


def evaluate(owner: str, prompts: list[str], base: list, run: dict, base_adherence: float) -> dict:
    tuned = images(run["adapter"], prompts)
    mine = compare(owner, prompts, base, tuned)
    out = {**{k: v for k, v in run.items() if k != "adapter"}, "win_rate": mine["win_rate"], "ci95": mine["ci95"],
           "adherence": mine["adherence"]["overall"],
           "adherence_change_points": round(100 * (mine["adherence"]["overall"] - base_adherence), 1)}
    print(json.dumps({"owner": owner, **out}), file=sys.stderr, flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--owners", default="centered,saturated")
    ap.add_argument("--rankings", type=int, default=20)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--dpo-steps", default="10,25,50,100")
    ap.add_argument("--mapo", action=argparse.BooleanOptionalAction, default=True, help="MaPO at its preset too")
    ap.add_argument("--spo-steps", default="5,10,20,40")
    ap.add_argument("--spo-lr", type=float, default=SPO["lr"])
    ap.add_argument("--spo-options", default="", help="extra --option KEY=VALUE for SPO, comma-separated")
    ap.add_argument("--oracle", action="store_true", help="SPO with the taste itself as reward too")
    ap.add_argument("--noise-aware", action=argparse.BooleanOptionalAction, default=True,
                    help="the learned reward model is noise-aware (SPO scores noisy latents); else it scores the "
                         "predicted clean image")
    ap.add_argument("--eval-prompts", type=int, default=100)
    ap.add_argument("--eval-split", default="held-out", choices=["held-out", "train"])
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    from modalities.image.shapes import Judge, evaluate as judge_eval
    from storage import Store

    train_prompts = held_out_prompts(10_000, "train")
    user_prompts = train_prompts[: args.rankings]
    if args.eval_split == "held-out":
        eval_prompts = held_out_prompts(10_000, "held-out")[: args.eval_prompts]
    else:  # for choosing settings: train-split prompts the user did not rank
        eval_prompts = train_prompts[args.rankings + 200: args.rankings + 200 + args.eval_prompts]
    t0 = time.time()
    base = images(None, eval_prompts)
    base_adherence = judge_eval(Judge(), list(zip(base, eval_prompts)))["overall"]
    spo = {**SPO, "lr": args.spo_lr}
    spo_extra = [x for opt in args.spo_options.split(",") if opt.strip() for x in ("--option", opt.strip())]
    result = {"settings": {**vars(args), "diffusion-dpo": PRESETS["diffusion-dpo"], "mapo": PRESETS["mapo"], "spo": spo},
              "eval": {"prompts": len(eval_prompts), "split": args.eval_split, "base_adherence": base_adherence,
                       "base_seconds": round(time.time() - t0, 1)}, "owners": {}}
    with tempfile.TemporaryDirectory(prefix="palate-spo-bench-") as tmp:
        for owner in [o for o in args.owners.split(",") if o]:
            data_dir = Path(tmp) / owner
            with Store.open(data_dir) as store:
                data = collect(store, owner, user_prompts, args.k)
            reward = json.loads(cli(data_dir, "reward", "train", "taste", "--json",
                                    *(["--noise-aware"] if args.noise_aware else [])))
            rows = {"votes": {"rankings": data["prompts"], "pairs": data["pairs"]},
                    "reward_model_heldout_accuracy": reward["metrics"]["heldout_accuracy"], "runs": []}
            for steps in [int(s) for s in args.dpo_steps.split(",") if s]:
                run = train(data_dir, "diffusion-dpo", steps, PRESETS["diffusion-dpo"])
                rows["runs"].append(evaluate(owner, eval_prompts, base, run, base_adherence))
            if args.mapo:
                run = train(data_dir, "mapo", PRESETS["mapo"]["steps"], PRESETS["mapo"])
                rows["runs"].append(evaluate(owner, eval_prompts, base, run, base_adherence))
            rewards = [("taste", "learned")] + ([(f"taste-{owner}", "oracle")] if args.oracle else [])
            for name, kind in rewards:
                for steps in [int(s) for s in args.spo_steps.split(",") if s]:
                    run = train(data_dir, "spo", steps, spo, ["--reward-model", name, *spo_extra])
                    run["reward"] = kind
                    rows["runs"].append(evaluate(owner, eval_prompts, base, run, base_adherence))
            result["owners"][owner] = rows
    result["wall_seconds"] = round(time.time() - t0, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
