"""What each ``python -m app`` command does (the parser is :mod:`app.cli`)."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from storage import Store

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



UI_DEFAULTS = {"host": "127.0.0.1", "port": 7860, "auth": None, "token": None, "share": False, "no_preload": False}


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
        counts = store.table_counts()
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
    from modalities import registry

    family = registry.spec(args.modality).media
    with _open(args) as store:
        with store.write():  # all files or none
            out = [
                store.add_generation(
                    prompt=args.prompt, modality=args.modality, model=args.model, model_revision=args.revision,
                    media=p, seed=seeds[i] if seeds else None, params=params, media_family=family,
                )
                for i, p in enumerate(paths)
            ]
    if args.json:
        _print_json([{"id": g.id, "path": g.media_path, "sha256": g.media_sha256} for g in out])
    else:
        for g in out:
            print(f"generation {g.id}: {g.media_path}")
    return 0


def _settings_given(args: argparse.Namespace, modality: str, which: str = "settings") -> dict[str, Any]:
    """The generation settings (or ``train_options``) given as flags, checked against the modality's
    spec; a flag of another modality is an error that says so."""
    from modalities import registry

    spec = registry.spec(modality)
    mine = {s.name: s for s in getattr(spec, which)}
    wrong = sorted({s.flag for m in registry.with_spec() for s in getattr(registry.spec(m), which)
                    if s.name not in mine and getattr(args, s.name, None) is not None})
    if wrong:
        raise ValueError(f"{', '.join(wrong)} do not apply to {modality} models")
    return {name: v for name, s in mine.items() if (v := s.parse(getattr(args, name, None))) is not None}


def cmd_generate(args: argparse.Namespace) -> int:
    from app.generation import generate_candidates
    from modalities import registry

    params = _settings_given(args, args.modality)
    if args.negative_prompt and not registry.spec(args.modality).negative_prompt:
        raise ValueError(f"--negative-prompt does not apply to {args.modality} models")
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


def _train_one(args: argparse.Namespace) -> tuple[int, str | None]:
    """Write one run from the flags and train it as `python -m alignment.train RUN_DIR` (a subprocess,
    the same command a user can run by hand); returns (exit code, the adapter folder)."""
    import subprocess

    from app.runs import create_run, record_trainer_exit, train_command

    overrides = json.loads(Path(args.config).read_text()) if args.config else {}
    if args.nll is not None:
        overrides["loss_kwargs"] = {**overrides.get("loss_kwargs", {}), "nll": args.nll}
    for text in args.option or []:
        key, sep, value = text.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not key.strip() or number is None:
            raise ValueError(f"--option takes KEY=NUMBER (e.g. pool=4), got {text!r}")
        overrides["loss_kwargs"] = {**overrides.get("loss_kwargs", {}), key.strip(): number}
    if args.reward_model:
        overrides["reward_model"] = args.reward_model
    if args.reward_mode:
        overrides["reward_mode"] = args.reward_mode
    if args.prompts_file:
        path = Path(args.prompts_file).expanduser()
        if not path.is_file():
            raise ValueError(f"--prompts-file {args.prompts_file}: no such file")
        overrides["prompts"] = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not overrides["prompts"]:
            raise ValueError(f"--prompts-file {args.prompts_file} holds no prompt")
    if args.lora_targets:
        overrides["lora_targets"] = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
    if args.nll_per_token:
        overrides["nll_reduction"] = "token"
    options = _settings_given(args, args.modality, "train_options")
    if options:
        overrides["modality_options"] = {**overrides.get("modality_options", {}), **options}
    for key in ("steps", "lr", "beta", "batch_size", "grad_accum", "lora_rank", "seed", "derivation", "dimension", "device",
                "init_adapter", "mixed_precision", "optimizer", "cache_reference", "score_reduction"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    if getattr(args, "contexts", None):
        overrides["contexts"] = [c.strip() for c in args.contexts.split(",") if c.strip()]
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
    return (128 - code if code < 0 else code), str(Path(run_dir) / "adapter")


def cmd_train(args: argparse.Namespace) -> int:
    """Build a run from the store, write its config, and run `python -m alignment.train RUN_DIR`; a
    procedure (``alignment.rounds``) runs its rounds, each one such run."""
    from alignment import rounds
    from app.generation import default_model
    from modalities import registry

    from alignment.methods import methods_for

    procedure = rounds.get(args.method)
    kinds = registry.spec(args.modality).score_kinds
    if procedure is None:
        offered = methods_for(kinds, registry.spec(args.modality).capabilities)
        if args.method not in offered:
            procedures = [n for n, p in rounds.PROCEDURES.items() if set(p.score_kinds) & set(kinds)]
            from alignment.methods import LOSSES

            what = "is not a method" if args.method in LOSSES else "is an unknown method, and not one"
            raise ValueError(f"--method {args.method!r} {what} for {args.modality} models ({', '.join(kinds)} "
                             f"scores); use one of {', '.join(offered + procedures)}")
        return _train_one(args)[0]
    if not set(procedure.score_kinds) & set(kinds):
        raise ValueError(f"--method {args.method} is for {', '.join(procedure.score_kinds)} models, and {args.modality} "
                         f"models are {', '.join(kinds)}; use --modality "
                         f"{' or '.join(m for m in registry.with_spec() if set(procedure.score_kinds) & set(registry.spec(m).score_kinds))}")
    model = args.model or default_model(args.modality)

    def launch(method: str, model: str, init_adapter: str | None) -> tuple[int, str | None]:
        return _train_one(argparse.Namespace(**{**vars(args), "method": method, "model": model,
                                                "init_adapter": init_adapter}))

    opts = {o.dest: getattr(args, o.dest) for o in procedure.options}
    return procedure.run(lambda: _open(args), opts, modality=args.modality, model=model,
                         init_adapter=args.init_adapter, launch=launch, device=args.device)


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
        from app.services import check_dimension

        if args.ranking:
            if args.ids or args.choice or args.strength is not None:
                raise ValueError("--ranking takes the ids itself; do not combine it with A B, --choice or --strength")
            groups = [_parse_rank_token(t) for t in args.ranking]
            check_dimension(store, groups[0][0], args.dimension)
            jid = store.rank(
                [g[0] if len(g) == 1 else g for g in groups], unranked=args.unranked or [],
                annotator=args.annotator, annotator_kind=annotator_kind, dimension=args.dimension,
            )
            kind = "ranking"
        else:
            if len(args.ids) != 2 or args.choice is None:
                raise ValueError(
                    "a pairwise vote takes two generation ids and --choice, e.g. `vote 12 13 --choice a`; "
                    "a ranking takes --ranking ID ID ... (best first)"
                )
            check_dimension(store, args.ids[0], args.dimension)
            jid = store.vote(
                args.ids[0], args.ids[1], args.choice, annotator=args.annotator, annotator_kind=annotator_kind,
                strength=args.strength, dimension=args.dimension,
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
                                prompt_style=args.prompt_style,
                                dimension=None if args.dimension == "all" else args.dimension)
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
    from modalities import registry
    from storage.exchange import import_dataset

    if args.ai and not args.annotator:
        raise ValueError("--ai marks the --annotator NAME you give as an AI judge; give --annotator too")
    with _open(args) as store:
        report = import_dataset(
            store, args.file, fmt=args.format, annotator=args.annotator,
            annotator_kind="ai" if args.ai else ("human" if args.annotator else None), force=args.force,
            modalities=registry.media_families(),
            dimensions={m: registry.spec(m).dimensions for m in registry.with_spec()},
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


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"
