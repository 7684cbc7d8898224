"""The melody world's judge: what a clip sounds like, measured from the audio alone (any audio).

:func:`analyze` reads a clip with librosa -- onsets, a YIN pitch track, a chroma-based key estimate --
into :class:`Analysis`: notes (onset, pitch, how long each sounds), tempo, key and mode, register,
contour, timbre (spectral centroid, harmonic richness, decay) and articulation. :func:`adherence` is the
share of a prompt's stated attributes the clip has. It never reads the tokens a clip was made from, so
it judges MusicGen's clips and imported recordings by the same rules as the built-in model's.

The key: Krumhansl-Kessler profiles correlated with the clip's pitch classes (the tracked notes' lengths
when the clip is a clear melody, else the chroma). The tempo: the inter-onset interval that best explains the
others as halves, wholes, one-and-a-halves and doubles of it is the beat (the world's melodies are mostly
quarter notes), 60 / beat.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from . import melody as world

HOP = 256
# Krumhansl & Kessler (1982) key profiles, tonic first
_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
_BEAT_SHARES = ((1.0, 1.0), (2.0, 0.6), (0.5, 0.5), (1.5, 0.4))  # an interval of m beats, and how much it counts
_DISSONANT = {1, 2, 6, 10, 11}  # interval classes heard as tense between consecutive notes (semitones mod 12)


@dataclass(frozen=True)
class Analysis:
    seconds: float
    notes: tuple[tuple[float, float, float], ...]  # (onset s, MIDI pitch, sounding s)
    bpm: float | None
    tonic_pc: int
    mode: str
    key_strength: float  # correlation of the best key profile
    median_pitch: float | None
    centroid_hz: float
    richness: float | None  # spectral centroid / fundamental
    decay: float | None  # late / early loudness within notes (1: sustained, ~0: plucked)
    sounding: float | None  # share of each inter-onset interval that sounds (staccato .. legato)
    mean_interval: float | None  # mean |semitones| between consecutive notes
    tension: float | None  # share of out-of-key notes and dissonant steps

    @property
    def key(self) -> str:
        return f"{world.PC_NAMES[self.tonic_pc]} {self.mode}"

    @property
    def register(self) -> str | None:
        if self.median_pitch is None:
            return None
        return "low" if self.median_pitch < 57 else ("middle" if self.median_pitch < 69 else "high")

    @property
    def instrument(self) -> str | None:
        if self.richness is None or self.decay is None:
            return None
        if self.decay < 0.6:
            return "harp"
        return "flute" if self.richness < 1.6 else ("organ" if self.richness < 3.2 else "brass")

    @property
    def contour(self) -> str | None:
        if len(self.notes) < 3:
            return None
        p = np.array([n[1] for n in self.notes])
        k = max(1, len(p) // 3)
        first, middle, last = p[:k].mean(), p[k:len(p) - k].mean() if len(p) > 2 * k else p.mean(), p[-k:].mean()
        if middle - max(first, last) >= 2.5:
            return "arching"
        if last - first >= 4:
            return "ascending"
        if first - last >= 4:
            return "descending"
        if max(p) - min(p) <= 9 and abs(last - first) < 4:
            return "level"
        return None


def _pitch_changes(f0: np.ndarray, loud: np.ndarray, hold: int = 4) -> set[int]:
    """Frames where the rounded pitch moves to a new value it then holds for ``hold`` frames (legato notes
    that the onset envelope barely shows)."""
    midi = np.where(loud, np.round(12 * np.log2(np.maximum(f0, 1e-3) / 440.0) + 69), -1)
    out, current = set(), None
    for i in range(len(midi) - hold):
        if midi[i] < 0:
            current = None
            continue
        if midi[i] != current and np.all(midi[i:i + hold] == midi[i]):
            if current is not None:
                out.add(i)
            current = midi[i]
    return out


def _key(weights: np.ndarray, ends: tuple[int, ...] = ()) -> tuple[int, str, float]:
    """The key whose Krumhansl-Kessler profile best fits the pitch-class ``weights``; a melody's last (and
    first) note, which tonal melodies tend to put on the tonic, adds to that tonic's fit."""
    best = (0, "major", -2.0)
    if not np.any(weights > 0):
        return best
    for mode, profile in (("major", _MAJOR), ("minor", _MINOR)):
        for tonic in range(12):
            r = float(np.corrcoef(np.roll(profile, tonic), weights)[0, 1])
            r += sum(bonus for pc, bonus in zip(ends, (0.35, 0.35)) if pc == tonic)
            if r > best[2]:
                best = (tonic, mode, r)
    return best


