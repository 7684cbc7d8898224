"""``python -m app reward ...``: list, train and use reward models (see :mod:`alignment.rewards`)."""
from __future__ import annotations

import argparse
import sys

from .commands import _open, _print_json, _table


def _modality_of(store, gen_ids) -> tuple[str, str]:
    gens = store.get_generations(gen_ids)
    pairs = {(g.modality, g.model) for g in gens}
    if len(pairs) > 1:
        raise ValueError(f"score candidates of one modality and model at a time; got {sorted(pairs)}")
    return next(iter(pairs))


def cmd_reward_list(args: argparse.Namespace) -> int:
    from alignment.rewards import service
    from modalities import registry

    mods = [args.modality] if args.modality else registry.with_spec()
    with _open(args) as store:
        rows = [{"modality": m, **r} for m in mods for r in service.offered(store, m)]
    if args.json:
        _print_json(rows)
    else:
        print(_table([(r["modality"], r["name"], r["kind"], ",".join(r["dimensions"]), r["about"]) for r in rows],
                     ("modality", "name", "kind", "dimensions", "about")))
    return 0


def cmd_reward_train(args: argparse.Namespace) -> int:
    """A reward model's training as a run (the same the app queues): its directory and record are
    written here, then ``python -m alignment.rewards.run RUN_DIR`` trains it in the foreground."""
    import subprocess

    from app.runs import create_reward_run, record_trainer_exit, train_command

    settings = {"modality": args.modality, "model": args.model, "name": args.name, "folds": args.folds,
                "noise_level": args.noise_level, "noise_aware": args.noise_aware, "summary": args.summary, "hidden": args.hidden, "epochs": args.epochs, "seed": args.seed,
                "dimensions": _dimensions(args.dimensions), "backbone": args.backbone, "device": args.device}
    with _open(args) as store:
        run, run_dir = create_reward_run(store, settings)
    print(f"run {run.id}: {run_dir}", file=sys.stderr, flush=True)
    proc = subprocess.Popen(train_command(run_dir), stdout=2)  # progress on stderr; stdout is the result
    while True:
        try:
            code = proc.wait()
            break
        except KeyboardInterrupt:  # the trainer got the same Ctrl-C: it stops between steps
            continue
    with _open(args) as store:
        if code != 0:
            note = record_trainer_exit(store, run.id, code)
            run = store.get_run(run.id)
            why = note or run.error or f"exit status {code}"
            print(f"error: run {run.id} {run.status}: {why} (resume: python -m alignment.rewards.run {run_dir})",
                  file=sys.stderr)
            return 130 if code == 130 else 1
        run = store.get_run(run.id)
        label = run.last_metrics["reward_model"]
        name, _, version = label.partition("@v")
        record = store.get_reward_model(name, int(version))
    metrics = record.metrics
    if args.json:
        _print_json({"name": record.name, "version": record.version, "path": record.path, "run_id": run.id,
                     "metrics": metrics})
    else:
        acc = metrics["heldout_accuracy"]
        print(f"reward model {record.label}: {metrics['votes']} votes on {metrics['candidates']} candidates "
              f"({metrics['ties']} ties); held-out pair accuracy "
              + ("n/a" if acc is None else f"{acc:.1%}") + f" ({metrics['folds']}-fold, {metrics['heldout_votes']} "
              f"decided votes); on its training votes {metrics['train_accuracy']:.1%}; file {record.path}")
        if len(record.dimensions) > 1:
            print("per dimension: " + per_dimension_text(metrics))
    return 0


def _dimensions(text: str | None) -> list[str] | None:
    return [d.strip() for d in text.split(",") if d.strip()] if text else None


def per_dimension_text(metrics: dict) -> str:
    """``overall 80% of 20 held-out votes, style n/a of 3, ...`` from a reward model's metrics."""
    parts = []
    for d, m in metrics.get("per_dimension", {}).items():
        acc = m["heldout_accuracy"]
        parts.append(f"{d} {'n/a' if acc is None else f'{acc:.0%}'} of {m['heldout_votes']} held-out votes")
    return ", ".join(parts)


