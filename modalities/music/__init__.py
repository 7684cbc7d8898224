"""Music modality: the melody world, the built-in melody model, MusicGen and ACE-Step.

``SPEC`` is what the rest of Palate knows about music (imported without torch); the model code is
``modalities.music.adapter.MusicAdapter``, which loads the family a model belongs to.
"""
from pathlib import Path
from typing import Any, Mapping

from ..spec import ModalitySpec, Reward, Setting


def _seconds(params: Mapping[str, Any]) -> str:
    s = params.get("seconds")
    return f"{float(s):.1f} s" if s is not None else ""


_TASTES = (
    ("stepwise", "moves in small steps between notes", "leaping"),
    ("leaping", "likes wide leaps between notes", "stepwise"),
    ("consonant", "likes every note in the key and smooth intervals", "tense"),
    ("tense", "likes chromatic notes and dissonant leaps", "consonant"),
    ("staccato", "likes short, detached notes", "legato"),
    ("legato", "likes long, connected notes", "staccato"),
    ("bright", "likes a bright sound (high spectral centroid)", "dark"),
    ("dark", "likes a dark, mellow sound", "bright"),
)

SPEC = ModalitySpec(
    name="music",
    adapter="modalities.music.adapter:MusicAdapter",
    label="Music",
    media="audio/",
    display="audio",
    score_kinds=("autoregressive", "flow"),  # melody-lm and MusicGen; ACE-Step
    export_formats=("peft", "merged", "diffusers"),  # diffusers: ACE-Step only; merged: token models only
    default_model="melody-lm",
    prompt_placeholder="a slow sad melody in A minor on a harp, descending",
    caption=_seconds,
    settings=(
        Setting("duration", float, "clip length in seconds (built-in model: at most 10, its melodies last 5-6 s; "
                "MusicGen: up to its context, default 8; ACE-Step: default 10)", min=0.5, max=120.0),
        Setting("temperature", float, "sampling temperature (0 = greedy; default: the model's)", min=0.0, max=10.0),
        Setting("top_p", float, "nucleus sampling mass (default: the model's)", min=0.0, max=1.0),
        Setting("top_k", int, "MusicGen: sample from the k likeliest codes (0 = off; default: the model's)",
                min=0, max=4096),
        Setting("guidance", float, "MusicGen, ACE-Step: guidance scale (1 = off; default: the model's; ACE-Step "
                "turbo checkpoints have it distilled in)", min=0.0, max=30.0),
        Setting("steps", int, "ACE-Step: denoising steps (default 8, as its turbo checkpoints run)", min=1, max=200),
        Setting("melody", Path, "MusicGen-Melody: a reference tune (audio file) whose melody the clips follow "
                "(its chroma, the first 30 s)", accept="audio/"),
    ),
    train_options=(
        Setting("flow_t", str, "ACE-Step: how flow training times are drawn -- logit-normal (default), shifted (its "
                "sampler's shift-3 density) or uniform", choices=("logit-normal", "shifted", "uniform")),
    ),
    variations="modalities.music.melody:variations",
    rewards=(
        Reward("melody-judge", "the melody world's judge: share of the prompt's key, tempo, instrument, register "
               "and contour it hears", "modalities.music.rewards:adherence", dimension="prompt"),
        Reward("clip-quality", "signal quality of any clip: penalises silence, clipping and noise (spectral flatness); "
               "a designed stand-in for MusicRL's quality model", "modalities.music.rewards:quality",
               dimension="quality"),
        *(Reward(f"taste-{name}", f"a simulated listener who {what} (the opposite of taste-{opposite})",
                 f"modalities.music.rewards:{name}") for name, what, opposite in _TASTES),
    ),
)
