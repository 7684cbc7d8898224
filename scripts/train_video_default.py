"""Train the built-in moving-shapes text-to-video model from scratch.

    .venv/bin/python scripts/train_video_default.py --run-dir runs/video-default --out models/moving-shapes-video

Renders training clips on the fly from the moving-shapes world (train split of the prompts only, random
motion styles: smooth or jerky, centred or off to a side), trains the pixel-space UNet (frames as channels)
and its small text encoder by flow matching (x_t = (1 - t) x0 + t noise, velocity target noise - x0, t =
sigmoid of a normal, mean 0.8 and deviation 0.8: most steps where the layout is decided). The UNet predicts
the clean clip and the loss is taken on the velocity derived from it (see ``velocity``; predicting the
velocity directly left residual noise in every clip of a 1600-step run). Keeps an exponential moving
average (EMA) of the weights and writes the EMA weights as a diffusers pipeline folder.

Checkpoints go to ``RUN_DIR/checkpoint.pt`` every ``--checkpoint-every`` steps and on Ctrl-C/SIGTERM;
running the same command again resumes from it exactly (model, EMA, optimizer, step and every random
state). Uses a CUDA GPU when one is present.
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
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modalities.video import moving  # noqa: E402
from modalities.video.default_model import DefaultModelConfig, build_pipeline  # noqa: E402
from modalities.video.pixel_pipeline import velocity  # noqa: E402

SAME = ("steps", "batch_size", "lr", "warmup", "seed", "ema_decay", "cond_dropout", "t_mean", "t_std", "shape_weight", "init",
        "t_high", "t_high_from", "spread_words", "spread_norm")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/video-default", help="checkpoints and the training log")
    p.add_argument("--out", default="models/moving-shapes-video", help="where the finished pipeline is written")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--cond-dropout", type=float, default=0.1, help="share of empty prompts (for guidance)")
    p.add_argument("--t-mean", type=float, default=0.8, help="flow time t = sigmoid(N(t_mean, t_std)); t = 1 is noise")
    p.add_argument("--t-std", type=float, default=0.8)
    p.add_argument("--t-high", type=float, default=0.0,
                   help="share of each batch whose t is drawn uniformly from [--t-high-from, 1) instead: the "
                        "near-noise steps where a clip's layout and the sign of its motion are decided (below them the "
                        "noisy clip already shows its motion, and the model copies it)")
    p.add_argument("--t-high-from", type=float, default=0.85)
    p.add_argument("--shape-weight", type=float, default=8.0,
                   help="extra loss weight on the shapes' pixels (those away from the clip's background colour; "
                        "about 8%% of a clip); 0 weighs every pixel alike")
    p.add_argument("--init", default="",
                   help="start from this pipeline folder's weights (e.g. models/moving-shapes-video, to train it "
                        "further) instead of a fresh initialisation; its architecture must be this script's")
    p.add_argument("--spread-words", default="",
                   help="comma-separated words whose input embeddings get a random push of norm --spread-norm before "
                        "training (with --init): words the model never learnt to tell apart. In the first run 'left' "
                        "and 'right' stayed 0.3 apart, as initialised, their text states 0.8 apart (15 between 'left' "
                        "and 'upwards'), and the sign of the motion was left to the noise; see the model card")
    p.add_argument("--spread-norm", type=float, default=30.0)
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--stop-after", type=int, default=0, help="stop (as if interrupted) after this step; for tests")
    p.add_argument("--export-only", action="store_true",
                   help="write the last checkpoint's EMA weights to --out and exit (to evaluate mid-training)")
    return p.parse_args(argv)


def lr_at(step: int, args: argparse.Namespace) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def batch(rng: random.Random, prompts: list[str], n: int, cfg: DefaultModelConfig) -> tuple[list[str], torch.Tensor]:
    """``n`` train prompts and their rendered clips as [n, 3, frames, H, W] in [-1, 1]."""
    chosen = [rng.choice(prompts) for _ in range(n)]
    clips = [moving.render(moving.parse_prompt(p), moving.sample_style(rng), seed=rng.randrange(2**31),
                           frames=cfg.frames, size=cfg.size)[0] for p in chosen]
    x = torch.from_numpy(np.stack(clips).astype(np.float32)).permute(0, 4, 1, 2, 3)
    return chosen, x / 127.5 - 1.0


def sample_t(args: argparse.Namespace, gen: torch.Generator) -> torch.Tensor:
    """Flow times for one batch: logit-normal, with a share ``--t-high`` drawn uniformly from [--t-high-from, 1)."""
    t = torch.sigmoid(args.t_mean + args.t_std * torch.randn((args.batch_size,), generator=gen))
    if args.t_high > 0:
        high = torch.rand((args.batch_size,), generator=gen) < args.t_high
        lo = args.t_high_from
        t = torch.where(high, lo + (1 - lo) * torch.rand((args.batch_size,), generator=gen), t)
    return t


def spread_words(text_encoder, tokenizer, words: list[str], norm: float, seed: int) -> None:
    """Add an independent random vector of length ``norm`` to each word's input embedding (see --spread-words)."""
    vocab = tokenizer.get_vocab()
    unknown = [w for w in words if w not in vocab]
    if unknown:
        raise SystemExit(f"--spread-words: not in the model's vocabulary: {', '.join(unknown)}")
    table = text_encoder.get_input_embeddings().weight
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for w in words:
            push = torch.randn(table.shape[1], generator=gen)
            table[vocab[w]] += (norm * push / push.norm()).to(table.dtype)
    print(f"spread the embeddings of {', '.join(words)}", flush=True)


