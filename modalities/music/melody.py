"""The melody world: prompts about a short melody, melodies as note events, a synthesiser to WAV.

A prompt names a key (tonic and mode, or a mood that implies the mode), a tempo word, and optionally an
instrument, a register and a melodic contour:

    "a slow sad melody in A minor on a harp, descending"
    "a fast melody in D major in a high register"

A :class:`Melody` is what the built-in model writes, as words: a header (instrument, tone, articulation,
tempo) and notes (MIDI pitch, length in sixteenths)::

    harp tone2 art1 bpm64 n69 d4 n67 d4 n65 d2 ...

:func:`render` turns it into audio with a deterministic additive synthesiser (one timbre per instrument,
``tone`` its brightness, ``art`` how much of each note sounds: staccato to legato). The judge
(:mod:`.judge`) measures any audio, so it scores the renderer's clips and MusicGen's alike.

What a prompt leaves open (instrument, register, contour when not named; tone, articulation, interval
sizes and chromatic notes always) is drawn at random in the world's melodies: that freedom is where the
simulated tastes of :mod:`.rewards` have room to prefer one melody over another.
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

RATE = 16000  # Hz, the renderer's sample rate
TONICS = ("c", "d", "e", "f", "g", "a", "b")
TONIC_PC = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
PC_NAMES = ("c", "c#", "d", "d#", "e", "f", "f#", "g", "g#", "a", "a#", "b")
MODES = ("major", "minor")
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}  # natural minor
TEMPI = {"slow": 66, "moderate": 96, "fast": 132}  # bpm at the centre of each tempo word
MOODS = {"happy": "major", "cheerful": "major", "gentle": "major", "sad": "minor", "wistful": "minor",
         "brooding": "minor"}
INSTRUMENTS = ("flute", "organ", "brass", "harp")
REGISTERS = {"low": (45, 57), "middle": (57, 69), "high": (69, 81)}  # MIDI pitch range of each register
CONTOURS = ("ascending", "descending", "arching", "level")
ARTICULATION = (0.3, 0.55, 0.8, 0.97)  # share of each note that sounds, per ``art`` token
DURATIONS = (2, 4, 6, 8)  # note lengths in sixteenths: eighth, quarter, dotted quarter, half
PITCH_RANGE = (36, 96)  # MIDI pitches the model's vocabulary holds
BPM_RANGE = (48, 160)
BPM_STEP = 2
CLIP_SECONDS = (5.0, 6.0)  # the world's melodies last this long
MAX_SECONDS = 10.0  # the longest clip the built-in model writes


# ---------------------------------------------------------------------------
# prompts
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """What a prompt asks for (None: left open)."""

    tonic: str
    mode: str
    tempo: str
    mood: str | None = None
    mode_named: bool = True  # False: the mood implies the mode ("a sad melody in A")
    instrument: str | None = None
    register: str | None = None
    contour: str | None = None

    def __post_init__(self) -> None:
        if self.tonic not in TONIC_PC or self.mode not in MODES or self.tempo not in TEMPI:
            raise ValueError(f"not a melody-world spec: {self}")
        if self.mood is not None and MOODS.get(self.mood) != self.mode:
            raise ValueError(f"the mood {self.mood!r} does not fit {self.mode}")
        if not self.mode_named and self.mood is None:
            raise ValueError("a prompt without a mode needs a mood that implies it")

    @property
    def bpm(self) -> int:
        return TEMPI[self.tempo]

    @property
    def tonic_pc(self) -> int:
        return TONIC_PC[self.tonic]

    def attributes(self) -> dict[str, str]:
        """The attributes the prompt states (what adherence is measured on)."""
        out = {"key": f"{self.tonic} {self.mode}", "tempo": self.tempo}
        for name in ("instrument", "register", "contour"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


def prompt_of(spec: Spec) -> str:
    words = ["a", spec.tempo] + ([spec.mood] if spec.mood else []) + ["melody", "in", spec.tonic.upper()]
    if spec.mode_named:
        words.append(spec.mode)
    if spec.instrument:
        words += ["on", "a", spec.instrument]
    if spec.register:
        words += ["in", "a", spec.register, "register"]
    text = " ".join(words)
    return text + (f", {spec.contour}" if spec.contour else "")


_PROMPT_RE = re.compile(
    r"^an? (?P<tempo>slow|moderate|fast)(?: (?P<mood>[a-z]+))? melody in (?P<tonic>[a-g])(?: (?P<mode>major|minor))?"
    r"(?: on an? (?P<instrument>[a-z]+))?(?: in an? (?P<register>low|middle|high) register)?"
    r"(?:, (?P<contour>[a-z]+))?$")


def parse_prompt(prompt: str) -> Spec | None:
    """The spec of a melody-world prompt (case and spacing free), or None for any other text."""
    m = _PROMPT_RE.match(" ".join(prompt.lower().strip().rstrip(".").split()))
    if m is None:
        return None
    g = m.groupdict()
    if g["mood"] is not None and g["mood"] not in MOODS:
        return None
    if g["instrument"] is not None and g["instrument"] not in INSTRUMENTS:
        return None
    if g["contour"] is not None and g["contour"] not in CONTOURS:
        return None
    mode = g["mode"] or (MOODS[g["mood"]] if g["mood"] else None)
    if mode is None:
        return None
    try:
        return Spec(tonic=g["tonic"], mode=mode, tempo=g["tempo"], mood=g["mood"], mode_named=g["mode"] is not None,
                    instrument=g["instrument"], register=g["register"], contour=g["contour"])
    except ValueError:
        return None


def split_of(spec: Spec) -> str:
    """"train" or "test" (one fifth), by a hash of the musical content (mood words and how the mode is said
    do not move a prompt between splits)."""
    key = "|".join(str(x) for x in (spec.tonic, spec.mode, spec.tempo, spec.instrument, spec.register, spec.contour))
    return "test" if int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 5 == 0 else "train"


def sample_spec(rng: random.Random) -> Spec:
    mode = rng.choice(MODES)
    moods = [m for m, md in MOODS.items() if md == mode]
    mood = rng.choice(moods) if rng.random() < 0.5 else None
    mode_named = mood is None or rng.random() < 0.6
    return Spec(tonic=rng.choice(TONICS), mode=mode, tempo=rng.choice(tuple(TEMPI)), mood=mood, mode_named=mode_named,
                instrument=rng.choice(INSTRUMENTS) if rng.random() < 0.75 else None,
                register=rng.choice(tuple(REGISTERS)) if rng.random() < 0.7 else None,
                contour=rng.choice(CONTOURS) if rng.random() < 0.7 else None)


def split_prompts(split: str, n: int, seed: int = 0) -> list[str]:
    """``n`` distinct prompts of ``split`` ("train" or "test"), in a seeded order."""
    rng, out, seen = random.Random(seed), [], set()
    for _ in range(200 * n):
        if len(out) == n:
            break
        spec = sample_spec(rng)
        text = prompt_of(spec)
        if split_of(spec) == split and text not in seen:
            seen.add(text)
            out.append(text)
    return out


def variations(prompts: Sequence[str], n: int, seed: int = 0) -> list[str]:
    """``n`` new prompts for each melody-world prompt of ``prompts``, each with one attribute changed
    (key, mode, tempo, instrument, register or contour), none already in ``prompts``."""
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
            attr = rng.choice(["tonic", "mode", "tempo", "instrument", "register", "contour"])
            values = {"tonic": TONICS, "mode": MODES, "tempo": tuple(TEMPI), "instrument": (None, *INSTRUMENTS),
                      "register": (None, *REGISTERS), "contour": (None, *CONTOURS)}[attr]
            changes = {attr: rng.choice(values)}
            if attr == "mode":
                changes.update(mood=None, mode_named=True)
            try:
                text = prompt_of(replace(spec, **changes))
            except ValueError:
                continue
            if text not in seen:
                seen.add(text)
                out.append(text)
                made += 1
    return out


# ---------------------------------------------------------------------------
# melodies as note events, and as the built-in model's words
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Melody:
    instrument: str
    tone: int  # 0 (dark) .. 3 (bright)
    art: int  # 0 (staccato) .. 3 (legato): index into ARTICULATION
    bpm: int
    notes: tuple[tuple[int, int], ...] = field(default_factory=tuple)  # (MIDI pitch, sixteenths)

    @property
    def seconds(self) -> float:
        return sum(d for _, d in self.notes) / 4 * 60.0 / self.bpm


def words_of(m: Melody) -> str:
    head = f"{m.instrument} tone{m.tone} art{m.art} bpm{m.bpm}"
    return " ".join([head] + [f"n{p} d{d}" for p, d in m.notes])


_NOTE_RE = re.compile(r"^n(\d+)$")


def parse_words(text: str, *, max_seconds: float | None = None, strict: bool = True) -> Melody:
    """The melody written as ``text`` (the built-in model's answer). Tolerant of a model's slips: a pitch
    without a length gets a quarter; unknown words are skipped. Raises ValueError when the tempo is missing
    or no note can be read -- unless ``strict`` is False: then a missing tempo is 96 bpm and no notes is an
    empty melody (a silent clip: what the model wrote is still a sample, if a poor one)."""
    words = text.split()
    head: dict[str, object] = {}
    notes: list[tuple[int, int]] = []
    pending: int | None = None
    for w in words:
        if w in INSTRUMENTS and "instrument" not in head:
            head["instrument"] = w
        elif w.startswith("tone") and w[4:].isdigit() and "tone" not in head:
            head["tone"] = min(3, int(w[4:]))
        elif w.startswith("art") and w[3:].isdigit() and "art" not in head:
            head["art"] = min(len(ARTICULATION) - 1, int(w[3:]))
        elif w.startswith("bpm") and w[3:].isdigit() and "bpm" not in head:
            head["bpm"] = int(np.clip(int(w[3:]), *BPM_RANGE))
        elif _NOTE_RE.match(w):
            if pending is not None:
                notes.append((pending, 4))
            pending = int(np.clip(int(w[1:]), *PITCH_RANGE))
        elif w.startswith("d") and w[1:].isdigit() and pending is not None:
            notes.append((pending, max(1, min(16, int(w[1:])))))
            pending = None
    if pending is not None:
        notes.append((pending, 4))
    if "bpm" not in head:
        if strict:
            raise ValueError("the melody has no tempo (bpmN)")
        head["bpm"] = TEMPI["moderate"]
    if not notes and strict:
        raise ValueError("the melody has no notes")
    m = Melody(instrument=str(head.get("instrument", "flute")), tone=int(head.get("tone", 1)),  # type: ignore[arg-type]
               art=int(head.get("art", 2)), bpm=int(head["bpm"]), notes=tuple(notes))  # type: ignore[arg-type]
    if max_seconds is not None:
        m = truncate(m, max_seconds)
    return m


def truncate(m: Melody, seconds: float) -> Melody:
    """The melody cut to at most ``seconds`` (the last note shortened; at least one note kept)."""
    budget = seconds * m.bpm / 60.0 * 4  # sixteenths
    out, used = [], 0
    for p, d in m.notes:
        if used + d > budget + 1e-9:
            left = int(budget - used)
            if left >= 1:
                out.append((p, left))
            break
        out.append((p, d))
        used += d
    return replace(m, notes=tuple(out or m.notes[:1]))  # an empty melody stays empty


def vocabulary() -> list[str]:
    """Every word the built-in model reads or writes (prompt words and melody words)."""
    prompt_words = {"a", "an", "melody", "in", "on", "register", ",", *TEMPI, *MOODS, *TONICS, *MODES, *INSTRUMENTS,
                    *REGISTERS, *CONTOURS}
    melody_words = [f"tone{i}" for i in range(4)] + [f"art{i}" for i in range(len(ARTICULATION))]
    melody_words += [f"bpm{b}" for b in range(BPM_RANGE[0], BPM_RANGE[1] + 1, BPM_STEP)]
    melody_words += [f"n{p}" for p in range(PITCH_RANGE[0], PITCH_RANGE[1] + 1)] + [f"d{d}" for d in range(1, 17)]
    return sorted(prompt_words) + melody_words


def build_tokenizer():
    """A word-level tokenizer over :func:`vocabulary`, built offline: lower-cased, a space belongs to the word
    after it, "," a word of its own; ``decode(encode(t)) == t`` for every melody. Specials: ``<pad>`` (0),
    ``<unk>``, ``<bos>``, ``<eos>``; none added automatically."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<bos>", "eos_token": "<eos>"}
    pieces = []
    for w in vocabulary():
        pieces += [w, " " + w]
    pieces += [":", " :"]
    vocab = {tok: i for i, tok in enumerate(list(specials.values()) + list(dict.fromkeys(pieces)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r" ?[a-z0-9#]+| ?[,:]| +"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **specials)


#: the built-in model's prompt format (shipped as its chat template): "<bos>PROMPT :" then the melody
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }} :"
                 "{% elif m['role'] == 'assistant' %} {{ m['content'] }}{% endif %}{% endfor %}")


