"""The shapes world: compositional prompts, a renderer, a judge and tastes.

A procedural world with a known ground truth, so that Palate can *measure*
whether a method moves a model toward a preference without breaking prompt
adherence (see ../shared/DESIGN.md, "Built-in default models").

- :func:`sample_spec` draws a prompt's meaning (count 1-3, size, one of 8
  colours, one of 3 shapes, one of 8 backgrounds, optional position for a
  single shape) and :func:`prompt_of` writes it as text, e.g. "two small red
  circles on a blue background".
- :func:`render` draws an image for a spec; its *style* (saturation, placement,
  size jitter, background noise) varies at random, which is what the tastes
  react to and what the default model learns to vary.
- :class:`Judge` measures prompt adherence of ANY image for a prompt, per
  attribute, by segmenting it (background from the border, connected
  components for the shapes).
- :data:`TASTES` are simulated users with a consistent preference that is not
  prompt adherence: saturated colours, centred composition, large shapes,
  clean backgrounds, and two who want the opposite of two of those (muted
  colours, small shapes; :data:`OPPOSITES`).
"""
from __future__ import annotations

import colorsys
import math
import random
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..pixels import components as _components

# -- vocabulary -------------------------------------------------------------

# Fully saturated reference colours. Shape colours and backgrounds share names.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 25),
    "green": (35, 165, 45),
    "cyan": (30, 195, 205),
    "blue": (35, 65, 225),
    "purple": (140, 45, 190),
    "pink": (240, 110, 185),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "black": (20, 20, 20),
}
SHAPE_COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
BACKGROUNDS = ("white", "gray", "black", "red", "yellow", "green", "blue", "purple")
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
COUNTS = (1, 2, 3)
POSITIONS = ("left", "right", "top", "bottom", "center")
_COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
_POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}

RESOLUTION = 32  # the default model's image size
_SUPERSAMPLE = 4
# Radii as a fraction of the image side (small / large).
_RADIUS = {"small": 0.12, "large": 0.23}
_LARGE_CAP = {2: 0.21, 3: 0.19}  # several large shapes must still fit apart
_SIZE_THRESHOLD_PX = 10.5  # judge: a shape's longer side at 32 px, small below, large above


@dataclass(frozen=True)
class Spec:
    """The meaning of a prompt."""

    count: int
    size: str
    colour: str
    shape: str
    background: str
    position: str | None = None

    def __post_init__(self) -> None:
        if self.count not in COUNTS:
            raise ValueError(f"count must be one of {COUNTS}")
        if self.size not in SIZES or self.colour not in SHAPE_COLOURS or self.shape not in SHAPES:
            raise ValueError(f"unknown size/colour/shape in {self}")
        if self.background not in BACKGROUNDS or self.background == self.colour:
            raise ValueError(f"background must be one of {BACKGROUNDS} and differ from the shape colour")
        if self.position is not None and (self.position not in POSITIONS or self.count != 1):
            raise ValueError("a position is given only for a single shape")


def prompt_of(spec: Spec) -> str:
    noun = spec.shape if spec.count == 1 else spec.shape + "s"
    text = f"{_COUNT_WORDS[spec.count]} {spec.size} {spec.colour} {noun} on a {spec.background} background"
    if spec.position:
        text += " " + _POSITION_PHRASES[spec.position]
    return text


_PROMPT_RE = re.compile(
    r"^(?P<count>a|an|one|two|three) (?P<size>small|large) (?P<colour>\w+) (?P<shape>circle|square|triangle)s? "
    r"on an? (?P<bg>\w+) background(?: (?P<pos>on the left|on the right|at the top|at the bottom|in the center))?$"
)


def parse_prompt(prompt: str) -> Spec | None:
    """The spec a shapes-world prompt describes, or None if it is not one."""
    m = _PROMPT_RE.match(" ".join(prompt.lower().strip().rstrip(".").split()))
    if not m:
        return None
    count = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3}[m["count"]]
    pos = {v: k for k, v in _POSITION_PHRASES.items()}.get(m["pos"]) if m["pos"] else None
    try:
        return Spec(count, m["size"], m["colour"], m["shape"], m["bg"], pos)
    except ValueError:
        return None


