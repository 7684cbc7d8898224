"""``python -m app``: the command line over the same services the UI uses.

Every command takes ``--data-dir`` (or the PALATE_DATA_DIR environment
variable; default: the per-user data directory) and ``--help``. Errors are
printed as one readable line on stderr with exit status 2; nothing is written
when a command fails.
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

from storage import ENV_VAR, MODALITIES, Store, StoreError
from storage.derive import DERIVATIONS

UI_NOTE = (
    "`python -m app` with no command (or `python -m app ui`) starts the web app on http://127.0.0.1:7860;\n"
    "--host, --port, --auth USER:PASSWORD / --token TOKEN and --share set where it serves (`python -m app ui --help`)."
)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _open(args: argparse.Namespace) -> Store:
    return Store.open(args.data_dir)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False, default=str))


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(h) for h in header]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _parse_param(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ValueError(f"--param takes KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


MAX_ID = 2**63 - 1  # SQLite's INTEGER


def _id(text: str) -> int:
    """An argparse type for a row id: a whole number SQLite can hold (a huge one is a clear error, not
    an OverflowError from deep inside)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an id (a whole number)") from None
    if not 1 <= value <= MAX_ID:
        raise argparse.ArgumentTypeError(f"{text} is not an id: ids are whole numbers from 1 to {MAX_ID}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is out of range: use 1 to 65535 (default 7860)")
    return value


def _parse_rank_token(token: str) -> list[int]:
    try:
        return [_id(t) for t in token.split("=")]
    except (ValueError, argparse.ArgumentTypeError):
        raise ValueError(f"ranking entries are generation ids, or ids joined by '=' for a tie; got {token!r}") from None


# ---------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------


def cmd_ui(args: argparse.Namespace) -> int:
    """Start the web app (Gradio) on the data directory."""
    import os

    from storage import resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir)
    # Gradio reads its temp folder when it is imported: keep uploads and copies in the data directory
    os.environ.setdefault("GRADIO_TEMP_DIR", str(Path(data_dir) / "cache" / "gradio"))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from app.ui import launch

    opts = {k: getattr(args, k, v) for k, v in UI_DEFAULTS.items()}
    launch(data_dir=str(data_dir), host=opts["host"], port=opts["port"], auth=opts["auth"], token=opts["token"],
           share=opts["share"], preload=not opts["no_preload"])
    return 0


def cmd_db_check(args: argparse.Namespace) -> int:
    from storage.integrity import check_store

    with _open(args) as store:
        report = check_store(store, repair=args.repair, verify_hashes=not args.no_hash)
    if args.json:
        _print_json({**asdict(report), "ok": report.ok})
        return 0 if report.ok else 1
    print(f"database: {report.database} (schema version {report.schema_version})")
    if not report.problems:
        print("ok: no problems found")
        return 0
    for p in report.problems:
        mark = "repaired" if p.repaired else p.severity
        print(f"[{mark}] {p.check}: {p.message}")
    for r in report.repairs:
        print(f"repair: {r}")
    open_errors = sum(1 for p in report.problems if p.severity == "error" and not p.repaired)
    open_warnings = sum(1 for p in report.problems if p.severity == "warning" and not p.repaired)
    print(f"{open_errors} error(s), {open_warnings} warning(s) left" + ("" if args.repair else "; try --repair"))
    return 0 if report.ok else 1


