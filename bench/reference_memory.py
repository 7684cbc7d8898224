"""Peak memory and step time of one Diffusion-DPO step: Palate's reference vs a second model copy.

    .venv/bin/python bench/reference_memory.py [--steps 5] [--device cpu|cuda] [--json out.json]

Palate's trainer scores the reference with the *same* UNet, its LoRA adapter
disabled. Most public Diffusion-DPO scripts instead keep a second, frozen copy
of the UNet as the reference. This script runs both variants of one training
step -- LoRA policy forward and backward, reference forward, AdamW step -- on a
Stable-Diffusion-shaped UNet with random weights (built from a config, over
100M parameters), each variant in a fresh process, and reports:

- peak memory: the process's peak resident set size on CPU, or
  ``torch.cuda.max_memory_allocated`` on a GPU;
- step time: the median over ``--steps`` steps after one warm-up step.
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH = 2  # preference pairs per step
LATENT = 32  # latent side (a 256 px image for an SD VAE)


def build_unet():
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=LATENT, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(192, 384, 576, 576), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )


def run_variant(variant: str, steps: int, device: str) -> dict:
    """One process, one variant: returns its figures."""
    import torch
    from diffusers import DDPMScheduler

    from alignment.config import TrainConfig
    from alignment.losses import get_loss
    from alignment.train import adapter_disabled, add_lora
    from modalities.image.adapter import ATTENTION_TARGETS
    from modalities.protocol import TrainingBatch
    from modalities.scoring import denoising_score, group_noise, group_timesteps

    torch.set_num_threads(max(1, torch.get_num_threads()))
    unet = build_unet().to(device)
    n_params = sum(p.numel() for p in unet.parameters())
    model_bytes = sum(p.numel() * p.element_size() for p in unet.parameters())
    reference_copy = None
    if variant == "second-copy":
        reference_copy = copy.deepcopy(unet).requires_grad_(False).eval()
    cfg = TrainConfig(modality="image", method="diffusion-dpo", model="bench", data_dir="-", lora_rank=8,
                      lora_alpha=8.0)
    params = add_lora(unet, cfg, list(ATTENTION_TARGETS))
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    alphas = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod.to(device)
    spec = get_loss("diffusion-dpo")

    def score(model, batch: TrainingBatch, gen):
        x0 = batch.tensors["latents"]
        B, K = x0.shape[:2]
        noise = group_noise(gen, B, K, tuple(x0.shape[2:])).to(device)
        t = group_timesteps(gen, B, K, len(alphas)).to(device)
        a = alphas[t].view(B, K, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        cond = batch.conditioning["encoder_hidden_states"].repeat_interleave(K, dim=0)
        pred = model(noisy.flatten(0, 1), t.flatten(), encoder_hidden_states=cond).sample
        return denoising_score(pred.view(B, K, *pred.shape[1:]), noise)

    g = torch.Generator("cpu").manual_seed(0)
    latents = torch.randn(BATCH, 2, 4, LATENT, LATENT, generator=g).to(device)
    text = torch.randn(BATCH, 77, 768, generator=g).to(device)
    batch = TrainingBatch(["p"] * BATCH, {"latents": latents}, {"encoder_hidden_states": text})
    times = []
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for step in range(steps + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        policy = score(unet, batch, torch.Generator("cpu").manual_seed(step))
        with torch.no_grad():
            if reference_copy is None:
                with adapter_disabled(unet):
                    reference = score(unet, batch, torch.Generator("cpu").manual_seed(step))
            else:
                reference = score(reference_copy, batch, torch.Generator("cpu").manual_seed(step))
        loss, _ = spec.fn(policy, reference, beta=spec.default_beta)
        loss.backward()
        optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if step > 0:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t0)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {"variant": variant, "parameters": n_params, "model_bytes": model_bytes, "peak_bytes": peak,
            "step_seconds_median": statistics.median(times), "step_seconds": [round(x, 3) for x in times]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.steps, args.device)))
        return 0
    results = {}
    for variant in ("palate", "second-copy"):
        proc = subprocess.run([sys.executable, __file__, "--variant", variant, "--steps", str(args.steps),
                               "--device", args.device], capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = results[variant]
        print(f"{variant:12s} peak {r['peak_bytes'] / 2**30:.2f} GiB, step {r['step_seconds_median']:.2f} s "
              f"(median of {args.steps})", file=sys.stderr)
    ours, theirs = results["palate"], results["second-copy"]
    summary = {
        "device": args.device,
        "unet_parameters": ours["parameters"],
        "model_copy_gib": round(ours["model_bytes"] / 2**30, 3),
        "peak_gib": {k: round(v["peak_bytes"] / 2**30, 3) for k, v in results.items()},
        "saved_gib": round((theirs["peak_bytes"] - ours["peak_bytes"]) / 2**30, 3),
        "saved_model_copies": round((theirs["peak_bytes"] - ours["peak_bytes"]) / ours["model_bytes"], 2),
        "step_seconds_median": {k: round(v["step_seconds_median"], 3) for k, v in results.items()},
        "runs": results,
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