def sample_spec(rng: random.Random) -> Spec:
    count = rng.choice(COUNTS)
    colour = rng.choice(SHAPE_COLOURS)
    background = rng.choice([b for b in BACKGROUNDS if b != colour])
    position = rng.choice(POSITIONS) if count == 1 and rng.random() < 0.5 else None
    return Spec(count, rng.choice(SIZES), colour, rng.choice(SHAPES), background, position)


def variations(prompts: Sequence[str], n: int, seed: int = 0) -> list[str]:
    """``n`` new prompts for each shapes-world prompt of ``prompts``, each with one attribute changed
    (count, size, colour, shape, background or position), none of them already in ``prompts``; prompts
    outside the world's grammar have none."""
    rng = random.Random(seed)
    seen, out = set(prompts), []
    for prompt in prompts:
        spec = parse_prompt(prompt)
        if spec is None:
            continue
        made = 0
        for _ in range(50 * n):
            if made == n:
                break
            attr = rng.choice(["count", "size", "colour", "shape", "background", "position"])
            values = {"count": COUNTS, "size": SIZES, "colour": SHAPE_COLOURS, "shape": SHAPES,
                      "background": BACKGROUNDS, "position": (None, *POSITIONS)}[attr]
            try:
                varied = Spec(**{**spec.__dict__, attr: rng.choice(values)})
            except ValueError:  # e.g. a colour equal to the background, a position for two shapes
                continue
            text = prompt_of(varied)
            if text not in seen:
                seen.add(text)
                out.append(text)
                made += 1
    return out


def vocabulary() -> list[str]:
    """Every word a shapes-world prompt can use (for the built-in tokenizer)."""
    words = set()
    for s in SHAPES:
        words |= {s, s + "s"}
    words |= set(PALETTE) | set(SIZES) | {"a", "an", "one", "two", "three", "on", "background", "the", "at", "in"}
    words |= {w for p in _POSITION_PHRASES.values() for w in p.split()}
    return sorted(words)


def split_prompts() -> tuple[list[str], list[str]]:
    """Every prompt of the world, split once and for all into train and
    held-out (about 10%).

    The split is by *scene* -- (count, size, colour, shape, background) -- with
    a hash of the scene so it never moves: all position variants of a scene
    fall on the same side, so a held-out prompt's scene was never trained on.
    """
    import hashlib

    train, held = [], []
    for count in COUNTS:
        for size in SIZES:
            for colour in SHAPE_COLOURS:
                for shape in SHAPES:
                    for bg in BACKGROUNDS:
                        if bg == colour:
                            continue
                        scene = f"{count}|{size}|{colour}|{shape}|{bg}"
                        h = int(hashlib.sha256(scene.encode()).hexdigest()[:8], 16)
                        side = held if h % 10 == 0 else train
                        for pos in (None, *POSITIONS) if count == 1 else (None,):
                            side.append(prompt_of(Spec(count, size, colour, shape, bg, pos)))
    return train, held


# -- rendering ----------------------------------------------------------------


@dataclass(frozen=True)
class Style:
    """How a render looks beyond what the prompt says (what tastes judge)."""

    saturation: float = 1.0  # 1 = the palette colour, lower = toward grey
    spread: float = 0.5  # 0 = shapes packed around the centre, 1 = anywhere
    size_scale: float = 1.0
    noise: float = 0.0  # std of background noise, in [0, 1] units

    @staticmethod
    def random(rng: random.Random) -> "Style":
        return Style(
            saturation=rng.uniform(0.5, 1.0),
            spread=rng.uniform(0.0, 1.0),
            size_scale=rng.uniform(0.85, 1.15),
            noise=rng.choice([0.0, 0.0, rng.uniform(0.0, 0.05)]),
        )


