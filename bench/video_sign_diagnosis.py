"""Why a built-in video model does or does not move shapes the prompt's way: the diagnosis behind the model
card's "Why the sign was at chance" (models/moving-shapes-video/README.md).

    .venv/bin/python bench/video_sign_diagnosis.py [--model models/moving-shapes-video]

The phase-1 weights (direction at chance) are at commit 6ffc986:
    git archive 6ffc986 models/moving-shapes-video | tar -x -C /tmp/phase1
    .venv/bin/python bench/video_sign_diagnosis.py --model /tmp/phase1/models/moving-shapes-video

1. Follow: 16 horizontal train-split prompts, each rendered, noised to t and denoised once with its own and
   with the opposite direction: how often the predicted clean clip's net motion follows the prompt / the clip.
2. Near pure noise: the predicted clean clip for "a red circle moving quickly to the left on a white
   background" at t = 0.999, averaged over 32 noises -- where the shape's colour is in frame 1 and frame 8
   (columns, summed redness), against the average of 300 renders; and how much knowing the sign lowers the
   squared error of the best (mean) prediction there.
3. The text: distance between the input embeddings of "left" and "right", and between the encoder's states of
   the "to the left" and "to the right" prompts (and "to the left" and "upwards").
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modalities.diffusion.families import coordinate_channels  # noqa: E402
from modalities.video import moving  # noqa: E402
from modalities.video.pixel_pipeline import ShapesVideoPipeline  # noqa: E402

PROMPT = "a red circle moving quickly {} on a white background"


def predict(pipe, x: torch.Tensor, t: float, states: torch.Tensor) -> torch.Tensor:
    """The UNet's clean clip [N, 3, F, H, W] for clips x at flow time t."""
    n, c, f, h, w = x.shape
    folded = x.reshape(n, c * f, h, w)
    if pipe.unet.config.in_channels == c * f + 2:
        folded = torch.cat([folded, coordinate_channels(n, h, w, folded)], 1)
    with torch.no_grad():
        return pipe.unet(folded, torch.full((n,), t * 1000), encoder_hidden_states=states).sample.reshape(n, c, f, h, w)


def centroid_x(clips: torch.Tensor) -> torch.Tensor:
    """Per clip and frame, the x centroid of the pixels far from the clip's median colour. [N, F]"""
    bg = clips.flatten(2).median(2).values[:, :, None, None, None]
    m = ((clips - bg).abs().amax(1) > 0.3).float()
    xs = torch.arange(clips.shape[-1]).float() + 0.5
    return (m.sum(2) * xs).sum(-1) / m.sum((2, 3)).clamp(min=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/moving-shapes-video")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    pipe = ShapesVideoPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)

    print("1. follow (16 horizontal train prompts; share of predictions moving the prompt's way / the clip's way)")
    rng = random.Random(0)
    specs = [s for s in moving.all_specs() if s.direction in ("left", "right") and moving.split_of(s) == "train"]
    rng.shuffle(specs)
    specs = specs[:16]
    x0 = torch.from_numpy(np.stack([moving.render(s, moving.Style(), seed=1)[0] for s in specs]).astype(np.float32))
    x0 = x0.permute(0, 4, 1, 2, 3) / 127.5 - 1
    truth = np.array([1 if s.direction == "right" else -1 for s in specs])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    for flipped in (False, True):
        prompts = [moving.prompt_of(moving.Spec(s.shape, s.colour, s.count, s.direction if not flipped else
                                                ("left" if s.direction == "right" else "right"), s.speed, s.background))
                   for s in specs]
        states = pipe.encode_prompt(prompts)
        for t in (0.999, 0.9, 0.8, 0.5):
            c = centroid_x(predict(pipe, (1 - t) * x0 + t * noise, t, states))
            sign = np.sign((c[:, -1] - c[:, 0]).numpy())
            asked = -truth if flipped else truth
            print(f"   {'opposite' if flipped else 'own     '} prompt, t={t}: follows the prompt "
                  f"{np.mean(sign == asked):.2f}, the clip {np.mean(sign == truth):.2f}")

    print("2. near pure noise (t = 0.999, 32 noises averaged): summed redness per column (every 2nd), 'to the left'")
    states = pipe.encode_prompt([PROMPT.format("to the left")]).repeat(32, 1, 1)
    pred = predict(pipe, torch.randn(32, 3, 8, 32, 32, generator=torch.Generator().manual_seed(5)), 0.999, states)
    red = (pred[:, 0] - (pred[:, 1] + pred[:, 2]) / 2).mean(0)  # [F, H, W]
    np.set_printoptions(precision=1, suppress=True, linewidth=200)
    for f in (0, 7):
        print(f"   frame {f + 1}: {red[f].sum(0).numpy()[::2]}")
    spec = moving.parse_prompt(PROMPT.format("to the left"))
    r = random.Random(0)
    renders = np.stack([moving.render(spec, moving.sample_style(r), seed=r.randrange(2**31))[0]
                        for _ in range(300)]).astype(np.float32).mean(0) / 127.5 - 1
    rr = np.clip(renders[..., 0] - (renders[..., 1] + renders[..., 2]) / 2, 0, None)
    xs = np.arange(32) + 0.5
    print(f"   renders' mean, x centroid per frame: {(rr.sum(1) * xs).sum(-1) / rr.sum((1, 2))}")

    print("   what knowing the sign is worth there: squared error per pixel of 200 'to the left' renders against")
    r = random.Random(0)
    clips = {}
    for d in ("left", "right", "up"):
        sp = moving.Spec("circle", "red", 1, d, "quickly", "white")
        clips[d] = np.stack([moving.render(sp, moving.sample_style(r), seed=r.randrange(2**31))[0]
                             for _ in range(400)]).astype(np.float32) / 127.5 - 1
    means = {d: c[:200].mean(0) for d, c in clips.items()}
    test = clips["left"][200:]
    for name, m in (("the mean of 200 other left renders", means["left"]),
                    ("the mean of left and right (no sign)", (means["left"] + means["right"]) / 2),
                    ("the mean of left, right and up (no axis)", (means["left"] + means["right"] + means["up"]) / 3)):
        print(f"      {name}: {((test - m) ** 2).mean():.4f}")

    print("3. text")
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    left, right = pipe.tokenizer.convert_tokens_to_ids(["left", "right"])
    s = pipe.encode_prompt([PROMPT.format(d) for d in ("to the left", "to the right", "upwards")])
    print(f"   input embeddings left-right {(table[left] - table[right]).norm():.2f}; encoder states left-right "
          f"{(s[0] - s[1]).norm():.2f}, left-upwards {(s[0] - s[2]).norm():.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