def init_weights(pipe, folder: Path) -> None:
    """Load a saved pipeline folder's UNet and text encoder weights into ``pipe`` (same architecture)."""
    from safetensors.torch import load_file

    for name, module, file in (("unet", pipe.unet, "diffusion_pytorch_model.safetensors"),
                               ("text_encoder", pipe.text_encoder, "model.safetensors")):
        path = folder / name / file
        if not path.exists():
            raise SystemExit(f"--init {folder}: {path} is missing (a pipeline folder written by this script?)")
        state = load_file(path)
        conv_in = module.state_dict().get("conv_in.weight")
        saved = state.get("conv_in.weight")
        if conv_in is not None and saved is not None and saved.shape[1] + 2 == conv_in.shape[1]:
            # a model without coordinate channels: they start with zero weight (the same function)
            state["conv_in.weight"] = torch.cat([saved, saved.new_zeros(saved.shape[0], 2, *saved.shape[2:])], 1)
            print("added coordinate channels to the saved UNet", flush=True)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise SystemExit(f"--init {folder}: its {name} is not this script's architecture ({str(e)[:300]})") from None
    print(f"initialised from {folder}", flush=True)


def shape_weights(x0: torch.Tensor, extra: float) -> torch.Tensor:
    """Per-pixel loss weights [n, 1, frames, H, W]: 1 + ``extra`` where a pixel differs from the clip's
    background (its per-channel median: the shapes cover far less than half of every clip)."""
    background = x0.flatten(2).median(dim=2).values.view(x0.shape[0], x0.shape[1], 1, 1, 1)
    shape = ((x0 - background).abs().amax(dim=1, keepdim=True) > 0.1).to(x0.dtype)
    return 1.0 + extra * shape


