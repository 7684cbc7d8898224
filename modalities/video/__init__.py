"""Video modality: the moving-shapes world, the built-in video model, Wan and LTX-Video.

``SPEC`` is what the rest of Palate knows about video (imported without torch); the model code is
``modalities.video.adapter.VideoAdapter``. Judgments may be about the clip's visual quality, its motion,
its alignment with the text, or overall (VideoAlign's three dimensions).
"""
from typing import Any, Mapping

from ..spec import ModalitySpec, Reward, Setting

DIMENSIONS = ("overall", "visual", "motion", "text")


def _caption(params: Mapping[str, Any]) -> str:
    f, fps = params.get("frames"), params.get("fps")
    guide = params.get("guide")
    text = f"{f} frames @ {float(fps):g} fps" if f and fps else ""
    if guide:
        text += " · guided " + ", ".join(f"{d} {w:g}" for d, w in guide.get("weights", {}).items())
        if guide.get("min_noise"):
            text += f" (noise >= {guide['min_noise']:g})"
    return text


_TASTES = (
    ("smooth", "likes motion at an even pace on a straight line", "jerky"),
    ("jerky", "likes uneven, wobbling motion", "smooth"),
    ("slow", "likes slow motion", "fast"),
    ("fast", "likes fast motion", "slow"),
    ("centred", "likes shapes that travel through the middle", "roaming"),
    ("roaming", "likes shapes that travel along the edges", "centred"),
)

SPEC = ModalitySpec(
    name="video",
    adapter="modalities.video.adapter:VideoAdapter",
    label="Video",
    media="video/",
    display="video",
    score_kinds=("flow",),
    export_formats=("diffusers", "peft"),
    default_model="moving-shapes-video",
    negative_prompt=True,
    preload=False,
    prompt_placeholder="a red circle moving quickly to the left on a white background",
    caption=_caption,
    settings=(
        Setting("steps", int, "denoising steps (default: the model's; built-in 20)", min=1, max=200),
        Setting("guidance", float, "classifier-free guidance scale (default: the model's; built-in 4)", min=0.0,
                max=30.0),
        Setting("frames", int, "frames per clip: built-in exactly 8; Wan 4k+1 (default 81); "
                "LTX 8k+1 (default 161)", min=1, max=1024),
        Setting("fps", float, "frames per second of the MP4 (LTX: 25, what it is trained at)", min=1, max=60),
        Setting("width", int, "width in pixels (built-in: multiples of 4, default 32; Wan: of 16; LTX: of 32)",
                min=1, max=2048),
        Setting("height", int, "height in pixels (as width)", min=1, max=2048),
        Setting("guide_reward", str, "Flow-NRG: the noise-aware reward model (Rewards tab) whose gradient guides "
                "sampling when a weight below is not 0"),
        Setting("guide_min_noise", float, "Flow-NRG guides only the steps at or above this noise level (0 or "
                "empty: every step, as the paper; 0.8: only the first steps, where the layout is set -- the motion "
                "is left to the model)", min=0.0, max=0.99),
        *(Setting(f"guide_{d}", float, f"Flow-NRG weight of the reward's {d} dimension (0 = off; higher pushes "
                  f"the {d} score up)", min=-200.0, max=200.0, slider=True) for d in DIMENSIONS),
    ),
    train_options=(
        Setting("flow_t", str, "how flow training times are drawn -- logit-normal (default, as Wan's and SD3's "
                "trainers do), shifted (the sampler's shifted density) or uniform",
                choices=("logit-normal", "shifted", "uniform")),
    ),
    dimensions=DIMENSIONS,
    capabilities=frozenset({"reward-guidance"}),
    variations="modalities.video.moving:variations",
    rewards=(
        Reward("judge-visual", "the moving-shapes judge's visual score: shape, colour, count and background right, "
               "less for flicker", "modalities.video.rewards:visual", dimension="visual"),
        Reward("judge-motion", "the judge's motion score: direction and speed right, less for jerky motion",
               "modalities.video.rewards:motion", dimension="motion"),
        Reward("judge-text", "the judge's text alignment: share of the prompt's six attributes in the clip",
               "modalities.video.rewards:text", dimension="text"),
        *(Reward(f"taste-{name}", f"a simulated viewer who {what} (the opposite of taste-{opposite})",
                 f"modalities.video.rewards:{name}") for name, what, opposite in _TASTES),
    ),
)
