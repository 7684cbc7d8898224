"""Train the built-in arithmetic-world reasoning model from scratch.

    .venv/bin/python scripts/train_text_default.py --run-dir runs/text-default --out models/arith-reasoner

A small Llama (transformers, from a config) with the world's word-level
tokenizer learns to answer "Q: <problem>\\nA:" with a reasoning trace from
``modalities.text.arithmetic.make_trace`` in its default *overthinking* style
(re-verification, recomputation, detours that self-correct, filler -- each the
majority choice at its position, as in real reasoning models), on train-split
problems generated on the fly.

Checkpoints go to ``RUN_DIR/checkpoint.pt`` every ``--checkpoint-every`` steps
and on Ctrl-C/SIGTERM; running the same command again resumes from it exactly
(model, optimizer, step and every random state). Uses a CUDA GPU when one is
present. ``--export-only`` writes the last checkpoint as the model folder (to
evaluate mid-training).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import random
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modalities.text import arithmetic as world  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/text-default", help="checkpoints and the training log")
    p.add_argument("--out", default="models/arith-reasoner", help="where the finished model folder is written")
    p.add_argument("--difficulty", default="medium", choices=sorted(world.DIFFICULTIES))
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--temperature", type=float, default=0.7, help="the shipped default sampling temperature")
    p.add_argument("--top-p", type=float, default=0.95, help="the shipped default top-p")
    p.add_argument("--answer-tokens", type=int, default=384, help="the shipped default max tokens of an answer")
    p.add_argument("--stop-after", type=int, default=0, help="stop (as if interrupted) after this step; for tests")
    p.add_argument("--export-only", action="store_true", help="write the last checkpoint to --out and exit")
    return p.parse_args(argv)


SAME = ("difficulty", "hidden", "layers", "heads", "context", "steps", "batch_size", "lr", "warmup", "seed")


def lr_at(step: int, args: argparse.Namespace) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def build_model(args: argparse.Namespace, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3 // 16 * 16,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
        max_position_embeddings=args.context, rope_theta=10000.0, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(args.seed)
    return LlamaForCausalLM(cfg)


# The model's prompt format, shipped as its chat template: a user types only the question. Roles
# are honoured (an assistant turn is its text, a system message a line of its own), so tools that
# render prompt + answer through the template, as TRL does, get "Q: ...\nA:" + the answer.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}Q: {{ m['content'] }}\nA:"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{% if not loop.last %}\n{% endif %}"
    "{% else %}{{ m['content'] }}\n{% endif %}{% endfor %}"
)


def prompt_text(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)


def batch_of(rng: random.Random, args: argparse.Namespace, tokenizer, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and loss labels of ``batch_size`` fresh train-split examples (loss on the trace only)."""
    rows, labels = [], []
    while len(rows) < args.batch_size:
        problem = world.sample_problem(rng, args.difficulty)
        if problem.split != "train":
            continue  # held-out chains are never seen
        trace = world.make_trace(problem, rng)
        prompt = prompt_text(tokenizer, problem.prompt)
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
        ids = tokenizer.encode(prompt + "\n" + trace, add_special_tokens=False) + [tokenizer.eos_token_id]
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
    tokenizer.chat_template = CHAT_TEMPLATE
    return train_loop(args, tokenizer, batch_of, {"difficulty": asdict(world.DIFFICULTIES[args.difficulty])})


def train_loop(args: argparse.Namespace, tokenizer, make_batch, describe: dict) -> int:
    """Train (or resume) a small Llama on ``make_batch(rng, args, tokenizer, device) -> (ids, labels)`` and
    write the model folder; ``describe`` goes into its training_config.json. Shared by the built-in models'
    training scripts (the settings that must match on a resume are ``SAME``)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    run_dir, out_dir = Path(args.run_dir), Path(args.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"
    tokenizer.model_max_length = args.context
    model = build_model(args, tokenizer).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    data_rng = random.Random(args.seed)
    step, elapsed_before = 0, 0.0
    if ckpt_path.exists():
        try:  # tensors and plain values only: a planted pickle cannot run code here
            ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        except pickle.UnpicklingError:
            raise SystemExit(f"{ckpt_path} was not loaded: it is damaged, or holds objects other than tensors and "
                             "plain values (which could run code); delete it or use another --run-dir") from None
        if any(ck["args"].get(k) != getattr(args, k, None) for k in SAME):
            raise SystemExit(f"{ckpt_path} was made with other settings ({ck['args']}); use another --run-dir")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, elapsed_before = ck["step"], ck["elapsed"]
        data_rng.setstate(ck["data_rng"])
        torch.set_rng_state(ck["torch_rng"])
        print(f"resumed from step {step} ({elapsed_before / 60:.1f} min done)", flush=True)
    t_start = time.time()

    def save_checkpoint() -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"args": vars(args), "model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                    "elapsed": elapsed_before + time.time() - t_start, "data_rng": data_rng.getstate(),
                    "torch_rng": torch.get_rng_state()}, tmp)
        os.replace(tmp, ckpt_path)

    if args.export_only:
        if not ckpt_path.exists():
            raise SystemExit(f"no checkpoint in {run_dir} to export")
        return export(model, tokenizer, args, out_dir, step, elapsed_before, device, describe)

    stop = {"now": False}

    def on_signal(signum, frame):  # finish the step, checkpoint, exit
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params / 1e6:.2f}M parameters on {device}; {args.steps} steps of {args.batch_size}", flush=True)
    log = open(run_dir / "train_log.jsonl", "a")
    model.train()
    while step < args.steps and not stop["now"]:
        x, y = make_batch(data_rng, args, tokenizer, device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        loss = model(input_ids=x, attention_mask=(x != tokenizer.pad_token_id).long(), labels=y).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 25 == 0 or step == 1:
            rec = {"step": step, "loss": round(loss.item(), 5), "grad_norm": round(float(grad_norm), 4),
                   "lr": lr_at(step, args), "minutes": round((elapsed_before + time.time() - t_start) / 60, 2)}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(rec, flush=True)
        if step % args.checkpoint_every == 0:
            save_checkpoint()
        if args.stop_after and step >= args.stop_after:
            stop["now"] = True
    save_checkpoint()
    if stop["now"] and step < args.steps:
        print(f"stopped at step {step}; run the same command again to resume", flush=True)
        return 130
    return export(model, tokenizer, args, out_dir, step, elapsed_before + time.time() - t_start, device, describe)


def export(model, tokenizer, args, out_dir: Path, step: int, seconds: float, device, describe: dict) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    from transformers import GenerationConfig

    # the model's default sampling settings travel with it (the text adapter reads them)
    model.generation_config = GenerationConfig(
        do_sample=args.temperature > 0, temperature=args.temperature, top_p=args.top_p,
        max_new_tokens=args.answer_tokens, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    model.to("cpu").save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    training = {k: v for k, v in vars(args).items() if k not in ("export_only", "stop_after")}
    (out_dir / "training_config.json").write_text(json.dumps(
        {"training": training, **describe, "device": str(device),
         "torch_threads": torch.get_num_threads(), "minutes": round(seconds / 60, 1), "steps": step,
         "parameters": sum(p.numel() for p in model.parameters())}, indent=2, default=str))
    print(f"wrote {out_dir} after {step} steps, {seconds / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