# ---------------------------------------------------------------------------
# the world's melodies (the built-in model's training data)
# ---------------------------------------------------------------------------


def _target_curve(contour: str, n: int) -> np.ndarray:
    """Where the melody should be at each note, -1 (bottom of the register) .. 1 (top)."""
    x = np.linspace(0.0, 1.0, max(n, 2))[:n]
    return {"ascending": -0.8 + 1.6 * x, "descending": 0.8 - 1.6 * x,
            "arching": -0.7 + 1.6 * np.sin(np.pi * x), "level": np.zeros(n)}[contour]


def sample_melody(spec: Spec, rng: random.Random) -> Melody:
    """A melody that satisfies ``spec``, with everything it leaves open drawn at random."""
    instrument = spec.instrument or rng.choice(INSTRUMENTS)
    register = spec.register or rng.choice(tuple(REGISTERS))
    contour = spec.contour or rng.choice(CONTOURS)
    bpm = int(round(spec.bpm * rng.uniform(0.95, 1.05) / BPM_STEP) * BPM_STEP)
    leap = rng.random()  # the melody's liking for leaps (stepwise .. leaping)
    chroma = rng.choice((0.0, 0.0, 0.08, 0.15))  # share of chromatic (out-of-key) notes: consonant .. tense
    lo, hi = REGISTERS[register]
    scale = [p for p in range(lo - 2, hi + 3) if (p - spec.tonic_pc) % 12 in SCALES[spec.mode]]
    budget = int(round(rng.uniform(*CLIP_SECONDS) * bpm / 60.0 * 4))
    lengths: list[int] = []
    while sum(lengths) < budget:
        lengths.append(rng.choices(DURATIONS, weights=(0.15, 0.6, 0.1, 0.15))[0])
    lengths[-1] = max(2, lengths[-1] - (sum(lengths) - budget))
    target = _target_curve(contour, len(lengths))
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    # start on the tonic nearest the curve's start
    tonics = [p for p in scale if (p - spec.tonic_pc) % 12 == 0] or scale
    triad = [p for p in scale if (p - spec.tonic_pc) % 12 in (0, SCALES[spec.mode][2], 7)]
    idx = min(range(len(scale)), key=lambda i: abs(scale[i] - (mid + half * target[0])) + (0 if scale[i] in tonics else 12))
    pitches = [scale[idx]]
    shift = scale[idx] - (mid + half * target[0])  # the curve, moved to start where the melody starts
    shift = float(np.clip(shift, -3, 3))
    for i in range(1, len(lengths)):
        want = mid + half * target[i] + shift
        gap = want - scale[idx]
        step = int(np.sign(gap)) if abs(gap) > 1 else rng.choice((-1, 1))
        if rng.random() < 0.15 + 0.5 * leap:  # a leap: toward the curve, or out and back near it
            size = rng.choice((2, 3, 4))
            step = step * size if abs(gap) > 3 or contour == "level" and abs(gap) < 2 else step
        idx = int(np.clip(idx + step, 0, len(scale) - 1))
        p = scale[idx]
        if i < len(lengths) - 1 and rng.random() < chroma:
            p += rng.choice((-1, 1))
        pitches.append(p)
    # tonal melodies end at home: the tonic when one is near where the contour ends, else a note of its triad
    end_want = mid + half * target[-1] + shift
    home = [t for t in tonics if abs(t - end_want) <= 5] or triad
    pitches[-1] = min(home, key=lambda t: abs(t - end_want))
    return Melody(instrument=instrument, tone=rng.randrange(4), art=rng.randrange(len(ARTICULATION)), bpm=bpm,
                  notes=tuple(zip(pitches, lengths)))


