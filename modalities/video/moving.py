"""The moving-shapes world: short clips of coloured shapes crossing a plain background, the prompts that
describe them, a renderer, a judge that measures any clip, and simulated tastes.

Prompts: "a red circle moving quickly to the left on a white background", "two blue squares moving slowly
upwards on a black background" -- shape, colour, count, direction, speed and background. The split into
train and held-out prompts is by a hash of the prompt's content, so it never changes.

The renderer draws ``frames`` frames of ``size`` x ``size`` pixels (uint8 RGB, hard edges) from a spec and a
:class:`Style` (how smooth the motion is, and whether the path runs through the centre or off to a side),
and returns the true centroid track with the frames.

The judge (:func:`analyse`, :func:`judge`) reads only pixels, so it measures a model's clips as well as the
world's: the background is the commonest border colour; the shapes are the pixels far from it, split into
connected components per frame; their colour is the nearest named colour; their shape is how much of their
bounding box they fill (square ~1, circle ~0.79, triangle ~0.5); motion is the track of the shapes' mean
centroid -- direction from the net displacement, speed from the median step, smoothness from how much the
steps vary; flicker is the frame-to-frame change of the background. Scores per dimension: ``visual``
(colour, shape, count and background right, less up to .5 for flicker), ``motion`` (direction and speed
right, less up to .5 for jerk beyond what the pixel grid gives a smooth track), ``text`` (the share of the prompt's six attributes the judge finds).
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..pixels import components

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (235, 215, 40),
           "purple": (150, 60, 200), "orange": (245, 140, 30)}
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15), "gray": (128, 128, 128)}
COUNTS = (1, 2)
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
SPEEDS = {"slowly": 1.25, "quickly": 2.75}  # pixels per frame at 32 px
_DIRECTION_WORDS = {"left": "to the left", "right": "to the right", "up": "upwards", "down": "downwards"}
_COUNT_WORDS = {1: "a", 2: "two"}
FRAMES, SIZE = 8, 32
RADIUS = 4.0  # pixels at 32 px
_SPEED_SPLIT = 2.0  # judge: median step in pixels (at 32 px) between slow and fast
_FILL = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}
ATTRIBUTES = ("shape", "colour", "count", "direction", "speed", "background")
DIMENSIONS = ("visual", "motion", "text")


@dataclass(frozen=True)
class Spec:
    shape: str
    colour: str
    count: int
    direction: str
    speed: str
    background: str


@dataclass(frozen=True)
class Style:
    """How a clip moves beyond what its prompt says: ``jerk`` (0 smooth .. 1: steps vary by up to +-100%
    and wobble sideways) and ``offset`` (0: the path runs through the centre .. 1: along the edge)."""

    jerk: float = 0.0
    offset: float = 0.0


def prompt_of(spec: Spec) -> str:
    noun = spec.shape + ("s" if spec.count > 1 else "")
    return (f"{_COUNT_WORDS[spec.count]} {spec.colour} {noun} moving {spec.speed} {_DIRECTION_WORDS[spec.direction]} "
            f"on a {spec.background} background")


_PROMPT_RE = re.compile(
    r"^(?P<count>a|two) (?P<colour>\w+) (?P<shape>circle|square|triangle)s? moving (?P<speed>slowly|quickly) "
    r"(?P<dir>to the left|to the right|upwards|downwards) on an? (?P<bg>\w+) background$")


def parse_prompt(prompt: str) -> Spec | None:
    m = _PROMPT_RE.match(prompt.strip().lower())
    if not m or m["colour"] not in COLOURS or m["bg"] not in BACKGROUNDS:
        return None
    direction = {v: k for k, v in _DIRECTION_WORDS.items()}[m["dir"]]
    return Spec(m["shape"], m["colour"], 1 if m["count"] == "a" else 2, direction, m["speed"], m["bg"])


def vocabulary() -> list[str]:
    """Every word a prompt of the world can use (for the built-in model's tokenizer)."""
    words = {"a", "an", "two", "moving", "to", "the", "on", "background", "upwards", "downwards", "left", "right"}
    words |= set(SHAPES) | {s + "s" for s in SHAPES} | set(COLOURS) | set(BACKGROUNDS) | set(SPEEDS)
    return sorted(words)


def all_specs() -> list[Spec]:
    return [Spec(s, c, n, d, v, b) for s in SHAPES for c in COLOURS for n in COUNTS for d in DIRECTIONS
            for v in SPEEDS for b in BACKGROUNDS if not (c == "yellow" and b == "white")]  # yellow on white: too faint


def split_of(spec: Spec) -> str:
    """``train`` or ``test`` (about one prompt in five), by a hash of the prompt."""
    return "test" if int(hashlib.sha256(prompt_of(spec).encode()).hexdigest(), 16) % 5 == 0 else "train"


def split_prompts(split: str, n: int, seed: int = 0) -> list[str]:
    """``n`` prompts of ``split`` in a seeded order (repeating when there are fewer)."""
    pool = [prompt_of(s) for s in all_specs() if split_of(s) == split]
    random.Random(seed).shuffle(pool)
    return [pool[i % len(pool)] for i in range(n)]


def variations(prompts: Sequence[str], n: int, seed: int = 0) -> list[str]:
    """``n`` new prompts for each world prompt of ``prompts``, each with one attribute changed, none already in
    ``prompts``; prompts outside the world's grammar have none."""
    rng = random.Random(seed)
    seen, out = set(prompts), []
    choices = {"shape": SHAPES, "colour": tuple(COLOURS), "count": COUNTS, "direction": tuple(DIRECTIONS),
               "speed": tuple(SPEEDS), "background": tuple(BACKGROUNDS)}
    for prompt in prompts:
        spec = parse_prompt(prompt)
        if spec is None:
            continue
        made = 0
        for _ in range(50 * n):
            if made == n:
                break
            attr = rng.choice(sorted(choices))
            varied = Spec(**{**spec.__dict__, attr: rng.choice(choices[attr])})
            if varied.colour == "yellow" and varied.background == "white":
                continue
            text = prompt_of(varied)
            if text not in seen:
                seen.add(text)
                out.append(text)
                made += 1
    return out


# -- rendering ---------------------------------------------------------------------------------------------


def _mask(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    if shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    if shape == "square":
        return (np.abs(xx - cx) <= r * 0.89) & (np.abs(yy - cy) <= r * 0.89)  # the same area as the circle
    h = r * 2.4  # an upward triangle of about the circle's area
    top, base = cy - h / 2, cy + h / 2
    half = (yy - top) / h * (h / np.sqrt(3))
    return (yy >= top) & (yy <= base) & (np.abs(xx - cx) <= half)


def render(spec: Spec, style: Style = Style(), *, seed: int = 0, frames: int = FRAMES,
           size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(frames [F, size, size, 3] uint8, the true mean centroid per frame [F, 2] in pixels)."""
    rng = np.random.default_rng(seed)
    scale = size / SIZE
    r = RADIUS * scale
    dx, dy = DIRECTIONS[spec.direction]
    steps = np.full(frames - 1, SPEEDS[spec.speed] * scale)
    side = np.zeros(frames - 1)
    if style.jerk > 0:
        steps = steps * (1 + style.jerk * rng.uniform(-1, 1, frames - 1))
        side = style.jerk * 1.5 * scale * rng.uniform(-1, 1, frames - 1)
    along = np.concatenate([[0.0], np.cumsum(steps)])
    across = np.concatenate([[0.0], np.cumsum(side)])
    along -= along[-1] / 2  # the path is centred along its direction
    gap = 3.2 * r if spec.count == 2 else 0.0  # two shapes travel side by side, apart
    margin = r + 1.5 * scale
    lane = style.offset * (size / 2 - margin - gap / 2) * rng.choice([-1, 1])
    c = size / 2
    img = np.empty((frames, size, size, 3), dtype=np.uint8)
    img[:] = BACKGROUNDS[spec.background]
    track = np.zeros((frames, 2))
    for f in range(frames):
        centres = []
        for k in range(spec.count):
            off = lane + across[f] + (k - (spec.count - 1) / 2) * gap
            x = c + dx * along[f] - dy * off
            y = c + dy * along[f] + dx * off
            centres.append((x, y))
            img[f][_mask(spec.shape, x, y, r, size)] = COLOURS[spec.colour]
        track[f] = np.mean(centres, axis=0)
    return img, track


def sample_style(rng: random.Random) -> Style:
    return Style(jerk=rng.choice([0.0, 0.0, 0.3, 0.6]), offset=rng.choice([0.0, 0.3, 0.7]))


# -- the judge ----------------------------------------------------------------------------------------------


@dataclass
class Analysis:
    background: str | None
    colour: str | None
    shape: str | None
    count: int
    direction: str | None
    speed: str | None
    step: float  # median step of the track, pixels per frame at 32 px
    jerk: float  # variation of the steps (std of the step vectors / their mean length)
    offset: float  # mean distance of the track from the centre, as a share of half the frame
    flicker: float  # mean frame-to-frame change of the background colour (0-255)


def _nearest(rgb: np.ndarray, table: dict[str, tuple[int, int, int]]) -> str:
    names = list(table)
    d = [float(np.sum((rgb - np.asarray(table[n], dtype=np.float64)) ** 2)) for n in names]
    return names[int(np.argmin(d))]


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, as boolean masks."""
    out = []
    for pix in components(mask):
        m = np.zeros_like(mask, dtype=bool)
        m[pix[:, 0], pix[:, 1]] = True
        out.append(m)
    return out


def analyse(clip: np.ndarray) -> Analysis:
    """Measure a clip ([F, H, W, 3] uint8, any size) -- see the module docstring."""
    clip = np.asarray(clip)
    F, H, W, _ = clip.shape
    scale = H / SIZE
    border = np.concatenate([clip[:, 0], clip[:, -1], clip[:, :, 0], clip[:, :, -1]], axis=1).reshape(-1, 3)
    bg_rgb = np.median(border, axis=0)
    background = _nearest(bg_rgb, BACKGROUNDS)
    per_frame_bg = np.median(np.concatenate([clip[:, 0], clip[:, -1]], axis=1), axis=1)  # [F, 3]
    flicker = float(np.mean(np.abs(np.diff(per_frame_bg, axis=0)))) if F > 1 else 0.0
    fg = np.abs(clip.astype(np.int16) - bg_rgb.astype(np.int16)).sum(-1) > 90
    min_px = max(3, int(0.25 * np.pi * (RADIUS * scale) ** 2))
    counts, fills, colours, track = [], [], [], []
    for f in range(F):
        comps = [m for m in _components(fg[f]) if m.sum() >= min_px]
        counts.append(len(comps))
        if not comps:
            track.append(None)
            continue
        cents = []
        for m in comps:
            ys, xs = np.nonzero(m)
            box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
            touches = ys.min() == 0 or xs.min() == 0 or ys.max() == H - 1 or xs.max() == W - 1
            if not touches:
                fills.append(m.sum() / box)
            colours.append(_nearest(clip[f][m].astype(np.float64).mean(0), COLOURS))
            cents.append((xs.mean() + 0.5, ys.mean() + 0.5))
        track.append(np.mean(cents, axis=0))
    count = int(np.median(counts)) if counts else 0
    colour = max(set(colours), key=colours.count) if colours else None
    shape = None
    if fills:
        fill = float(np.median(fills))
        shape = min(_FILL, key=lambda s: abs(_FILL[s] - fill))
    pts = np.array([t for t in track if t is not None])
    direction = speed = None
    step = jerk = offset = 0.0
    if len(pts) >= 2:
        net = pts[-1] - pts[0]
        if abs(net[0]) >= abs(net[1]):
            direction = "right" if net[0] > 0 else "left"
        else:
            direction = "down" if net[1] > 0 else "up"
        d = np.diff(pts, axis=0)
        lengths = np.linalg.norm(d, axis=1)
        step = float(np.median(lengths)) / scale
        speed = "quickly" if step > _SPEED_SPLIT else "slowly"
        jerk = float(np.linalg.norm(d - d.mean(0), axis=1).mean() / max(lengths.mean(), 1e-6))
        offset = float(np.linalg.norm(pts - np.array([W / 2, H / 2]), axis=1).mean() / (W / 2))
    return Analysis(background, colour, shape, count, direction, speed, step, jerk, offset, flicker)


def attributes_heard(spec: Spec, a: Analysis) -> dict[str, bool]:
    return {"shape": a.shape == spec.shape, "colour": a.colour == spec.colour, "count": a.count == spec.count,
            "direction": a.direction == spec.direction, "speed": a.speed == spec.speed,
            "background": a.background == spec.background}


def judge(prompt: str, clip: np.ndarray) -> dict[str, float]:
    """Scores in [0, 1] per dimension (``visual``, ``motion``, ``text``) of a clip for a world prompt."""
    spec = parse_prompt(prompt)
    if spec is None:
        raise ValueError("the moving-shapes judge scores its world's prompts only (like 'a red circle moving "
                         f"quickly to the left on a white background'); got {prompt!r}")
    a = analyse(clip)
    heard = attributes_heard(spec, a)
    visual = np.mean([heard["colour"], heard["shape"], heard["count"], heard["background"]]) - min(0.5, a.flicker / 40)
    # steps of a smooth shape still vary by a pixel (its centroid moves on the pixel grid): jerk up to .35 is free
    motion = np.mean([heard["direction"], heard["speed"]]) - min(0.5, max(0.0, a.jerk - 0.35))
    return {"visual": float(max(0.0, visual)), "motion": float(max(0.0, motion)), "text": float(np.mean(list(heard.values())))}


# -- tastes ---------------------------------------------------------------------------------------------------

TASTES = {  # name -> (what it likes, its opposite)
    "smooth": ("motion at an even pace on a straight line", "jerky"),
    "jerky": ("uneven, wobbling motion", "smooth"),
    "slow": ("slow motion", "fast"),
    "fast": ("fast motion", "slow"),
    "centred": ("shapes that travel through the middle", "roaming"),
    "roaming": ("shapes that travel along the edges", "centred"),
}


def taste(name: str, clips: Sequence[np.ndarray]) -> list[float]:
    """A simulated viewer's score of each clip (higher is better); each taste is its opposite's negative."""
    if name not in TASTES:
        raise ValueError(f"unknown taste {name!r}; known: {', '.join(TASTES)}")
    out = []
    for clip in clips:
        a = analyse(clip)
        value = {"smooth": -a.jerk, "slow": -a.step, "centred": -a.offset}.get(name)
        if value is None:
            value = -{"jerky": -a.jerk, "fast": -a.step, "roaming": -a.offset}[name]
        out.append(float(value))
    return out