def _desaturate(rgb: tuple[int, int, int], s: float) -> tuple[int, int, int]:
    h, l, sat = colorsys.rgb_to_hls(*(c / 255 for c in rgb))
    r, g, b = colorsys.hls_to_rgb(h, l, sat * s)
    return (round(r * 255), round(g * 255), round(b * 255))


def _bbox(shape: str, cx: float, cy: float, r: float) -> tuple[float, float, float, float]:
    """Axis-aligned box (x0, y0, x1, y1) of a drawn shape."""
    if shape == "circle":
        return cx - r, cy - r, cx + r, cy + r
    if shape == "square":
        h = r * 0.89
        return cx - h, cy - h, cx + h, cy + h
    t = r * 1.1
    return cx - t, cy - t, cx + t, cy + t * 0.85


def _apart(a: tuple[float, float, float, float], b: tuple[float, float, float, float], gap: float) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _centres(spec: Spec, radius: float, style: Style, rng: random.Random, side: float) -> list[tuple[float, float]]:
    """Centres (in pixels of a side x side canvas) whose shapes stay apart by
    a visible gap, so that every shape is its own blob after downsampling."""
    box = _bbox(spec.shape, 0, 0, radius)
    edge = 1.5 * _SUPERSAMPLE  # keep the border free: the judge reads the background there
    lo_x, hi_x = -box[0] + edge, side - box[2] - edge
    lo_y, hi_y = -box[1] + edge, side - box[3] - edge
    if spec.position is not None:
        mid_x, mid_y = (lo_x + hi_x) / 2, (lo_y + hi_y) / 2
        jitter = side * 0.03
        x = {"left": lo_x + jitter, "right": hi_x - jitter}.get(spec.position, mid_x)
        y = {"top": lo_y + jitter, "bottom": hi_y - jitter}.get(spec.position, mid_y)
        return [(x + rng.uniform(-jitter, jitter), y + rng.uniform(-jitter, jitter))]
    gap = 2.5 * _SUPERSAMPLE
    # spread 0: gathered around the centre; 1: anywhere on the canvas
    frac = 0.2 + 0.8 * style.spread
    for attempt in range(500):
        cx, cy = (lo_x + hi_x) / 2, (lo_y + hi_y) / 2
        rx, ry = (hi_x - lo_x) / 2 * frac, (hi_y - lo_y) / 2 * frac
        pts = [(cx + rng.uniform(-rx, rx), cy + rng.uniform(-ry, ry)) for _ in range(spec.count)]
        boxes = [_bbox(spec.shape, x, y, radius) for x, y in pts]
        if all(_apart(a, b, gap) for i, a in enumerate(boxes) for b in boxes[i + 1 :]):
            if spec.count > 1 and style.spread < 0.5:
                # pull the group's centre onto the image centre (a centred composition)
                gx = sum(x for x, _ in pts) / len(pts) - cx
                gy = sum(y for _, y in pts) / len(pts) - cy
                shifted = [(x - gx, y - gy) for x, y in pts]
                if all(lo_x <= x <= hi_x and lo_y <= y <= hi_y for x, y in shifted):
                    pts = shifted
            return pts
        frac = min(1.0, frac * 1.02)
    # tight packings (three large shapes) rarely come out of random draws: use corners
    mid_x = (lo_x + hi_x) / 2
    if spec.count == 2:
        return [(lo_x, lo_y), (hi_x, hi_y)] if rng.random() < 0.5 else [(hi_x, lo_y), (lo_x, hi_y)]
    if spec.count == 3:
        return [(lo_x, lo_y), (hi_x, lo_y), (mid_x, hi_y)] if rng.random() < 0.5 else [(lo_x, hi_y), (hi_x, hi_y), (mid_x, lo_y)]
    return [(mid_x, (lo_y + hi_y) / 2)]


def render(spec: Spec, style: Style | None = None, *, seed: int | None = None, resolution: int = RESOLUTION) -> Image.Image:
    """An image for ``spec``; ``style`` (or a random one from ``seed``) sets the look."""
    return render_with_truth(spec, style, seed=seed, resolution=resolution)[0]


