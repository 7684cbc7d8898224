"""Music modality: the melody world, the built-in melody model, and MusicGen.

``SPEC`` is what the rest of Palate knows about music (imported without torch); the model code is
``modalities.music.adapter.MusicAdapter``, which loads the family a model belongs to.
"""
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
    score_kinds=("autoregressive",),
    export_formats=("peft", "merged"),
    default_model="melody-lm",
    prompt_placeholder="a slow sad melody in A minor on a harp, descending",
    caption=_seconds,
    settings=(
        Setting("duration", float, "clip length in seconds (built-in model: at most 10, its melodies last 5-6 s; "
                "MusicGen: up to its context, default 8)", min=0.5, max=120.0),
        Setting("temperature", float, "sampling temperature (0 = greedy; default: the model's)", min=0.0, max=10.0),
        Setting("top_p", float, "nucleus sampling mass (default: the model's)", min=0.0, max=1.0),
        Setting("top_k", int, "MusicGen: sample from the k likeliest codes (0 = off; default: the model's)",
                min=0, max=4096),
        Setting("guidance", float, "MusicGen: classifier-free guidance scale (1 = off; default: the model's)",
                min=0.0, max=30.0),
    ),
    variations="modalities.music.melody:variations",
    rewards=(
        Reward("melody-judge", "the melody world's judge: share of the prompt's key, tempo, instrument, register "
               "and contour it hears", "modalities.music.rewards:adherence", dimension="prompt"),
        *(Reward(f"taste-{name}", f"a simulated listener who {what} (the opposite of taste-{opposite})",
                 f"modalities.music.rewards:{name}") for name, what, opposite in _TASTES),
    ),
)
