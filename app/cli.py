"""``python -m app``: the command line over the same services the UI uses.

Every command takes ``--data-dir`` (or the PALATE_DATA_DIR environment variable; default: the
per-user data directory) and ``--help``. Errors are printed as one readable line on stderr with exit
status 2; nothing is written when a command fails. The modalities, their settings flags, the methods
and the export formats come from the registries (``modalities.registry``, ``alignment.losses``,
``alignment.rounds``); what each command does is in :mod:`app.commands`.
"""
from __future__ import annotations

import argparse
import sqlite3
import sys
from typing import Callable, Sequence

from alignment import rounds
from alignment.methods import LOSSES
from modalities import registry
from storage import ENV_VAR, StoreError

from .commands import (UI_DEFAULTS, _id, _port, cmd_add, cmd_db_check, cmd_db_info, cmd_export_adapter,  # noqa: F401
                       cmd_export_dataset, cmd_generate, cmd_import, cmd_list, cmd_stats, cmd_train, cmd_ui, cmd_vote)

UI_NOTE = (
    "`python -m app` with no command (or `python -m app ui`) starts the web app on http://127.0.0.1:7860;\n"
    "--host, --port, --auth USER:PASSWORD / --token TOKEN and --share set where it serves (`python -m app ui --help`)."
)


def _length_normalized() -> list[str]:
    from alignment.methods import LOSSES
    return [name for name, spec in LOSSES.items() if spec.length_normalized]


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


def _setting_flags(p: argparse.ArgumentParser, mods: list[str], which: str = "settings") -> None:
    """One flag per generation setting (``which="train_options"``: training option) of every modality
    (one shared by two modalities, one flag); values are checked against the chosen modality's spec
    when the command runs."""
    seen: set[str] = set()
    for m in mods:
        spec = registry.spec(m)
        options = getattr(spec, which)
        if not options:
            continue
        group = p.add_argument_group(f"{spec.label} ({m})" + (", training" if which == "train_options" else ""))
        for s in options:
            if s.name in seen:
                continue
            seen.add(s.name)
            group.add_argument(s.flag, dest=s.name, metavar=s.kind.__name__.upper(), help=s.help)


