"""Can 20 rankings do the work of many? RankDPO on a few user rankings, alone and with rankings a reward
model learned from them labels; and is the adapter personal (does a user with the opposite taste like it)?

    .venv/bin/python bench/reward_rankdpo.py [--rankings 20] [--synthetic 60] [--k 4] [--eval-prompts 100]
        [--owners saturated,large] [--json out.json]

For each owner taste (a simulated user of the shapes world, see bench/taste_benchmark.py):

1. the built-in model makes ``k`` candidates for each of ``--rankings`` train-split prompts and the
   taste ranks each group (the user's rankings);
2. **user only**: RankDPO (the taste benchmark's preset) trains on those rankings;
3. **+ synthetic** (the first owner only): a reward model learns the taste from the same rankings
   (``python -m app reward train``, the model's own features), labels ``--synthetic`` further
   train-split prompts (``reward label``: k fresh candidates each, ranked by the reward model, stored as
   an AI annotator's rankings), and RankDPO trains on the user's and the synthetic rankings together,
   with the same steps;
4. on ``--eval-prompts`` held-out prompts, base and tuned models make one image each from the same seed:
   the owner's blind win rate (ties count half), the opposite taste's win rate of the same adapter
   (personalisation: muted against saturated, small against large), and the judge's adherence.

Every row reports its votes (the user's rankings and the pairs they imply) and its wall time.
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
from bench.taste_benchmark import PRESETS, collect, compare, images, train  # noqa: E402


def cli(data_dir: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "app", "--data-dir", str(data_dir), *args], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def row(name: str, owner: str, opposite: str, eval_prompts, base, run: dict, t_start: float, votes: dict) -> dict:
    from modalities.image.shapes import Judge, evaluate

    tuned = images(run["adapter"], eval_prompts)
    mine = compare(owner, eval_prompts, base, tuned)
    theirs = compare(opposite, eval_prompts, base, tuned)
    base_adh = evaluate(Judge(), list(zip(base, eval_prompts)))["overall"]
    out = {"row": name, "owner": owner, "opposite": opposite, **votes,
           "owner_win_rate": mine["win_rate"], "owner_ci95": mine["ci95"],
           "opposite_win_rate": theirs["win_rate"], "opposite_ci95": theirs["ci95"],
           "adherence": mine["adherence"]["overall"], "base_adherence": base_adh,
           "adherence_drop_points": round(100 * (base_adh - mine["adherence"]["overall"]), 1),
           "train_seconds": run["seconds"], "wall_seconds": round(time.time() - t_start, 1)}
    print(json.dumps(out), file=sys.stderr, flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rankings", type=int, default=20, help="train-split prompts the user ranks")
    ap.add_argument("--synthetic", type=int, default=60, help="further train-split prompts the reward model labels")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--eval-prompts", type=int, default=100)
    ap.add_argument("--owners", default="saturated,large", help="the users whose adapters are tuned")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    from modalities.image.shapes import OPPOSITES
    from storage import Store

    owners = [t for t in args.owners.split(",") if t]
    train_prompts = held_out_prompts(10_000, "train")
    user_prompts = train_prompts[: args.rankings]
    label_prompts = train_prompts[args.rankings: args.rankings + args.synthetic]
    eval_prompts = held_out_prompts(10_000, "held-out")[: args.eval_prompts]
    t0 = time.time()
    base = images(None, eval_prompts)
    result = {"settings": {**vars(args), "rankdpo": PRESETS["rankdpo"]},
              "eval": {"prompts": len(eval_prompts), "base_seconds": round(time.time() - t0, 1)}, "rows": []}
    with tempfile.TemporaryDirectory(prefix="palate-bench-") as tmp:
        for i, owner in enumerate(owners):
            opposite = OPPOSITES[owner]
            data_dir = Path(tmp) / owner
            t_start = time.time()
            with Store.open(data_dir) as store:
                data = collect(store, owner, user_prompts, args.k)
            votes = {"user_rankings": data["prompts"], "user_pairs": data["pairs"], "synthetic_rankings": 0}
            run = train(data_dir, "rankdpo", PRESETS["rankdpo"])
            result["rows"].append(row("user only", owner, opposite, eval_prompts, base, run, t_start, votes))
            if i > 0 or not args.synthetic:
                continue
            t_start = time.time()
            out = cli(data_dir, "reward", "train", "taste", "--json")
            reward = json.loads(out)
            prompts_file = Path(tmp) / "label-prompts.txt"
            prompts_file.write_text("\n".join(label_prompts) + "\n")
            cli(data_dir, "reward", "label", "taste", "--prompts-file", str(prompts_file), "-k", str(args.k),
                "--seed", "20000")
            with Store.open(data_dir) as store:
                pairs = len(store.preference_pairs(modality="image"))
            run = train(data_dir, "rankdpo", PRESETS["rankdpo"])
            votes = {**votes, "synthetic_rankings": len(label_prompts), "all_pairs": pairs,
                     "reward_model_heldout_accuracy": reward["metrics"]["heldout_accuracy"]}
            result["rows"].append(row("user + synthetic", owner, opposite, eval_prompts, base, run, t_start, votes))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
