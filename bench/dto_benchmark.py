"""Thinking-dynamics optimization on the built-in reasoning model: before and after.

    .venv/bin/python bench/dto_benchmark.py [--model arith-reasoner] [--problems 64] [--eval-problems 500]
        [--losses simpo,dpo,simpo-nll,irepo,dto-rounds] [--round-problems 64,64]
        [--round-lora-targets q_proj,...,down_proj] [--json bench/results/dto_benchmark.json]

1. The base model answers ``--eval-problems`` held-out arithmetic-world
   problems at its default sampling settings (one answer each, seed = index):
   accuracy and mean response tokens (bench/eval_text_default.py).
2. One DTO round (alignment.dto.dto_round) on ``--problems`` train-split
   problems: ``--samples`` answers each, Monte-Carlo prefix correctness with
   ``--mc-samples`` completions per cut point, concise-correct traces, pairs
   stored as votes in a fresh data directory.
3. Each loss trains a LoRA adapter on those same pairs through the CLI
   (``python -m app train --modality text --method LOSS``, the command a user
   runs); iREPO additionally gets five noisy simulated annotators' votes on
   every pair (its soft labels), cast after the other losses have trained.
4. Each adapter answers the same held-out problems with the same seeds.
5. "dto-rounds": ``python -m app train --modality text --method dto --problems N0,N1,...`` (SimPO +
   NLL; one round per count), one command in a folder of its own: round 0 builds the same pairs as
   step 2 when N0 equals --problems, each later round builds pairs from the next Nk problems of the same
   stream answered by the last round's adapter and continues training it (the trainer sees every
   round's votes); every round's adapter answers the held-out problems.

Reports accuracy, mean tokens, their change against the base model, and the
wall time of every phase. Figures, not assertions: the README quotes them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from eval_text_default import evaluate_model  # noqa: E402

# Chosen on 100 train-split problems (eval_text_default.py --split train --problem-seed 1), never on the
# held-out ones; see the README for the sweep. Stronger settings shorten more and lose accuracy.
# "simpo-nll": SimPO plus RPO's NLL term on the chosen (concise) trace, weight 10 (--nll 10).
# "dto-rounds": the same SimPO + NLL settings in rounds (problems per round: ROUND_PROBLEMS), each on
# fresh answers of the last adapter, run as one command from scratch (`python -m app train --method dto
# --problems 64,64,...`), with LoRA on the MLP as well as on attention (--lora-targets). The MLP targets
# and the number of rounds were chosen by accuracy on 800 held-out problems of other draws
# (eval_text_default.py --split heldout --problem-seed 1 --problems 300, and --problem-seed 2 --problems
# 500); see the README.
TRAIN_DEFAULTS = {"simpo": {"lr": 1e-4, "beta": 2.0}, "dpo": {"lr": 3e-4, "beta": 0.5},
                  "irepo": {"lr": 3e-4, "beta": 0.5},
                  "simpo-nll": {"method": "simpo", "lr": 3e-4, "beta": 2.0, "nll": 10.0},
                  "dto-rounds": {"method": "simpo", "lr": 3e-4, "beta": 2.0, "nll": 10.0}}
ROUND_LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
ROUND_PROBLEMS = "64,64"


def _train(loss: str, args: argparse.Namespace, data_dir: Path) -> tuple[str, float]:
    """Train one adapter through the CLI; (adapter folder, seconds)."""
    from storage import Store

    hp = TRAIN_DEFAULTS[loss]
    method = hp.get("method", loss)
    cmd = [sys.executable, "-m", "app", "--data-dir", str(data_dir), "train", "--modality", "text", "--method", method,
           "--model", args.model, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
           "--lr", str(args.lr or hp["lr"]), "--beta", str(hp["beta"]), "--lora-rank", str(args.lora_rank),
           "--seed", "0"]
    if hp.get("nll"):
        cmd += ["--nll", str(hp["nll"])]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{loss} training failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    with Store.open(data_dir) as store:
        run = store.list_runs()[-1]
        metrics = run.last_metrics
    print(f"  {loss}: trained {args.steps} steps in {seconds:.0f} s; last metrics {metrics}", flush=True)
    return str(Path(run.run_dir) / "adapter"), seconds


def _dto_rounds(args: argparse.Namespace, data_dir: Path, base: dict) -> dict:
    """`python -m app train --modality text --method dto --problems N0,N1,...` in a data folder of its own (it draws
    its own round-0 pairs, the same as the shared ones: same problems and seeds); every round's adapter
    answers the held-out problems."""
    from storage import Store

    hp = TRAIN_DEFAULTS["dto-rounds"]
    cmd = [sys.executable, "-m", "app", "--data-dir", str(data_dir), "train", "--modality", "text", "--method", "dto",
           "--dto-loss", hp["method"], "--problems", args.round_problems,
           "--samples", str(args.samples), "--mc-samples", str(args.mc_samples), "--model", args.model,
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr or hp["lr"]),
           "--beta", str(hp["beta"]), "--nll", str(hp["nll"]), "--lora-rank", str(args.lora_rank), "--seed", "0",
           "--lora-targets", args.round_lora_targets]
    print("  " + " ".join(cmd[1:]), flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"dto-rounds failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    rounds_log = [line for line in proc.stdout.splitlines() if line.startswith("DTO round")]
    with Store.open(data_dir) as store:
        runs = store.list_runs()
    out: dict = {"command_seconds": round(seconds, 1), "rounds_log": rounds_log, "by_round": []}
    for k, run in enumerate(runs):
        ev = evaluate_model(args.model, args.eval_problems, adapter=str(Path(run.run_dir) / "adapter"))
        ev["accuracy_change_points"] = round(100 * (ev["accuracy"] - base["accuracy"]), 1)
        ev["tokens_change_percent"] = round(100 * (ev["mean_response_tokens"] / base["mean_response_tokens"] - 1), 1)
        out["by_round"].append(ev)
        print(f"  dto-rounds, after round {k}: accuracy {ev['accuracy']}, tokens {ev['mean_response_tokens']}",
              flush=True)
    out.update({k: v for k, v in out["by_round"][-1].items()})
    out["train_seconds"] = out["command_seconds"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="arith-reasoner")
    ap.add_argument("--problems", type=int, default=64, help="train-split problems for the DTO round")
    ap.add_argument("--samples", type=int, default=4, help="answers per problem")
    ap.add_argument("--mc-samples", type=int, default=4, help="completions per cut point")
    ap.add_argument("--eval-problems", type=int, default=500)
    ap.add_argument("--losses", default="simpo,dpo,simpo-nll,irepo,dto-rounds")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, help="learning rate for every loss (default: per loss, TRAIN_DEFAULTS)")
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--round-problems", default=ROUND_PROBLEMS,
                    help="train problems per round of the dto-rounds row, comma-separated (one round each)")
    ap.add_argument("--round-lora-targets", default=ROUND_LORA_TARGETS,
                    help="modules LoRA wraps in the dto-rounds row (the one-round rows use the model's default: "
                    "attention); q_proj,k_proj,v_proj,o_proj gives the earlier attention-only recipe")
    ap.add_argument("--data-dir", help="keep the pairs and runs here (default: a temporary folder)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    losses = [x for x in args.losses.split(",") if x]
    unknown = set(losses) - set(TRAIN_DEFAULTS)
    if unknown:
        ap.error(f"unknown loss(es) {sorted(unknown)}; choose from {sorted(TRAIN_DEFAULTS)}")

    import torch

    from alignment.dto import dto_round, noisy_annotator_votes
    from modalities.protocol import ModelRef
    from modalities.text import arithmetic as world
    from modalities.text.adapter import TextAdapter
    from storage import Store

    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="dto-bench-"))
    t_all = time.time()
    result: dict = {"model": args.model, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                    "settings": {k: v for k, v in vars(args).items() if k not in ("json", "data_dir")}}

    print(f"base model on {args.eval_problems} held-out problems ...", flush=True)
    base = evaluate_model(args.model, args.eval_problems)
    result["base"] = base
    print(f"  base: {json.dumps(base)}", flush=True)

    result["tuned"] = {}
    if "dto-rounds" in losses:  # from scratch, in a store of its own (data_dir/rounds)
        print(f"DTO in rounds of {args.round_problems} problems (one command) ...", flush=True)
        result["tuned"]["dto-rounds"] = _dto_rounds(args, data_dir / "rounds", base)
        losses = [x for x in losses if x != "dto-rounds"]
        if not losses:
            return _finish(result, args, data_dir, t_all)

    print(f"DTO round on {args.problems} train problems x {args.samples} samples ...", flush=True)
    t0 = time.time()
    lm = TextAdapter.load(ModelRef(args.model))
    problems = world.problems(args.problems, "train", seed=0)
    prompt_fn = (lambda p: p.prompt) if lm.has_chat_template else world.format_prompt
    with Store.open(data_dir) as store:
        rnd = dto_round(lm, problems, n_samples=args.samples, mc_samples=args.mc_samples, store=store,
                        prompt_fn=prompt_fn, seed=0, context="dto-round-0")
    stats = {k: v for k, v in rnd.stats.items()}
    stats["seconds"] = round(time.time() - t0, 1)
    result["dto_round"] = stats
    print(f"  {json.dumps(stats)}", flush=True)
    del lm
    if not rnd.pairs:
        raise SystemExit("no pairs: the model solved none of the problems")

    for loss in losses:
        if loss == "irepo":
            with Store.open(data_dir) as store:
                result["irepo_annotators"] = noisy_annotator_votes(store, rnd.stored, annotators=5, seed=0,
                                                                   context="dto-round-0")
        adapter, seconds = _train(loss, args, data_dir)
        ev = evaluate_model(args.model, args.eval_problems, adapter=adapter)
        ev["train_seconds"] = round(seconds, 1)
        ev["accuracy_change_points"] = round(100 * (ev["accuracy"] - base["accuracy"]), 1)
        ev["tokens_change_percent"] = round(100 * (ev["mean_response_tokens"] / base["mean_response_tokens"] - 1), 1)
        result["tuned"][loss] = ev
        print(f"  {loss}: {json.dumps(ev)}", flush=True)
    return _finish(result, args, data_dir, t_all)


def _finish(result: dict, args: argparse.Namespace, data_dir: Path, t_all: float) -> int:
    result["total_minutes"] = round((time.time() - t_all) / 60, 1)
    result["data_dir"] = str(data_dir) if args.data_dir else None
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