def cmd_reward_score(args: argparse.Namespace) -> int:
    from alignment.rewards import service
    from app.generation import get_adapter

    with _open(args) as store:
        modality, model = _modality_of(store, args.generation_ids)
        gens = store.get_generations(args.generation_ids)
        needs_model = service.needs_model(store, args.reward, modality)
        adapter, lock = get_adapter(store, modality, model, device=args.device) if needs_model else (None, None)
        reward = service.load(store, args.reward, modality, adapter, how=args.how)
        by_prompt: dict[str, list] = {}
        for g in gens:
            by_prompt.setdefault(g.prompt, []).append(g)
        rows = []
        for prompt, group in by_prompt.items():
            media = [store.media_bytes(g) for g in group]
            if lock is not None:
                with lock:
                    scores = reward.score(prompt, media)
            else:
                scores = reward.score(prompt, media)
            for i, g in enumerate(group):
                rows.append({"generation": g.id, **{d: float(v[i]) for d, v in scores.items()}})
    if args.json:
        _print_json(rows)
    else:
        dims = list(reward.dimensions)
        print(_table([(r["generation"], *(f"{r[d]:.4f}" for d in dims)) for r in rows], ("generation", *dims)))
    return 0


def cmd_reward_label(args: argparse.Namespace) -> int:
    from alignment.rewards import service
    from app.generation import default_model, generate_candidates, get_adapter

    model = args.model or default_model(args.modality)
    with _open(args) as store:
        if args.prompts_file:
            prompts = [line for line in open(args.prompts_file, encoding="utf-8").read().splitlines() if line.strip()]
        else:
            prompts = store.judged_prompts(args.modality, model)
        prompts = prompts[: args.limit] if args.limit else prompts
        prompts = service.prompts_with_variations(args.modality, prompts, args.variations, args.seed)
        adapter, lock = get_adapter(store, args.modality, model, device=args.device)
        reward = service.load(store, args.reward, args.modality, adapter, how=args.how)
        counter = iter(range(10**9))

        def generate(prompt: str):
            return generate_candidates(store, modality=args.modality, prompt=prompt, n=args.k, model=model,
                                       seed=args.seed + next(counter) * args.k, device=args.device)

        out = service.label(store, reward, generate, prompts, lock=lock, soft=args.soft,
                            progress=lambda m: print(m, file=sys.stderr, flush=True))
    if args.json:
        _print_json(out)
    elif args.soft:
        print(f"{len(out['judgments'])} soft pairwise votes on {out['candidates']} new candidates "
              f"({out['prompts']} prompts x {args.k}) stored by {out['annotator']} (context {out['context']}): "
              f"their strength is the reward model's preference probability, iREPO's soft labels. "
              f"`--contexts collect` leaves them out of training.")
    else:
        print(f"{len(out['judgments'])} rankings of {args.k} candidates stored by {out['annotator']} "
              f"(context {out['context']}; {out['candidates']} new candidates). Train on them as on yours; "
              f"`--contexts collect` leaves them out.")
    return 0


def cmd_reward_export(args: argparse.Namespace) -> int:
    from alignment.rewards import service

    with _open(args) as store:
        out = service.export(store, args.name, args.out)
    if args.json:
        _print_json({"path": str(out)})
    else:
        print(f"wrote {out} (safetensors: the head's weights; its metadata names the base model, backbone, "
              "dimensions, data hash and accuracy)")
    return 0


