"""A synthetic prosody corpus for the demo and the tests (no emotional speech corpus can be
bundled). The classes are *synthetic prosody classes, not emotions*:

* ``low_flat``: low pitch, flat contour, slow, soft;
* ``high_rising``: high pitch, rising contour, medium tempo, medium energy;
* ``mid_falling``: middle pitch, falling contour, slow, medium energy;
* ``fast_loud``: middle-high pitch, wavy contour, fast, loud.

An utterance is a train of voiced "syllables" (harmonic complexes under a smooth envelope,
separated by short pauses), with random jitter on every property. Speakers differ in timbre
(the centre frequencies of three formant-like resonances weighting the harmonics) and in a
pitch offset, so a speaker-independent model has to rely on the prosody.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .datasets import Item, write_manifest

RATE = 16_000
CLASSES = {
    # base f0 (Hz), contour slope (octaves over a syllable), syllables per second, level
    "low_flat": (110.0, 0.0, 3.0, 0.15),
    "high_rising": (260.0, 0.6, 4.5, 0.35),
    "mid_falling": (170.0, -0.6, 3.0, 0.35),
    "fast_loud": (200.0, 0.3, 8.0, 0.8),
}


def _speaker(rng: np.random.Generator) -> dict:
    return {
        "formants": np.sort(rng.uniform([400, 1000, 2200], [900, 2000, 3400])),
        "pitch": float(rng.uniform(0.85, 1.15)),
    }


def utterance(cls: str, speaker: dict, rng: np.random.Generator, seconds: float = 1.4):
    base, slope, rate, level = CLASSES[cls]
    n = int(seconds * RATE)
    wave = np.zeros(n)
    t0 = int(rng.uniform(0.02, 0.1) * RATE)
    syllable = 1.0 / (rate * rng.uniform(0.85, 1.15))
    while t0 < n - int(0.05 * RATE):
        length = int(syllable * 0.75 * RATE)
        t = np.arange(min(length, n - t0)) / RATE
        f0 = base * speaker["pitch"] * rng.uniform(0.93, 1.07) * 2 ** (slope * t / max(t[-1], 1e-3))
        if cls == "fast_loud":
            f0 = f0 * (1 + 0.08 * np.sin(2 * np.pi * 6 * t))
        phase = 2 * np.pi * np.cumsum(f0) / RATE
        voiced = np.zeros_like(t)
        for h in range(1, 30):
            freq = h * f0.mean()
            if freq > RATE / 2 - 200:
                break
            gain = sum(np.exp(-(((freq - f) / 150.0) ** 2)) for f in speaker["formants"]) + 0.05
            voiced += gain / h**0.5 * np.sin(h * phase)
        envelope = np.sin(np.pi * t / t[-1]) ** 2
        wave[t0 : t0 + len(t)] += level * rng.uniform(0.8, 1.2) * envelope * voiced
        t0 += int(syllable * RATE)
    wave = wave / max(1e-9, np.abs(wave).max()) * level * rng.uniform(0.85, 1.0)
    return (wave + rng.normal(0, 0.002, n)).astype(np.float32)


def make_corpus(
    root: str | os.PathLike, speakers: int = 5, per_class: int = 8, seed: int = 0
) -> Path:
    """Write ``root/<speaker>/<class>_<k>.wav`` and ``root/manifest.csv``; returns the
    manifest path."""
    import soundfile as sf

    root = Path(root)
    rng = np.random.default_rng(seed)
    items = []
    for s in range(speakers):
        voice = _speaker(rng)
        name = f"spk{s + 1}"
        for cls in CLASSES:
            for k in range(per_class):
                path = root / name / f"{cls}_{k}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(str(path), utterance(cls, voice, rng), RATE)
                items.append(Item(path.resolve(), cls, name))
    return write_manifest(items, root / "manifest.csv")


UTTERANCE_SECONDS = 1.4  # the corpus's utterance length, also a recording's building block


def recording(plan, seed: int = 0) -> np.ndarray:
    """A long recording of one synthetic speaker whose class changes at known times:
    ``plan`` is ``[(class, seconds), ...]``, each section spoken as back-to-back
    utterances of :data:`UTTERANCE_SECONDS` (the last one shorter) of that class. Returns
    float32 samples at :data:`RATE`; the sections start at the running sums of their
    seconds (``round(seconds * RATE)`` samples each)."""
    rng = np.random.default_rng(seed)
    voice = _speaker(rng)
    parts = []
    for cls, seconds in plan:
        if cls not in CLASSES:
            raise ValueError(f"recording: unknown class {cls!r}; expected one of {list(CLASSES)}")
        n = round(seconds * RATE)
        if n < RATE // 10:
            raise ValueError(f"recording: a section must last at least 0.1 s, got {seconds}")
        done = 0
        while done < n:
            length = min(round(UTTERANCE_SECONDS * RATE), n - done)
            if length < RATE // 10:  # too short to hold a syllable: silence-level noise
                parts.append(rng.normal(0, 0.002, length).astype(np.float32))
            else:
                wave = utterance(cls, voice, rng, length / RATE)[:length]
                parts.append(np.pad(wave, (0, length - len(wave))))  # int() lost a sample
            done += length
    return np.concatenate(parts)