def weighted_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Squared error averaged with per-pixel weights (shared across the colour channels)."""
    err = (pred - target).pow(2).mean(dim=1, keepdim=True)
    return (err * weights).sum() / weights.sum()


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    run_dir, out_dir = Path(args.run_dir), Path(args.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"
    cfg = DefaultModelConfig()

    # 1. Model, EMA copy, optimizer
    pipe = build_pipeline(cfg, seed=args.seed)
    if args.init:
        init_weights(pipe, Path(args.init))
    if args.spread_words:
        spread_words(pipe.text_encoder, pipe.tokenizer, [w.strip() for w in args.spread_words.split(",") if w.strip()],
                     args.spread_norm, args.seed)
    unet, text_encoder, tokenizer = pipe.unet.to(device), pipe.text_encoder.to(device), pipe.tokenizer
    params = list(unet.parameters()) + list(text_encoder.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    train_prompts = [moving.prompt_of(s) for s in moving.all_specs() if moving.split_of(s) == "train"]
    data_rng = random.Random(args.seed)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    step, elapsed_before = 0, 0.0

    # 2. Resume
    if ckpt_path.exists():
        try:  # tensors and plain values only: a planted pickle cannot run code here
            ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        except pickle.UnpicklingError:
            raise SystemExit(f"{ckpt_path} was not loaded: it is damaged, or holds objects other than tensors and "
                             "plain values (which could run code); delete it or use another --run-dir") from None
        if any(ck["args"].get(k) != getattr(args, k) for k in SAME):
            raise SystemExit(f"{ckpt_path} was made with other settings ({ck['args']}); use another --run-dir")
        unet.load_state_dict(ck["unet"])
        text_encoder.load_state_dict(ck["text_encoder"])
        for e, v in zip(ema, ck["ema"]):
            e.copy_(v)
        opt.load_state_dict(ck["opt"])
        step, elapsed_before = ck["step"], ck["elapsed"]
        data_rng.setstate(ck["data_rng"])
        gen.set_state(ck["gen"])
        torch.set_rng_state(ck["torch_rng"])
        print(f"resumed from step {step} ({elapsed_before / 60:.1f} min done)", flush=True)

    t_start = time.time()

    def save_checkpoint() -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"args": vars(args), "unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
                    "ema": ema, "opt": opt.state_dict(), "step": step, "elapsed": elapsed_before + time.time() - t_start,
                    "data_rng": data_rng.getstate(), "gen": gen.get_state(), "torch_rng": torch.get_rng_state()}, tmp)
        os.replace(tmp, ckpt_path)

    if args.export_only:
        if not ckpt_path.exists():
            raise SystemExit(f"no checkpoint in {run_dir} to export")
        return export(pipe, params, ema, cfg, args, out_dir, step, elapsed_before, device)

    stop = {"now": False}

    def on_signal(signum, frame):  # finish the step, checkpoint, exit
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # 3. Train
    log = open(run_dir / "train_log.jsonl", "a")
    while step < args.steps and not stop["now"]:
        prompts, x0 = batch(data_rng, train_prompts, args.batch_size, cfg)
        x0 = x0.to(device)
        texts = ["" if data_rng.random() < args.cond_dropout else p for p in prompts]
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt")
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = sample_t(args, gen).to(device)
        tt = t.view(-1, 1, 1, 1, 1)
        xt = (1 - tt) * x0 + tt * noise
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        hidden = text_encoder(input_ids=ids.input_ids.to(device),
                              attention_mask=ids.attention_mask.to(device)).last_hidden_state
        pred = velocity(unet, xt, t * 1000, hidden)
        loss = weighted_loss(pred, noise - x0, shape_weights(x0, args.shape_weight))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p.detach(), 1 - decay)
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

    # 4. Write the EMA weights as a pipeline folder
    return export(pipe, params, ema, cfg, args, out_dir, step, elapsed_before + time.time() - t_start, device)


def export(pipe, params, ema, cfg, args, out_dir: Path, step: int, seconds: float, device) -> int:
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    pipe.to("cpu")
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    training = {k: v for k, v in vars(args).items() if k not in ("export_only", "stop_after")}
    record = {"model": cfg.to_dict(), "training": training, "device": str(device),
              "torch_threads": torch.get_num_threads(), "minutes": round(seconds / 60, 1), "steps": step}
    earlier = Path(args.init) / "training_config.json" if args.init else None
    if earlier is not None and earlier.exists():  # how the weights it started from were made, and so on back
        record["init_from"] = json.loads(earlier.read_text())
    (out_dir / "training_config.json").write_text(json.dumps(record, indent=2, default=str))
    print(f"wrote {out_dir} after {step} steps, {seconds / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