def analyze(audio: np.ndarray, rate: int) -> Analysis:
    """Measure a mono clip (see the module docstring)."""
    import librosa

    y = np.asarray(audio, dtype=np.float32)
    if y.ndim != 1 or y.size < rate // 10:
        raise ValueError("the judge needs a mono clip of at least 0.1 s")
    seconds = y.size / rate
    rms = librosa.feature.rms(y=y, frame_length=1024, hop_length=HOP)[0]
    loud = rms > 0.1 * (rms.max() or 1.0)
    f0 = librosa.yin(y, fmin=55.0, fmax=1760.0, sr=rate, frame_length=2048, hop_length=HOP)
    n = min(len(f0), len(rms))
    f0, rms, loud = f0[:n], rms[:n], loud[:n]
    env = librosa.onset.onset_strength(y=y, sr=rate, hop_length=HOP, lag=2, max_size=3)  # SuperFlux
    peaks = librosa.onset.onset_detect(onset_envelope=env, sr=rate, hop_length=HOP, units="frames", delta=0.3, wait=6)
    # each onset moved back to where its note's energy starts rising (the envelope peaks a few frames late)
    peaks = peaks[peaks < n]
    found = set(int(o) for o in librosa.onset.onset_backtrack(peaks, rms)) if peaks.size else set()
    found |= _pitch_changes(f0, loud)
    if loud.any():
        found.add(int(np.argmax(loud)))
    onsets: list[int] = []
    for o in sorted(o for o in found if o < n):  # one onset per 0.08 s
        if not onsets or o - onsets[-1] > 0.08 * rate / HOP:
            onsets.append(o)
    frame_s = HOP / rate
    notes, decays = [], []
    bounds = onsets + [n]
    for a, b in zip(bounds[:-1], bounds[1:]):
        seg = slice(a, b)
        sounding = loud[seg]
        if b - a < 2 or not sounding.any():
            continue
        peak = rms[seg].max()
        on = rms[seg] > 0.1 * peak
        last_on = int(np.nonzero(on)[0][-1]) + 1
        voiced = np.nonzero(sounding[:max(2, int(0.7 * last_on))])[0] + a
        if voiced.size == 0:
            continue
        pitch = float(np.median(librosa.hz_to_midi(f0[voiced])))
        notes.append((a * frame_s, pitch, last_on * frame_s))
        if last_on >= 12:
            early = rms[a + 2:a + 2 + last_on // 4].mean()
            late = rms[a + last_on // 2:a + last_on * 3 // 4].mean()
            decays.append(float(late / (early + 1e-9)))
    # tempo: the beat is the inter-onset interval that best explains all of them as 1/2, 1, 3/2 or 2 beats
    bpm = None
    iois = np.diff([x[0] for x in notes])
    iois = iois[iois > 0.12]
    if iois.size >= 2:
        def fit(beat: float) -> float:
            r = iois / beat
            return float(sum(max((w for m, w in _BEAT_SHARES if abs(x / m - 1) < 0.07), default=0.0) for x in r))

        bpm = float(60.0 / max(iois, key=fit))
    # key: from the notes when the clip is a clear melody, else from the chroma
    ends: tuple[int, ...] = ()
    if len(notes) >= 4:
        weights = np.zeros(12)
        for _, p, dur in notes:
            weights[int(round(p)) % 12] += dur
        ends = (int(round(notes[-1][1])) % 12, int(round(notes[0][1])) % 12)
    else:
        with warnings.catch_warnings():  # a silent clip: librosa warns that it cannot estimate the tuning
            warnings.simplefilter("ignore", UserWarning)
            weights = librosa.feature.chroma_stft(y=y, sr=rate, n_fft=4096, hop_length=HOP).sum(axis=1)
    tonic, mode, strength = _key(weights, ends)
    spec_centroid = librosa.feature.spectral_centroid(y=y, sr=rate, n_fft=2048, hop_length=HOP)[0][:n]
    centroid = float(np.average(spec_centroid[loud], weights=rms[loud])) if loud.any() else 0.0
    pitches = np.array([p for _, p, _ in notes])
    median = float(np.median(pitches)) if pitches.size else None
    f0_hz = float(librosa.midi_to_hz(median)) if median is not None else None
    sounding = [min(1.0, dur / max(1e-3, nxt - on)) for (on, _, dur), (nxt, _, _) in zip(notes[:-1], notes[1:])]
    steps = np.abs(np.diff(np.round(pitches))) if pitches.size >= 2 else np.array([])
    scale = {(tonic + s) % 12 for s in world.SCALES[mode]}
    tension = None
    if pitches.size >= 2:
        out_of_key = np.mean([int(round(p)) % 12 not in scale for p in pitches])
        dissonant = np.mean([int(s) % 12 in _DISSONANT and s > 2 for s in steps]) if steps.size else 0.0
        tension = float(0.7 * out_of_key + 0.3 * dissonant)
    return Analysis(seconds=seconds, notes=tuple(notes), bpm=bpm, tonic_pc=tonic, mode=mode, key_strength=strength,
                    median_pitch=median, centroid_hz=centroid, richness=centroid / f0_hz if f0_hz else None,
                    decay=float(np.median(decays)) if decays else None,
                    sounding=float(np.mean(sounding)) if sounding else None,
                    mean_interval=float(steps.mean()) if steps.size else None, tension=tension)


def checks(spec: world.Spec, a: Analysis) -> dict[str, bool]:
    """For each attribute the prompt states: does the clip have it?"""
    out = {"key": a.tonic_pc == spec.tonic_pc and a.mode == spec.mode,
           "tempo": a.bpm is not None and abs(a.bpm - spec.bpm) <= 0.1 * spec.bpm}
    if spec.instrument:
        out["instrument"] = a.instrument == spec.instrument
    if spec.register:
        out["register"] = a.register == spec.register
    if spec.contour:
        out["contour"] = a.contour == spec.contour
    return out


def adherence(prompt: str, a: Analysis) -> float | None:
    """Share of the prompt's stated attributes the clip has (None for a prompt outside the world)."""
    spec = world.parse_prompt(prompt)
    if spec is None:
        return None
    c = checks(spec, a)
    return sum(c.values()) / len(c)


def transcribe(a: Analysis) -> world.Melody:
    """The clip as the built-in model's note events (an imported clip, to train that model on): the judge's
    notes and tempo, lengths rounded to sixteenths, instrument and articulation from the sound (tone: the middle
    value 1, which the judge does not measure)."""
    if not a.notes:
        raise ValueError("no notes could be heard in the clip")
    bpm = int(round((a.bpm or 96.0) / world.BPM_STEP) * world.BPM_STEP)
    bpm = int(min(max(bpm, world.BPM_RANGE[0]), world.BPM_RANGE[1]))
    sixteenth = 60.0 / bpm / 4
    onsets = [on for on, _, _ in a.notes] + [a.notes[-1][0] + a.notes[-1][2]]
    notes = []
    for (on, pitch, _), nxt in zip(a.notes, onsets[1:]):
        notes.append((int(min(max(round(pitch), world.PITCH_RANGE[0]), world.PITCH_RANGE[1])),
                      int(min(16, max(1, round((nxt - on) / sixteenth))))))
    art = 3 if a.sounding is None else min(range(len(world.ARTICULATION)),
                                           key=lambda i: abs(world.ARTICULATION[i] - a.sounding))
    return world.Melody(instrument=a.instrument or "flute", tone=1, art=art, bpm=bpm, notes=tuple(notes))