def cmd_db_info(args: argparse.Namespace) -> int:
    with _open(args) as store:
        counts = {
            t: store.query(f"SELECT COUNT(*) AS n FROM {t}")[0]["n"]
            for t in ("prompts", "generations", "judgments", "annotators", "media", "runs", "adapters", "imports")
        }
        info = {
            "data_dir": str(store.data_dir),
            "database": str(store.path),
            "schema_version": store.schema_version(),
            "migrations": store.applied_migrations(),
            "counts": counts,
        }
    if args.json:
        _print_json(info)
    else:
        print(f"data dir:       {info['data_dir']}")
        print(f"database:       {info['database']}")
        print(f"schema version: {info['schema_version']} ({', '.join(info['migrations'])})")
        for k, v in counts.items():
            print(f"{k + ':':15} {v}")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    params = dict(_parse_param(p) for p in args.param)
    if args.negative_prompt:
        params["negative_prompt"] = args.negative_prompt
    seeds = list(args.seed or [])
    if seeds and len(seeds) != len(args.files):
        raise ValueError(f"give one --seed per file ({len(args.files)} files, {len(seeds)} seeds) or none")
    paths = [Path(f) for f in args.files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"media file(s) {', '.join(missing)} do not exist; nothing was added")
    with _open(args) as store:
        with store.write():  # all files or none
            out = [
                store.add_generation(
                    prompt=args.prompt, modality=args.modality, model=args.model, model_revision=args.revision,
                    media=p, seed=seeds[i] if seeds else None, params=params,
                )
                for i, p in enumerate(paths)
            ]
    if args.json:
        _print_json([{"id": g.id, "path": g.media_path, "sha256": g.media_sha256} for g in out])
    else:
        for g in out:
            print(f"generation {g.id}: {g.media_path}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from app.generation import generate_candidates

    image = (("steps", args.steps), ("guidance", args.guidance), ("width", args.width), ("height", args.height),
             ("scheduler", args.scheduler))
    text = (("temperature", args.temperature), ("top_p", args.top_p), ("max_tokens", args.max_tokens))
    mine, other = (image, text) if args.modality == "image" else (text, image)
    wrong = [k for k, v in other if v is not None]
    if wrong:
        raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in wrong)} do not apply to {args.modality} "
                         f"models")
    params = {k: v for k, v in mine if v is not None}
    with _open(args) as store:
        gens = generate_candidates(
            store, modality=args.modality, prompt=args.prompt, n=args.n, model=args.model, seed=args.seed,
            negative_prompt=args.negative_prompt, params=params, device=args.device, lora=args.adapter,
        )
        data_dir = store.data_dir
    if args.json:
        _print_json([{"id": g.id, "seed": g.seed, "path": str(data_dir / g.media_path), "model": g.model,
                      "params": g.params} for g in gens])
    else:
        for g in gens:
            print(f"generation {g.id} (seed {g.seed}): {data_dir / g.media_path}")
    return 0