# ---------------------------------------------------------------------------
# the synthesiser
# ---------------------------------------------------------------------------

# per instrument: (harmonics, spectral roll-off at tone 0, roll-off change per tone step, even-harmonic weight,
#                  attack seconds, decay time constant in seconds or None for a sustained note)
_TIMBRES = {
    "flute": (4, 3.6, 0.2, 1.0, 0.04, None),
    "organ": (12, 1.5, 0.1, 0.25, 0.01, None),
    "brass": (16, 0.7, 0.1, 1.0, 0.05, None),
    "harp": (10, 1.5, 0.1, 1.0, 0.003, 0.15),
}


def render(m: Melody, rate: int = RATE) -> np.ndarray:
    """Mono float32 audio of the melody (peak 0.8), deterministic."""
    harmonics, roll0, droll, even, attack, decay = _TIMBRES[m.instrument]
    roll = roll0 - droll * m.tone
    beat = 60.0 / m.bpm
    gate = ARTICULATION[m.art]
    total = sum(d for _, d in m.notes) / 4 * beat + 0.3
    out = np.zeros(int(total * rate) + 1, dtype=np.float64)
    t0 = 0.0
    for pitch, d in m.notes:
        ioi = d / 4 * beat
        dur = max(0.03, ioi * gate)
        n = int(dur * rate)
        t = np.arange(n) / rate
        f0 = 440.0 * 2 ** ((pitch - 69) / 12)
        wave = np.zeros(n)
        for h in range(1, harmonics + 1):
            if f0 * h >= rate / 2 * 0.95:
                break
            amp = h ** (-roll) * (even if h % 2 == 0 else 1.0)
            wave += amp * np.sin(2 * np.pi * f0 * h * t)
        env = np.minimum(1.0, t / attack) if attack > 0 else np.ones(n)
        if decay is not None:
            env *= np.exp(-t / decay)
        release = min(n, int(0.02 * rate))
        env[n - release:] *= np.linspace(1.0, 0.0, release)
        start = int(t0 * rate)
        out[start:start + n] += wave * env
        t0 += ioi
    peak = float(np.max(np.abs(out))) or 1.0
    return (0.8 * out / peak).astype(np.float32)