def add_parser(sub, add) -> None:
    """The ``reward`` command group (``add`` is cli's helper that adds a subcommand)."""
    from modalities import registry

    mods = registry.with_spec()
    rw = sub.add_parser("reward", help="reward models: list, train on your votes, score candidates",
                        description="Reward models: the programmatic ones modalities offer, and ones learned from "
                                    "your votes (Bradley-Terry with ties over the generator's own features).")
    rw_sub = rw.add_subparsers(dest="reward_command", metavar="SUBCOMMAND", required=True)
    p = add("list", cmd_reward_list, "list the reward models of each modality (programmatic and learned)",
            parent=rw_sub)
    p.add_argument("--modality", choices=registry.with_spec())

    p = add("train", cmd_reward_train, "train a reward model (its next version) on the votes of a model's candidates",
            parent=rw_sub)
    p.add_argument("name", metavar="NAME", help="the reward model's name (each training adds a version: NAME@v2)")
    p.add_argument("--modality", default=mods[0], choices=mods, help=f"default: {mods[0]}")
    p.add_argument("--model", help="whose candidates' votes, and whose features (default: the modality's built-in)")
    p.add_argument("--folds", type=int, default=5, help="k of the k-fold held-out accuracy (default 5)")
    p.add_argument("--noise-level", type=float, help="denoiser features at this noise level, 0 clean .. <1 "
                   "(default 0.5; models without a denoiser read clean candidates)")
    p.add_argument("--noise-aware", action="store_true", help="learn every vote at several noise levels, so the model "
                   "scores the noisy samples of a denoising trajectory (SPO's step-aware preference model)")
    p.add_argument("--summary", action="store_true", help="read only a summary of the (predicted) clean sample (its "
                   "per-channel statistics; for video also where the content is and how it moves), not the denoiser's "
                   "pooled block: far fewer numbers, which a few dozen votes learn better (compare the held-out accuracy)")
    p.add_argument("--dimensions", metavar="D1,D2", help="the dimensions to learn, one head each (default: every "
                   "dimension you have votes about)")
    p.add_argument("--backbone", metavar="ENCODER", help="read a pretrained encoder's features instead of the model's "
                   "own: a CLIP or PickScore, SigLIP (images) or CLAP (audio) hub id or local folder")
    p.add_argument("--hidden", type=int, default=64, help="hidden units of the head (0: linear)")
    p.add_argument("--epochs", type=int, default=300, help="full-batch steps of the head (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu or cuda (default: cuda when there is one)")

    p = add("label", cmd_reward_label, "synthetic labels: generate K candidates per prompt and store the reward "
            "model's ranking of them as an AI annotator's judgment", parent=rw_sub)
    p.add_argument("reward", metavar="REWARD", help="a name from `reward list` (or an ensemble A+B)")
    p.add_argument("--modality", default=mods[0], choices=mods, help=f"default: {mods[0]}")
    p.add_argument("--model", help="the model that generates (default: the modality's built-in); a learned reward "
                   "model must have been trained on this model's candidates")
    p.add_argument("--prompts-file", metavar="FILE", help="one prompt per line (default: the prompts you judged)")
    p.add_argument("--limit", type=int, help="label at most this many prompts")
    p.add_argument("--variations", type=int, default=0, metavar="N", help="also label N variations of each prompt "
                   "(new prompts like it, e.g. one attribute changed; the modality makes them)")
    p.add_argument("-k", type=int, default=4, help="candidates per prompt (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first candidate (each next one +1)")
    p.add_argument("--how", default="mean", choices=["mean", "win-share"], help="how an ensemble combines")
    p.add_argument("--soft", action="store_true", help="instead of a ranking, a soft pairwise vote on every pair: "
                   "the reward model's preference probability (an ensemble's: the share of its members that agree), "
                   "for iREPO")
    p.add_argument("--device", help="cpu or cuda")

    p = add("export", cmd_reward_export, "copy a learned reward model's safetensors file out of the data directory",
            parent=rw_sub)
    p.add_argument("name", metavar="NAME", help="NAME (its latest version) or NAME@vN")
    p.add_argument("out", metavar="OUT", help="a .safetensors file, or a folder")

    p = add("score", cmd_reward_score, "score stored candidates with a reward model (or an ensemble A+B)",
            parent=rw_sub)
    p.add_argument("reward", metavar="REWARD", help="a name from `reward list`: built-in, learned (NAME or NAME@vN), "
                   "or several joined by +")
    p.add_argument("generation_ids", type=int, nargs="+", metavar="GENERATION_ID")
    p.add_argument("--how", default="mean", choices=["mean", "win-share"], help="how an ensemble combines")
    p.add_argument("--device", help="cpu or cuda")