def render_with_truth(
    spec: Spec, style: Style | None = None, *, seed: int | None = None, resolution: int = RESOLUTION
) -> tuple[Image.Image, dict]:
    """:func:`render`, plus the ground truth of the drawing (for validating
    the judge and the tastes): the style, centres (0-1), radius (0-1)."""
    rng = random.Random(seed)
    style = style or Style.random(rng)
    side = resolution * _SUPERSAMPLE
    bg = PALETTE[spec.background]
    img = Image.new("RGB", (side, side), bg)
    draw = ImageDraw.Draw(img)
    colour = _desaturate(PALETTE[spec.colour], style.saturation)
    radius = _RADIUS[spec.size] * side * style.size_scale
    if spec.size == "large" and spec.count > 1:
        radius = min(radius, _LARGE_CAP[spec.count] * side)
    centres = _centres(spec, radius, style, rng, side)
    for cx, cy in centres:
        if spec.shape == "circle":
            draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
        elif spec.shape == "square":
            r = radius * 0.89  # same area impression as the circle
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
        else:
            r = radius * 1.1
            draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.85), (cx - r, cy + r * 0.85)], fill=colour)
    img = img.resize((resolution, resolution), Image.BOX)
    if style.noise > 0:
        arr = np.asarray(img, dtype=np.float32) / 255.0
        nrng = np.random.default_rng(rng.randrange(2**32))
        arr = np.clip(arr + nrng.normal(0.0, style.noise, arr.shape), 0.0, 1.0)
        img = Image.fromarray((arr * 255 + 0.5).astype(np.uint8))
    truth = {"style": style, "centres": [(x / side, y / side) for x, y in centres], "radius": radius / side}
    return img, truth


# -- judging ------------------------------------------------------------------


def _classify_colour(rgb: np.ndarray, candidates: Iterable[str]) -> str:
    """Nearest named colour: by hue for chromatic colours, by lightness for greys."""
    r, g, b = (float(c) / 255 for c in rgb)
    h, l, s = colorsys.rgb_to_hls(r, g, b)
    chroma = max(r, g, b) - min(r, g, b)
    names = list(candidates)
    greys = [n for n in names if n in ("white", "gray", "black")]
    chromatic = [n for n in names if n not in greys]
    if chroma < 0.18 and greys:
        return min(greys, key=lambda n: abs(colorsys.rgb_to_hls(*(c / 255 for c in PALETTE[n]))[1] - l))
    if not chromatic:
        return greys[0]

    def hue_dist(n: str) -> float:
        hn = colorsys.rgb_to_hls(*(c / 255 for c in PALETTE[n]))[0]
        d = abs(hn - h)
        return min(d, 1 - d)

    # pink and purple share hues with red/blue; lightness separates them a little
    return min(chromatic, key=lambda n: hue_dist(n) + 0.15 * abs(colorsys.rgb_to_hls(*(c / 255 for c in PALETTE[n]))[1] - l))


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


@dataclass
class Analysis:
    """What the judge sees in an image."""

    background: str
    background_rgb: np.ndarray
    background_std: float  # noise of the background, away from the shapes' edges
    objects: list[dict] = field(default_factory=list)  # colour, shape, size, centroid, area, saturation
    foreground_fraction: float = 0.0
    speck_fraction: float = 0.0  # pixels in blobs too small to be shapes (artefacts)