def _methods_help(mods: list[str]) -> str:
    from alignment.methods import methods_for

    parts = [f"{m}: {', '.join(methods_for(registry.spec(m).score_kinds, registry.spec(m).capabilities))}" for m in mods]
    parts += [f"{name} ({p.title}; builds its own pairs)" for name, p in rounds.PROCEDURES.items()]
    return "the preference method -- " + "; ".join(parts)


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
    p.add_argument("--modality", required=True, choices=registry.with_spec())
    p.add_argument("--model", required=True, help="model that made them: hub id or local path")
    p.add_argument("--revision", help="model revision (commit hash or version)")
    p.add_argument("--seed", type=int, action="append", help="seed of each file, in order (repeat the flag)")
    p.add_argument("--negative-prompt", help="negative prompt used, if any")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="another generation parameter (value parsed as JSON when it can be), repeatable")

    # generate: the settings flags come from the modalities' specs
    mods = registry.with_spec()
    p = add("generate", cmd_generate, "generate candidates for a prompt with a model and store them")
    p.add_argument("--modality", default=mods[0], choices=mods, help=f"what to generate (default: {mods[0]})")
    p.add_argument("--prompt", required=True, help=f'e.g. "{registry.spec(mods[0]).prompt_placeholder}"')
    p.add_argument("-n", type=int, default=4, help="how many candidates (1-64, default 4)")
    p.add_argument("--model", help="built-in alias, hub id or local folder (default: the modality's built-in model)")
    p.add_argument("--seed", type=int, help="seed of the first candidate; the others get seed+1, ... (default: random)")
    p.add_argument("--negative-prompt", help="what the candidates should not show ("
                   + ", ".join(m for m in mods if registry.spec(m).negative_prompt) + ")")
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    p.add_argument("--adapter", help="a LoRA adapter folder to apply (e.g. a training run's adapter/)")
    _setting_flags(p, mods)

    # train: methods from the loss registry, procedures from alignment.rounds
    p = add("train", cmd_train, "train a LoRA adapter on the stored judgments (runs python -m alignment.train)")
    p.add_argument("--modality", default=mods[0], choices=mods)
    p.add_argument("--method", required=True, help=_methods_help(mods))
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
                   "length-normalised methods), or with --nll-per-token the mean over all chosen tokens of the batch (TRL's rpo_alpha)")
    p.add_argument("--nll-per-token", action="store_true", default=None,
                   help="the --nll term as TRL's rpo_alpha computes it: cross-entropy per chosen token")
    p.add_argument("--score-reduction", choices=["auto", "sum", "mean"],
                   help="language models: an answer's score is the sum of its tokens' log-probabilities or their "
                        "mean (auto: mean for length-normalised methods (%s), sum otherwise)" % ", ".join(_length_normalized()))
    p.add_argument("--derivation", choices=["all", "best-vs-rest"], help="how rankings become pairs")
    p.add_argument("--dimension", help="train on the judgments about this dimension (default: overall; "
                   + "; ".join(f"{m}: {', '.join(registry.spec(m).dimensions)}" for m in mods) + ")")
    p.add_argument("--contexts", help="train only on judgments made in these contexts, comma-separated (e.g. "
                   "collect: yours, leaving out reward-label, a reward model's synthetic labels); default: all but "
                   "blind comparisons")
    p.add_argument("--device")
    p.add_argument("--init-adapter", metavar="ADAPTER", help="continue from an adapter (its id in the store or a "
                   "folder): it becomes the reference, and the new adapter starts as its copy")
    p.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"],
                   help="autocast for the forward passes (auto: bf16/fp16 on CUDA, none on CPU)")
    p.add_argument("--optimizer", choices=["auto", "adamw", "adamw8bit"],
                   help="auto: 8-bit AdamW on CUDA when bitsandbytes is installed, else AdamW")
    p.add_argument("--cache-reference", action="store_true", default=None,
                   help="score each micro-batch's reference once and reuse it in later epochs")
    online = [n for n, spec in LOSSES.items() if spec.online]
    group = p.add_argument_group("online methods (" + ", ".join(online) + "): they sample with the model as it trains")
    group.add_argument("--reward-model", metavar="NAME", help="what judges the samples: a programmatic reward (e.g. "
                       "taste-saturated), a reward model trained on your votes (name or name@vN; python -m app "
                       "reward train), or an ensemble a+b")
    group.add_argument("--reward-mode", choices=["auto", "noisy", "x0"], help="how the reward model scores a "
                       "trajectory's samples: noisy (a noise-aware reward model on the noisy latent), x0 (any reward model "
                       "on the clean image the denoiser predicts); auto: noisy when the model is noise-aware")
    group.add_argument("--prompts-file", metavar="FILE", help="prompts to sample, one per line (default: the prompts "
                       "you generated candidates for)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="a keyword argument of the method, "
                   "repeatable; " + "; ".join(f"{n}: " + ", ".join(f"{k} (default {v:g})" for k, v in LOSSES[n].defaults.items())
                                               for n in LOSSES if LOSSES[n].defaults))
    _setting_flags(p, mods, "train_options")
    for procedure in rounds.PROCEDURES.values():
        group = p.add_argument_group(f"--method {procedure.name}: {procedure.title}")
        for option in procedure.options:
            group.add_argument(option.flag, **option.kwargs)

    # list
    p = add("list", cmd_list, "list stored candidates (generations) with their ids")
    p.add_argument("--modality", choices=registry.with_spec())
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
            "  python -m app vote 12 13 --choice b --dimension style   # about style only\n"
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
    p.add_argument("--dimension", default="overall", help="what the judgment is about (default: overall; "
                   + "; ".join(f"{m}: {', '.join(registry.spec(m).dimensions)}" for m in mods) + ")")
    p.add_argument("--delete", type=_id, metavar="JUDGMENT_ID", help="delete one judgment")
    p.add_argument("--undo", action="store_true", help="delete the annotator's most recent judgment")

    # export
    exp = sub.add_parser("export", help="export data", description="Export preference data.")
    exp_sub = exp.add_subparsers(dest="export_command", metavar="WHAT", required=True)
    p = add("dataset", cmd_export_dataset, "export votes as a Pick-a-Pic-style or TRL-style dataset", parent=exp_sub)
    p.add_argument("out", metavar="OUT", help="output file (.parquet, or .jsonl for trl-jsonl)")
    p.add_argument("--format", default="pickapic", choices=["pickapic", "trl-jsonl", "trl-parquet"])
    p.add_argument("--modality", choices=registry.with_spec(),
                   help="default: the media modality for pickapic, text answers for trl-*")
    p.add_argument("--model", help="only candidates of this model")
    p.add_argument("--dimension", default="overall", metavar="DIMENSION",
                   help="the judgments about this dimension (default: overall, what other tools expect); all: "
                        "every dimension, with a dimension column (Palate reads it back on import)")
    p.add_argument("--prompt-style", default="auto", choices=["auto", "conversational", "templated"],
                   help="TRL formats: conversational (prompt and answers as chat messages; TRL applies the model's "
                        "chat template), templated (the prompt as the model saw it, template applied), or auto: "
                        "conversational when every model has a chat template, else templated")

    p = add("adapter", cmd_export_adapter, "export a trained adapter for other tools, checked by loading it back "
            "as they do", parent=exp_sub)
    p.add_argument("adapter_id", type=_id, metavar="ADAPTER_ID", help="the adapter's id in the store (db info counts them)")
    p.add_argument("out", metavar="OUT", help="output folder, or .safetensors file for kohya")
    p.add_argument("--format", help="one of the adapter's modality's formats (default: its first): "
                   + "; ".join(f"{m}: {', '.join(registry.spec(m).export_formats)}" for m in mods))

    # import
    p = add("import", cmd_import, "import a Pick-a-Pic-style Parquet or TRL-style JSONL/Parquet dataset")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--format", default="auto", choices=["auto", "pickapic", "trl-jsonl", "trl-parquet"])
    p.add_argument("--annotator", help="record every vote under this annotator (default: the file's column)")
    p.add_argument("--ai", action="store_true", help="with --annotator: it is an AI judge")
    p.add_argument("--force", action="store_true", help="import a file again (identical votes are still skipped)")

    # reward
    from .rewards import add_parser as add_reward_parser

    add_reward_parser(sub, add)

    # stats
    p = add("stats", cmd_stats, "counts per modality and model: candidates, votes, rankings, training pairs")
    p.add_argument("--modality", choices=registry.with_spec())
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
