"""Train the built-in melody model from scratch.

    .venv/bin/python scripts/train_music_default.py --run-dir runs/music-default --out models/melody-lm

A small Llama (transformers, from a config) with the melody world's word-level tokenizer learns to answer a
prompt ("a slow sad melody in A minor on a harp, descending") with a melody in words -- instrument, tone,
articulation, tempo, then notes (``modalities.music.melody``) -- on train-split prompts generated on the
fly. The music adapter renders its answers to audio with the world's synthesiser.

The loop is the text model's (``scripts/train_text_default.py``): checkpoints in ``RUN_DIR`` every
``--checkpoint-every`` steps and on Ctrl-C/SIGTERM, an exact resume when run again, a CUDA GPU when present.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_text_default as loop  # noqa: E402

from modalities.music import events  # noqa: E402
from modalities.music import melody as world  # noqa: E402


def parse_args(argv=None):
    p = loop.argparse.ArgumentParser(description=__doc__, formatter_class=loop.argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/music-default", help="checkpoints and the training log")
    p.add_argument("--out", default="models/melody-lm", help="where the finished model folder is written")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--context", type=int, default=160)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--temperature", type=float, default=1.0, help="the shipped default sampling temperature")
    p.add_argument("--top-p", type=float, default=0.95, help="the shipped default top-p")
    p.add_argument("--answer-tokens", type=int, default=120, help="the shipped default max tokens of a melody")
    p.add_argument("--stop-after", type=int, default=0, help="stop (as if interrupted) after this step; for tests")
    p.add_argument("--export-only", action="store_true", help="write the last checkpoint to --out and exit")
    return p.parse_args(argv)


def batch_of(rng: random.Random, args, tokenizer, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and loss labels of ``batch_size`` fresh train-split examples (loss on the melody only)."""
    rows, labels = [], []
    while len(rows) < args.batch_size:
        spec = world.sample_spec(rng)
        if world.split_of(spec) != "train":
            continue  # held-out prompts are never seen
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": world.prompt_of(spec)}], tokenize=False,
                                               add_generation_prompt=True)
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
        answer = world.words_of(world.sample_melody(spec, rng))
        ids = prompt_ids + tokenizer.encode(" " + answer, add_special_tokens=False) + [tokenizer.eos_token_id]
        if len(ids) > args.context:
            continue
        rows.append(ids)
        labels.append([-100] * len(prompt_ids) + ids[len(prompt_ids):])
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    x = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
    y = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels], device=device)
    return x, y


def main(argv=None) -> int:
    args = parse_args(argv)
    tokenizer = world.build_tokenizer()
    tokenizer.chat_template = world.CHAT_TEMPLATE
    rc = loop.train_loop(args, tokenizer, batch_of, {"world": "melody", "sample_rate": world.RATE})
    if rc == 0:  # the marker that makes the folder a music model (the music adapter reads it)
        (Path(args.out) / events.MARKER).write_text(json.dumps({"family": events.FAMILY, "sample_rate": world.RATE})
                                                    + "\n")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