def analyse(image: Image.Image) -> Analysis:
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    n = arr.shape[0]
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    bg_rgb = np.median(border, axis=0)
    dist = np.sqrt(((arr - bg_rgb) ** 2).sum(-1))
    # foreground: clearly away from the background colour, beyond its noise
    border_dist = np.sqrt(((border - bg_rgb) ** 2).sum(-1))
    noise_dist = border_dist[border_dist < 90.0]
    noise_level = float(np.percentile(noise_dist, 95)) if len(noise_dist) else 0.0
    mask = dist > max(40.0, 1.5 * noise_level)
    # background noise measured away from the shapes' soft edges
    far = ~_dilate(_dilate(mask))
    bg_pixels = arr[far]
    bg_std = float(bg_pixels.std(axis=0).mean() / 255.0) if len(bg_pixels) > 8 else 0.0
    scale = n / RESOLUTION
    min_pixels = max(4, int(6 * scale * scale))
    all_comps = _components(mask)
    comps = [c for c in all_comps if len(c) >= min_pixels]
    specks = sum(len(c) for c in all_comps if len(c) < min_pixels)
    objects = []
    for c in comps:
        ys, xs = c[:, 0], c[:, 1]
        hgt, wid = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        fill = len(c) / float(hgt * wid)
        # where the mass sits vertically: a triangle (apex up) is bottom-heavy
        rel = (ys.mean() - ys.min()) / max(1.0, hgt - 1)
        if fill > 0.88:
            shape = "square"
        elif fill < 0.66 or rel > 0.56:
            shape = "triangle"
        else:
            shape = "circle"
        # colour from the component's core: its edge pixels are blends with the background
        d = dist[ys, xs]
        core = d >= np.percentile(d, 50)
        pix = arr[ys[core], xs[core]]
        colour_rgb = np.median(pix, axis=0)
        rgb01 = colour_rgb / 255
        sat = float((rgb01.max() - rgb01.min()))
        objects.append(
            {
                "colour": _classify_colour(colour_rgb, SHAPE_COLOURS),
                "shape": shape,
                "size": "large" if max(hgt, wid) / scale >= _SIZE_THRESHOLD_PX else "small",
                "centroid": (float(xs.mean() / n), float(ys.mean() / n)),
                "area": len(c) / float(n * n),
                "saturation": sat,
            }
        )
    return Analysis(
        background=_classify_colour(bg_rgb, BACKGROUNDS),
        background_rgb=bg_rgb,
        background_std=bg_std,
        objects=objects,
        foreground_fraction=float(mask.mean()),
        speck_fraction=specks / float(n * n),
    )


ATTRIBUTES = ("colour", "shape", "count", "size", "background", "position")


@dataclass(frozen=True)
class Verdict:
    scores: dict[str, bool]  # attribute -> correct (position only when the prompt has one)

    @property
    def overall(self) -> bool:
        return all(self.scores.values())

    @property
    def fraction(self) -> float:
        return sum(self.scores.values()) / len(self.scores)


class Judge:
    """Programmatic prompt adherence for any image of a shapes-world prompt."""

    def __call__(self, image: Image.Image, prompt: str | Spec) -> Verdict:
        spec = prompt if isinstance(prompt, Spec) else parse_prompt(prompt)
        if spec is None:
            raise ValueError(f"not a shapes-world prompt: {prompt!r}")
        a = analyse(image)
        objs = a.objects
        majority = lambda key: max(  # noqa: E731
            ({o[key] for o in objs}), key=lambda v: sum(o[key] == v for o in objs)
        ) if objs else None
        scores = {
            "colour": bool(objs) and all(o["colour"] == spec.colour for o in objs),
            "shape": bool(objs) and majority("shape") == spec.shape,
            "count": len(objs) == spec.count,
            "size": bool(objs) and majority("size") == spec.size,
            "background": a.background == spec.background,
        }
        if spec.position is not None:
            ok = False
            if len(objs) == 1:
                x, y = objs[0]["centroid"]
                ok = {
                    "left": x < 0.4,
                    "right": x > 0.6,
                    "top": y < 0.4,
                    "bottom": y > 0.6,
                    "center": abs(x - 0.5) < 0.15 and abs(y - 0.5) < 0.15,
                }[spec.position]
            scores["position"] = ok
        return Verdict(scores)


def evaluate(judge: Judge, pairs: Iterable[tuple[Image.Image, str]]) -> dict[str, float]:
    """Per-attribute accuracy (and ``overall``) over (image, prompt) pairs."""
    totals: dict[str, list[bool]] = {}
    for image, prompt in pairs:
        v = judge(image, prompt)
        for k, ok in v.scores.items():
            totals.setdefault(k, []).append(ok)
        totals.setdefault("overall", []).append(v.overall)
    return {k: sum(v) / len(v) for k, v in totals.items()}