def _problem_counts(value: str) -> list[int]:
    """`--problems 64` (every round) or `--problems 64,64,256` (one count per round)."""
    try:
        counts = [int(x) for x in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or comma-separated numbers, got {value!r}") from None
    return counts


def _dto_schedule(args: argparse.Namespace) -> list[int]:
    """Problems per round from --problems and --rounds (a list of counts sets the rounds itself)."""
    counts = args.problems
    if len(counts) > 1:
        if args.rounds is not None and args.rounds != len(counts):
            raise ValueError(f"--problems gives {len(counts)} per-round counts but --rounds is {args.rounds}")
        return counts
    return counts * (1 if args.rounds is None else args.rounds)


def _dto_pairs(args: argparse.Namespace, model: str, init_adapter: str | None, round_no: int,
               schedule: list[int]) -> int:
    """One round of thinking-dynamics optimization: the model answers arithmetic-world problems,
    concise-but-correct versions of its traces are built, and the pairs are stored as votes."""
    from alignment.dto import dto_round, noisy_annotator_votes
    from modalities.protocol import ModelRef
    from modalities.text import arithmetic
    from modalities.text.adapter import TextAdapter

    lm = TextAdapter.load(ModelRef(model, adapter=init_adapter), device=args.device)
    # round k answers the next schedule[k] problems of one seeded stream: fresh ones every round
    start, end = sum(schedule[:round_no]), sum(schedule[:round_no + 1])
    problems = arithmetic.problems(end, "train", seed=args.seed_problems)[start:]
    prompt_fn = (lambda p: p.prompt) if lm.has_chat_template else arithmetic.format_prompt
    with _open(args) as store:
        params = {"max_tokens": args.max_tokens} if args.max_tokens else None
        result = dto_round(lm, problems, n_samples=args.samples, mc_samples=args.mc_samples, store=store, params=params,
                           seed=round_no, prompt_fn=prompt_fn, context=f"dto-round-{round_no}",
                           with_rollouts=args.rollout_pairs)
        if args.dto_loss == "irepo" and result.stored:
            noisy_annotator_votes(store, result.stored, annotators=5, seed=round_no, context=f"dto-round-{round_no}")
    st = result.stats
    print(f"DTO round {round_no}: {st.get('correct')} of {st.get('traces')} traces correct, "
          f"{len(result.pairs)} pairs ({st.get('pairs_by_kind', {})})", flush=True)
    return len(result.pairs)


def cmd_train(args: argparse.Namespace) -> int:
    """Build a run from the store, write its config, and run `python -m alignment.train RUN_DIR`."""
    import subprocess

    if args.method == "dto":
        if args.modality != "text":
            raise ValueError("--method dto is for reasoning models: use --modality text")
        for name in ("rounds", "samples", "mc_samples"):
            if getattr(args, name) is not None and getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
        if min(args.problems) < 1:
            raise ValueError(f"--problems must be at least 1 per round, got {','.join(map(str, args.problems))}")
        schedule = _dto_schedule(args)
        model = args.model
        if not model:
            from app.generation import default_model

            model = default_model("text")
        init = args.init_adapter
        code = 0
        for round_no in range(len(schedule)):
            if _dto_pairs(args, model, init, round_no, schedule) == 0:
                raise ValueError("thinking-dynamics optimization found no pair to learn from (no correct trace "
                                 "among the samples); use a model that solves some of the problems, or more --samples")
            sub = argparse.Namespace(**{**vars(args), "method": args.dto_loss, "model": model, "init_adapter": init,
                                        "rounds": 1})
            code = cmd_train(sub)
            if code != 0:
                return code
            with _open(args) as store:
                init = store.list_runs()[-1].run_dir + "/adapter"
        return code

    from app.runs import create_run, record_trainer_exit, train_command

    overrides = json.loads(Path(args.config).read_text()) if args.config else {}
    if args.nll is not None:
        overrides["loss_kwargs"] = {**overrides.get("loss_kwargs", {}), "nll": args.nll}
    if args.lora_targets:
        overrides["lora_targets"] = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
    if args.nll_per_token:
        overrides["nll_reduction"] = "token"
    for key in ("steps", "lr", "beta", "batch_size", "grad_accum", "lora_rank", "seed", "derivation", "device",
                "init_adapter", "mixed_precision", "optimizer", "cache_reference", "score_reduction"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    if args.model and "model" not in overrides:
        overrides["model"] = args.model
    with _open(args) as store:
        run, run_dir = create_run(store, modality=args.modality, method=args.method, settings=overrides)
    print(f"run {run.id}: {run_dir}", flush=True)
    proc = subprocess.Popen(train_command(run_dir))
    while True:
        try:
            code = proc.wait()
            break
        except KeyboardInterrupt:  # the trainer got the same Ctrl-C: let it checkpoint and exit
            continue
    if code != 0:  # a trainer that could not say why (killed, crashed hard): record it and say so
        with _open(args) as store:
            note = record_trainer_exit(store, run.id, code)
        if note:
            print(f"error: {note} (python -m alignment.train {run_dir} --resume)", file=sys.stderr)
    return 128 - code if code < 0 else code


def cmd_list(args: argparse.Namespace) -> int:
    with _open(args) as store:
        gens = store.list_generations(
            modality=args.modality, model=args.model, prompt_id=args.prompt_id, limit=args.limit
        )
        data_dir = store.data_dir
    if args.json:
        _print_json([{**asdict(g), "file": str(data_dir / g.media_path)} for g in gens])
        return 0
    if not gens:
        print("no generations stored yet")
        return 0
    rows = [(g.id, g.modality, g.model, g.seed, g.prompt_id, _short(g.prompt, 40), g.media_path) for g in gens]
    print(_table(rows, ["id", "modality", "model", "seed", "prompt", "text", "file"]))
    return 0


def cmd_vote(args: argparse.Namespace) -> int:
    annotator_kind = "ai" if args.ai else "human"
    with _open(args) as store:
        if args.undo or args.delete is not None:
            jid = args.delete if args.delete is not None else store.last_judgment_id(annotator=args.annotator)
            if jid is None:
                raise ValueError(f"there is no judgment by {args.annotator!r} to undo")
            store.delete_judgment(jid)
            print(f"deleted judgment {jid}")
            return 0
        if args.ranking:
            if args.ids or args.choice or args.strength is not None:
                raise ValueError("--ranking takes the ids itself; do not combine it with A B, --choice or --strength")
            groups = [_parse_rank_token(t) for t in args.ranking]
            jid = store.rank(
                [g[0] if len(g) == 1 else g for g in groups], unranked=args.unranked or [],
                annotator=args.annotator, annotator_kind=annotator_kind,
            )
            kind = "ranking"
        else:
            if len(args.ids) != 2 or args.choice is None:
                raise ValueError(
                    "a pairwise vote takes two generation ids and --choice, e.g. `vote 12 13 --choice a`; "
                    "a ranking takes --ranking ID ID ... (best first)"
                )
            jid = store.vote(
                args.ids[0], args.ids[1], args.choice, annotator=args.annotator, annotator_kind=annotator_kind,
                strength=args.strength,
            )
            kind = "vote"
    if args.json:
        _print_json({"judgment_id": jid, "kind": kind})
    else:
        print(f"stored {kind} as judgment {jid}")
    return 0


def cmd_export_dataset(args: argparse.Namespace) -> int:
    from app.services import export_dataset

    with _open(args) as store:
        report = export_dataset(store, args.out, fmt=args.format, modality=args.modality, model=args.model,
                                prompt_style=args.prompt_style)
    if args.json:
        _print_json(asdict(report))
    else:
        style = f", prompts {report.prompt_style}" if report.prompt_style else ""
        skipped = "".join(f"; left out {n} {why}" for why, n in report.skipped.items())
        print(f"wrote {report.rows} rows to {report.path} ({report.format}{style}){skipped}")
    return 0


def cmd_export_adapter(args: argparse.Namespace) -> int:
    from app.services import export_adapter

    with _open(args) as store:
        adapter = store.get_adapter(args.adapter_id)
        fmt = args.format or export_formats_of(adapter.modality)[0]
        out, diff = export_adapter(store, args.adapter_id, fmt, args.out)
    if args.json:
        _print_json({"path": str(out), "format": fmt, "max_difference": diff})
    else:
        print(f"wrote {out} ({fmt}); loaded back as that format's tools load it: same outputs as the trained "
              f"adapter (max difference {diff:.1e})")
    return 0


def export_formats_of(modality: str) -> list[str]:
    from app.services import export_formats

    return export_formats(modality)


def cmd_import(args: argparse.Namespace) -> int:
    from storage.exchange import import_dataset

    if args.ai and not args.annotator:
        raise ValueError("--ai marks the --annotator NAME you give as an AI judge; give --annotator too")
    with _open(args) as store:
        report = import_dataset(
            store, args.file, fmt=args.format, annotator=args.annotator,
            annotator_kind="ai" if args.ai else ("human" if args.annotator else None), force=args.force,
        )
    if args.json:
        _print_json(asdict(report))
    else:
        skipped = "".join(f", {n} skipped ({why})" for why, n in report.skipped.items())
        print(
            f"imported {report.judgments} judgment(s) and {report.generations_created} new candidate(s) "
            f"from {report.rows} rows of {report.path} ({report.format}){skipped}"
        )
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with _open(args) as store:
        stats = store.stats(modality=args.modality, model=args.model)
    if args.json:
        _print_json(stats)
        return 0
    if not stats:
        print("nothing stored yet: add candidates (`python -m app add`) or import a dataset (`python -m app import`)")
        return 0
    rows = []
    for s in stats:
        c = s["choices"]
        agree = "-" if s["agreement"] is None else f"{s['agreement']:.0%} of {s['pairs_judged_twice_or_more']}"
        rows.append(
            (s["modality"], s["model"], s["prompts"], s["generations"], s["pairwise_votes"], c["a"] + c["b"],
             c["tie"], c["both-bad"], s["rankings"], s["training_pairs"], agree)
        )
    print(_table(rows, ["modality", "model", "prompts", "candidates", "votes", "decisive", "ties", "both-bad",
                        "rankings", "train pairs", "agreement"]))
    return 0


# ---------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


UI_DEFAULTS = {"host": "127.0.0.1", "port": 7860, "auth": None, "token": None, "share": False, "no_preload": False}


def _ui_options(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: `python -m app --port 8000 ui` and `python -m app ui --port 8000` both count; cmd_ui fills defaults
    S = argparse.SUPPRESS
    p.add_argument("--host", default=S, help="address to serve on (default 127.0.0.1, this machine only; "
                   "anything else needs --auth or --token)")
    p.add_argument("--port", type=_port, default=S, help="port (default 7860)")
    p.add_argument("--auth", metavar="USER:PASSWORD", default=S, help="require this login (or set PALATE_AUTH)")
    p.add_argument("--token", metavar="TOKEN", default=S, help="require this token as the password, any user name "
                   "(or set PALATE_TOKEN; 12 characters at least)")
    p.add_argument("--share", action="store_true", default=S, help="a public Gradio share link (needs --auth or "
                   "--token, and internet)")
    p.add_argument("--no-preload", action="store_true", default=S, help="load models on first use, not at start")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir", default=argparse.SUPPRESS, metavar="DIR",
        help=f"where palate.db and media live (default: ${ENV_VAR}, else the per-user data directory)",
    )
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")

    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="Palate: collect your judgments of generated candidates and tune models to your taste.",
        epilog=UI_NOTE,
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _ui_options(parser)

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str, parent=sub, **kw) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help, description=help, parents=[common], **kw)
        p.set_defaults(func=func)
        return p

    # ui
    p = add("ui", cmd_ui, "start the web app (the default when no command is given)")
    _ui_options(p)

    # db
    db = sub.add_parser("db", help="inspect and check the database", description="Inspect and check the database.")
    db_sub = db.add_subparsers(dest="db_command", metavar="SUBCOMMAND", required=True)
    p = add("check", cmd_db_check, "check the store (SQLite integrity, references, media files) and optionally repair",
            parent=db_sub)
    p.add_argument("--repair", action="store_true", help="repair what can be repaired safely (see README)")
    p.add_argument("--no-hash", action="store_true", help="skip re-hashing every media file (faster)")
    add("info", cmd_db_info, "show where the data lives, the schema version and row counts", parent=db_sub)

    # add
    p = add("add", cmd_add, "register existing media files (or text files) as candidates for a prompt")
    p.add_argument("files", nargs="+", metavar="FILE", help="media files (PNG, WAV, MP4, ...) or UTF-8 text files")
    p.add_argument("--prompt", required=True, help="the prompt the candidates answer")
    p.add_argument("--modality", required=True, choices=MODALITIES)
    p.add_argument("--model", required=True, help="model that made them: hub id or local path")
    p.add_argument("--revision", help="model revision (commit hash or version)")
    p.add_argument("--seed", type=int, action="append", help="seed of each file, in order (repeat the flag)")
    p.add_argument("--negative-prompt", help="negative prompt used, if any")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="another generation parameter (value parsed as JSON when it can be), repeatable")

    # generate
    p = add("generate", cmd_generate, "generate candidates for a prompt with a model and store them")
    p.add_argument("--modality", default="image", choices=["image", "text"], help="what to generate (default: image)")
    p.add_argument("--prompt", required=True, help='e.g. "two small red circles on a blue background"')
    p.add_argument("-n", type=int, default=4, help="how many candidates (1-64, default 4)")
    p.add_argument("--model", help="hub id or local pipeline folder (default: the built-in shapes-diffusion)")
    p.add_argument("--seed", type=int, help="seed of the first candidate; the others get seed+1, ... (default: random)")
    p.add_argument("--negative-prompt", help="what the images should not show")
    p.add_argument("--steps", type=int, help="denoising steps (model default when left out)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--scheduler", help="sampler: dpm++, ddim, euler, euler-a, unipc, pndm (UNet models); "
                                       "flow-euler, flow-heun (flow models)")
    p.add_argument("--temperature", type=float, help="text: sampling temperature (0 = greedy; default: the "
                                                            "model's, else 0.7)")
    p.add_argument("--top-p", type=float, help="text: nucleus sampling mass (default: the model's, else 0.95)")
    p.add_argument("--max-tokens", type=int, help="text: longest answer in tokens (default: the model's "
                                                       "generation_config.json, else 256)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    p.add_argument("--adapter", help="a LoRA adapter folder to apply (e.g. a training run's adapter/)")

    # train
    p = add("train", cmd_train, "train a LoRA adapter on the stored judgments (runs python -m alignment.train)")
    p.add_argument("--modality", default="image", choices=["image", "text"])
    p.add_argument("--method", required=True, help="diffusion-dpo, mapo, rankdpo (UNet models); flow-dpo, flow-rwr, "
                                                   "mapo, rankdpo (flow models); dpo, ipo, hinge, conservative-dpo, "
                                                   "simpo, irepo (language models); dto (reasoning models: builds "
                                                   "its own pairs, then trains with --dto-loss)")
    p.add_argument("--model", help="base model (default: the built-in one)")
    p.add_argument("--config", help="a JSON file of training settings (see alignment/config.py)")
    p.add_argument("--steps", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--beta", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--lora-rank", type=int)
    p.add_argument("--lora-targets", metavar="NAMES", help="comma-separated module names LoRA wraps (default: "
                   "the architecture's attention projections, e.g. q_proj,k_proj,v_proj,o_proj; add "
                   "gate_proj,up_proj,down_proj for the MLP)")
    p.add_argument("--seed", type=int)
    p.add_argument("--nll", type=float, metavar="ALPHA", help="language models: add ALPHA x the chosen answer's "
                   "negative log-likelihood to the loss (RPO): of its score (the whole answer; per token with "
                   "simpo), or with --nll-per-token the mean over all chosen tokens of the batch (TRL's rpo_alpha)")
    p.add_argument("--nll-per-token", action="store_true", default=None,
                   help="the --nll term as TRL's rpo_alpha computes it: cross-entropy per chosen token")
    p.add_argument("--score-reduction", choices=["auto", "sum", "mean"],
                   help="language models: an answer's score is the sum of its tokens' log-probabilities or their "
                        "mean (auto: mean for simpo, sum otherwise; --method ipo --score-reduction mean is TRL's IPO)")
    p.add_argument("--derivation", choices=["all", "best-vs-rest"], help="how rankings become pairs")
    p.add_argument("--device")
    p.add_argument("--init-adapter", metavar="ADAPTER", help="continue from an adapter (its id in the store or a "
                   "folder): it becomes the reference, and the new adapter starts as its copy")
    p.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"],
                   help="autocast for the forward passes (auto: bf16/fp16 on CUDA, none on CPU)")
    p.add_argument("--optimizer", choices=["auto", "adamw", "adamw8bit"],
                   help="auto: 8-bit AdamW on CUDA when bitsandbytes is installed, else AdamW")
    p.add_argument("--cache-reference", action="store_true", default=None,
                   help="score each micro-batch's reference once and reuse it in later epochs")
    dto = p.add_argument_group("thinking-dynamics optimization (--modality text --method dto)")
    dto.add_argument("--dto-loss", default="simpo", choices=["simpo", "dpo", "irepo"],
                     help="the preference loss trained on DTO's pairs (irepo: soft labels from 5 noisy AI annotators)")
    dto.add_argument("--problems", type=_problem_counts, default=[64], metavar="N[,N...]",
                     help="arithmetic-world problems per round, or one count per round (64,64,256: three rounds)")
    dto.add_argument("--samples", type=int, default=4, help="answers sampled per problem")
    dto.add_argument("--mc-samples", type=int, default=4, help="completions per cut point (Monte-Carlo)")
    dto.add_argument("--max-tokens", type=int, help="longest sampled trace (default: the model's own default)")
    dto.add_argument("--rounds", type=int, help="rounds, each on fresh problems answered by the last "
                     "adapter, continuing from it (default 1, or the number of --problems counts)")
    dto.add_argument("--rollout-pairs", action="store_true",
                     help="also pair the Monte-Carlo completions of the same prefix: correct over incorrect")
    dto.add_argument("--seed-problems", type=int, default=0, help=argparse.SUPPRESS)

    # list
    p = add("list", cmd_list, "list stored candidates (generations) with their ids")
    p.add_argument("--modality", choices=MODALITIES)
    p.add_argument("--model")
    p.add_argument("--prompt-id", type=_id)
    p.add_argument("--limit", type=int)

    # vote
    p = add(
        "vote", cmd_vote, "record a pairwise vote or a ranking by generation id (for scripts and AI judges)",
        epilog=(
            "examples:\n"
            "  python -m app vote 12 13 --choice a           # 12 is better than 13\n"
            "  python -m app vote 12 13 --choice tie\n"
            "  python -m app vote 12 13 --choice a --strength 0.8 --annotator my-judge --ai\n"
            "  python -m app vote --ranking 14 12=13 15       # 14 best, 12 and 13 tied, then 15\n"
            "  python -m app vote --ranking 14 --unranked 12 13   # partial ranking\n"
            "  python -m app vote --undo                      # delete your last judgment\n"
            "Voting on the same pair again is allowed: it is stored as a repeat vote and counts in soft labels."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("ids", nargs="*", type=_id, metavar="ID", help="two generation ids: A then B")
    p.add_argument("--choice", choices=["a", "b", "tie", "both-bad"], help="which one is better")
    p.add_argument("--strength", type=float, help="probability that A is better (soft label), agreeing with --choice")
    p.add_argument("--ranking", nargs="+", metavar="ID", help="generation ids best first; join ties with '='")
    p.add_argument("--unranked", nargs="+", type=_id, metavar="ID", help="candidates shown but not ranked")
    p.add_argument("--annotator", default="you", help="who judged (default: you)")
    p.add_argument("--ai", action="store_true", help="the annotator is an AI judge, not a person")
    p.add_argument("--delete", type=_id, metavar="JUDGMENT_ID", help="delete one judgment")
    p.add_argument("--undo", action="store_true", help="delete the annotator's most recent judgment")

    # export
    exp = sub.add_parser("export", help="export data", description="Export preference data.")
    exp_sub = exp.add_subparsers(dest="export_command", metavar="WHAT", required=True)
    p = add("dataset", cmd_export_dataset, "export votes as a Pick-a-Pic-style or TRL-style dataset", parent=exp_sub)
    p.add_argument("out", metavar="OUT", help="output file (.parquet, or .jsonl for trl-jsonl)")
    p.add_argument("--format", default="pickapic", choices=["pickapic", "trl-jsonl", "trl-parquet"])
    p.add_argument("--modality", choices=MODALITIES, help="default: image for pickapic, text for trl-*")
    p.add_argument("--model", help="only candidates of this model")
    p.add_argument("--prompt-style", default="auto", choices=["auto", "conversational", "templated"],
                   help="TRL formats: conversational (prompt and answers as chat messages; TRL applies the model's "
                        "chat template), templated (the prompt as the model saw it, template applied), or auto: "
                        "conversational when every model has a chat template, else templated")

    p = add("adapter", cmd_export_adapter, "export a trained adapter for other tools, checked by loading it back "
            "as they do", parent=exp_sub)
    p.add_argument("adapter_id", type=_id, metavar="ADAPTER_ID", help="the adapter's id in the store (db info counts them)")
    p.add_argument("out", metavar="OUT", help="output folder, or .safetensors file for kohya")
    p.add_argument("--format", help="image adapters: diffusers (default), peft or kohya; text adapters: peft "
                                    "(default) or merged (the base model with the LoRA merged in)")

    # import
    p = add("import", cmd_import, "import a Pick-a-Pic-style Parquet or TRL-style JSONL/Parquet dataset")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--format", default="auto", choices=["auto", "pickapic", "trl-jsonl", "trl-parquet"])
    p.add_argument("--annotator", help="record every vote under this annotator (default: the file's column)")
    p.add_argument("--ai", action="store_true", help="with --annotator: it is an AI judge")
    p.add_argument("--force", action="store_true", help="import a file again (identical votes are still skipped)")

    # stats
    p = add("stats", cmd_stats, "counts per modality and model: candidates, votes, rankings, training pairs")
    p.add_argument("--modality", choices=MODALITIES)
    p.add_argument("--model")

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.data_dir = getattr(args, "data_dir", None)
    args.json = getattr(args, "json", False)
    if getattr(args, "func", None) is None:
        args.func = cmd_ui
    from app.compat import warn

    warn()
    try:
        return args.func(args)
    except (StoreError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except sqlite3.Error as e:
        from storage.errors import sqlite_write_failure
        from storage.paths import resolve_data_dir

        full = sqlite_write_failure(e, resolve_data_dir(args.data_dir))
        print(f"error: {full}" if full is not None else
              f"error: database error: {e} (run `python -m app db check` to inspect the store)", file=sys.stderr)
        return 2
    except OverflowError as e:  # a number too large for SQLite or the OS, from a path argparse does not type
        print(f"error: a number given is too large ({e})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