# -- tastes -------------------------------------------------------------------


@dataclass(frozen=True)
class Taste:
    """A simulated user: a consistent preference that is not prompt adherence.

    ``score`` is higher for images the user likes more; ``prefers`` compares
    two images, optionally with Bradley-Terry noise (temperature > 0) so that
    several simulated annotators disagree now and then (soft labels).
    """

    name: str
    description: str
    score: Callable[[Image.Image], float]
    scale: float  # typical score difference that makes a clear preference

    def prefers(self, a: Image.Image, b: Image.Image, *, temperature: float = 0.0, rng: random.Random | None = None) -> str:
        """'a', 'b' or 'tie'."""
        da = (self.score(a) - self.score(b)) / self.scale
        if temperature <= 0:
            return "a" if da > 0 else "b" if da < 0 else "tie"
        p = 1.0 / (1.0 + math.exp(-da / temperature))
        return "a" if (rng or random).random() < p else "b"


def _saturation(img: Image.Image) -> float:
    a = analyse(img)
    return sum(o["saturation"] * o["area"] for o in a.objects) / max(1e-6, sum(o["area"] for o in a.objects))


def _centredness(img: Image.Image) -> float:
    """Minus the distance of the shapes' centre of mass from the image centre."""
    a = analyse(img)
    if not a.objects:
        return -1.0
    total = sum(o["area"] for o in a.objects)
    cx = sum(o["centroid"][0] * o["area"] for o in a.objects) / total
    cy = sum(o["centroid"][1] * o["area"] for o in a.objects) / total
    return -math.dist((cx, cy), (0.5, 0.5))


def _largeness(img: Image.Image) -> float:
    """Mean area of the shapes (specks and extra shapes do not make an image "larger")."""
    objs = analyse(img).objects
    return sum(o["area"] for o in objs) / len(objs) if objs else 0.0


def _cleanliness(img: Image.Image) -> float:
    """Minus the background's noise; specks count as dirt too."""
    a = analyse(img)
    return -(a.background_std + 2.0 * a.speck_fraction)


TASTES: dict[str, Taste] = {
    t.name: t
    for t in (
        Taste("saturated", "likes vivid, saturated colours", _saturation, 0.05),
        Taste("centered", "likes the shapes gathered at the centre of the image", _centredness, 0.03),
        Taste("large", "likes big shapes", _largeness, 0.005),
        Taste("clean", "likes flat, noise-free backgrounds", _cleanliness, 0.005),
        # two users who want the opposite of two above (one person's adapter is theirs, not a generic "better")
        Taste("muted", "likes soft, muted colours", lambda img: -_saturation(img), 0.05),
        Taste("small", "likes small shapes", lambda img: -_largeness(img), 0.005),
    )
}
#: tastes that want the opposite of each other
OPPOSITES = {"saturated": "muted", "muted": "saturated", "large": "small", "small": "large"}

def true_taste_value(taste: str, spec: Spec, truth: dict) -> float:
    """What a taste is meant to measure, from a render's ground truth."""
    style: Style = truth["style"]
    if taste in OPPOSITES and taste not in ("saturated", "large"):
        return -true_taste_value(OPPOSITES[taste], spec, truth)
    if taste == "saturated":
        return style.saturation
    if taste == "clean":
        return -style.noise
    if taste == "large":
        return truth["radius"]
    if taste == "centered":
        xs, ys = zip(*truth["centres"])
        return -math.dist((sum(xs) / len(xs), sum(ys) / len(ys)), (0.5, 0.5))
    raise KeyError(taste)


# How far apart two renders must be in the true value for a taste to be held to it.
TASTE_MARGINS = {"saturated": 0.15, "clean": 0.02, "large": 0.02, "centered": 0.08, "muted": 0.15, "small": 0.02}
