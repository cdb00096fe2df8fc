"""Synthesised music and real encoded files, for tests, benchmarks and the quickstart.

Music is rendered from note events: a few instruments (additive harmonics with ADSR-like
envelopes), a bass line and a drum pattern, in a style that fixes instrumentation, tempo,
key and rhythm, so labels derived from the style really depend on the audio.
Files are written with PyAV's bundled encoders (mp3, flac, ogg/vorbis, opus, wav, m4a/aac).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)


@dataclass(frozen=True)
class Style:
    """What makes one kind of music sound unlike another."""

    name: str
    tempo_bpm: float
    root_midi: int
    scale: tuple[int, ...]
    lead_harmonics: tuple[float, ...]  # relative amplitude of harmonics 1..n
    lead_decay_s: float
    drums: str  # "four", "backbeat", "none"
    bass: bool = True
    sections_s: float = 0.0  # > 0: every this many seconds the music moves to another key and level
    layers: float = 0.0  # > 0 (with sections): untagged pad and arpeggio layers, new in every section


STYLES = (
    Style("bright_pop", 124, 60, MAJOR, (1.0, 0.5, 0.33, 0.25, 0.2), 0.25, "four"),
    Style("dark_ballad", 72, 57, MINOR, (1.0, 0.1, 0.05), 1.2, "none"),
    Style("organ_rock", 140, 64, MINOR, (1.0, 0.0, 0.8, 0.0, 0.6, 0.0, 0.4), 0.6, "backbeat"),
    Style("plucked_folk", 96, 62, MAJOR, (1.0, 0.7, 0.5, 0.4, 0.3, 0.2, 0.1), 0.15, "backbeat", bass=False),
)

# Attributes a track draws independently of each other: each becomes one tag, so a probe
# has to hear timbre, tempo, mode, rhythm and bass separately (not just tell 4 styles apart).
LEADS = {
    "pluck": ((1.0, 0.7, 0.5, 0.4, 0.3, 0.2, 0.1), 0.15),
    "organ": ((1.0, 0.0, 0.8, 0.0, 0.6, 0.0, 0.4), 0.6),
    "flute": ((1.0, 0.1, 0.05), 1.2),
    "brass": ((1.0, 0.5, 0.33, 0.25, 0.2), 0.25),
}
TEMPI = {"slow": (66.0, 92.0), "fast": (118.0, 150.0)}
MODES = {"major": MAJOR, "minor": MINOR}
DRUMS = ("none", "four", "backbeat")


def style_tags(style: Style) -> list[str]:
    """The content-determined tags of a style: lead timbre, tempo class, mode, drums, bass."""
    lead = next((k for k, (h, _) in LEADS.items() if h == style.lead_harmonics), "other")
    tempo = "fast" if style.tempo_bpm >= 110 else "slow"
    mode = "major" if style.scale == MAJOR else "minor"
    return [
        f"lead:{lead}",
        f"tempo:{tempo}",
        f"mode:{mode}",
        f"drums:{style.drums}",
        "bass" if style.bass else "no_bass",
    ]


def random_style(rng: np.random.Generator, layers: float = 0.0) -> Style:
    """A style whose every attribute is drawn independently (tempo and key vary within a class too).

    ``layers`` > 0 adds untagged layers that change from section to section (see :func:`_layers`).
    """
    lead = str(rng.choice(list(LEADS)))
    tempo = str(rng.choice(list(TEMPI)))
    mode = str(rng.choice(list(MODES)))
    drums = str(rng.choice(DRUMS))
    bass = bool(rng.integers(0, 2))
    harmonics, decay = LEADS[lead]
    return Style(
        f"{lead}-{tempo}-{mode}-{drums}{'-bass' if bass else ''}",
        float(rng.uniform(*TEMPI[tempo])),
        int(rng.integers(55, 67)),
        MODES[mode],
        harmonics,
        decay,
        drums,
        bass,
        sections_s=float(rng.uniform(5.0, 8.0)),
        layers=layers,
    )


ENCODERS = {
    # extension: (container format, codec, sample format, fixed rate or None)
    "wav": ("wav", "pcm_s16le", "s16", None),
    "wav24": ("wav", "pcm_s24le", "s32", None),
    "flac": ("flac", "flac", "s16", None),
    "mp3": ("mp3", "libmp3lame", "fltp", None),
    "ogg": ("ogg", "vorbis", "fltp", None),
    "opus": ("ogg", "libopus", "flt", 48000),
    "m4a": ("ipod", "aac", "fltp", None),
}


def midi_hz(note: float) -> float:
    return 440.0 * 2 ** ((note - 69) / 12)


def tone(freq: float, dur_s: float, sr: int, harmonics=(1.0,), decay_s: float = 0.5) -> np.ndarray:
    t = np.arange(int(dur_s * sr)) / sr
    wave = sum(a * np.sin(2 * np.pi * freq * (k + 1) * t) for k, a in enumerate(harmonics) if a)
    attack = np.minimum(1.0, t / 0.01)
    return (wave * attack * np.exp(-t / decay_s)).astype(np.float32)


def _drum_hits(style: Style, beats: int, beat_s: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(int(beats * beat_s * sr) + sr, np.float32)
    kick = tone(55, 0.3, sr, (1.0,), 0.08)
    snare = (rng.standard_normal(int(0.2 * sr)) * np.exp(-np.arange(int(0.2 * sr)) / (0.04 * sr))).astype(np.float32)
    for beat in range(beats):
        start = int(beat * beat_s * sr)
        if style.drums == "four" or (style.drums == "backbeat" and beat % 2 == 0):
            out[start : start + len(kick)] += kick
        if style.drums == "backbeat" and beat % 2 == 1:
            out[start : start + len(snare)] += 0.5 * snare
    return out


def render(style: Style, seconds: float, sr: int = 44100, seed: int = 0) -> np.ndarray:
    """Render ``seconds`` of ``style`` as float32 mono in [-1, 1]."""
    rng = np.random.default_rng(seed)
    beat_s = 60.0 / style.tempo_bpm
    beats = int(seconds / beat_s) + 1
    out = np.zeros(int(seconds * sr) + 2 * sr, np.float32)
    keys, gains = _sections(style, seconds, seed)
    for beat in range(beats):
        start = int(beat * beat_s * sr)
        root = style.root_midi + keys[_section_of(style, beat * beat_s)]
        degree = int(rng.integers(0, len(style.scale)))
        octave = 12 * int(rng.integers(0, 2))
        note = root + style.scale[degree] + octave
        lead = tone(midi_hz(note), beat_s * 1.5, sr, style.lead_harmonics, style.lead_decay_s)
        out[start : start + len(lead)] += 0.3 * lead
        if style.bass and beat % 2 == 0:
            bass = tone(midi_hz(root - 24 + style.scale[degree % 3 * 2]), beat_s * 2, sr, (1.0, 0.3), 0.8)
            out[start : start + len(bass)] += 0.3 * bass
    if style.drums != "none":
        drums = _drum_hits(style, beats, beat_s, sr, rng)
        n = min(len(out), len(drums))
        out[:n] += 0.4 * drums[:n]
    out = out[: int(seconds * sr)]
    if style.sections_s > 0:
        section = (np.arange(len(out)) / sr / style.sections_s).astype(int)
        out = out * gains[np.minimum(section, len(gains) - 1)]
        if style.layers > 0:
            out = out / max(1e-6, float(np.abs(out).max())) + _layers(style, len(out), sr, seed, keys)
    return (0.8 * out / max(1e-6, float(np.abs(out).max()))).astype(np.float32)


def _sections(style: Style, seconds: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per section: a transposition in semitones and a level (-12..0 dB); one section if none."""
    if style.sections_s <= 0:
        return np.zeros(1, int), np.ones(1, np.float32)
    count = int(seconds / style.sections_s) + 2
    rng = np.random.default_rng(seed + 7919)  # own stream: the notes stay those of the plain render
    keys = rng.integers(-5, 7, count)
    gains = (10 ** (rng.uniform(-12, 0, count) / 20)).astype(np.float32)
    return keys, gains


def _layers(style: Style, n: int, sr: int, seed: int, keys: np.ndarray) -> np.ndarray:
    """Per section, at ``style.layers`` times the tagged music's peak and each with probability
    0.7: a sustained triad and an arpeggio at 2-8 notes/s, each with its own random harmonics.

    None of it is tagged: they are what a real mix adds around the tagged instruments, and they
    change every section, so a backbone must look past them to hear a track's tags.
    """
    rng = np.random.default_rng(seed + 104729)  # own stream: the notes stay those of the plain render
    span = int(style.sections_s * sr)
    out = np.zeros(n + span + 2 * sr, np.float32)
    for i, start in enumerate(range(0, n, span)):
        root = style.root_midi + int(keys[min(i, len(keys) - 1)])
        harmonics = tuple(rng.uniform(0, 1, int(rng.integers(1, 9))))
        if rng.random() < 0.7:
            pad = sum(tone(midi_hz(root + step), style.sections_s, sr, harmonics, 4.0) for step in (0, 4, 7))
            out[start : start + len(pad)] += style.layers * rng.uniform(0.2, 1.0) * pad / 3
        if rng.random() < 0.7:
            _arpeggio(out, start, root, style, sr, rng)
    return out[:n]


def _arpeggio(out: np.ndarray, start: int, root: int, style: Style, sr: int, rng: np.random.Generator) -> None:
    rate = float(rng.uniform(2.0, 8.0))
    harmonics = tuple(rng.uniform(0, 1, int(rng.integers(1, 9))))
    decay = float(rng.uniform(0.05, 0.5))
    level = style.layers * rng.uniform(0.2, 1.0)
    for k in range(int(style.sections_s * rate)):
        note = tone(midi_hz(root + 12 + (0, 4, 7, 12)[k % 4]), 2.0 / rate, sr, harmonics, decay)
        at = start + int(k / rate * sr)
        out[at : at + len(note)] += level * note


def _section_of(style: Style, t: float) -> int:
    return int(t / style.sections_s) if style.sections_s > 0 else 0


def encode(path, audio: np.ndarray, sr: int, kind: str | None = None) -> None:
    """Write ``audio`` (float32 ``[samples]`` or ``[channels, samples]``) as an encoded file.

    ``path``: a str/bytes/PathLike path (non-UTF-8 names work: the file is opened here) or a
    writable binary file object (then ``kind`` is required). ``kind`` is a key of
    :data:`ENCODERS` (default: from the file extension).
    """
    planar = np.atleast_2d(np.asarray(audio, np.float32))
    if kind is None:
        kind = os.fsdecode(path).rsplit(".", 1)[-1].lower()
    fmt, codec, sample_fmt, fixed_rate = ENCODERS[kind]
    if codec == "vorbis" and planar.shape[0] == 1:
        planar = np.repeat(planar, 2, axis=0)  # FFmpeg's own vorbis encoder is stereo-only
    channels = planar.shape[0]
    if fixed_rate and fixed_rate != sr:
        import soxr

        planar = soxr.resample(planar.T, sr, fixed_rate).T.astype(np.float32)
        sr = fixed_rate
    layout = {1: "mono", 2: "stereo", 6: "5.1"}[channels]
    with _opened(path) as handle, av.open(handle, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=sr, layout=layout)
        stream.codec_context.options = {"strict": "experimental"}  # FFmpeg's own vorbis encoder
        frame = av.AudioFrame.from_ndarray(_as_sample_format(planar, sample_fmt), format=sample_fmt, layout=layout)
        frame.sample_rate = sr
        frame.pts, frame.time_base = 0, Fraction(1, sr)  # lets muxers write the encoder-delay edit list
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


@contextlib.contextmanager
def _opened(target):
    if hasattr(target, "write"):
        yield target
        return
    with open(target, "wb") as handle:
        yield handle


def _as_sample_format(planar: np.ndarray, sample_fmt: str) -> np.ndarray:
    clipped = np.clip(planar, -1.0, 1.0)
    if sample_fmt == "fltp":
        return np.ascontiguousarray(clipped)
    if sample_fmt == "flt":
        return np.ascontiguousarray(clipped.T.reshape(1, -1))
    if sample_fmt == "s16":
        return np.ascontiguousarray((clipped.T * 32767).astype(np.int16).reshape(1, -1))
    if sample_fmt == "s32":
        return np.ascontiguousarray((clipped.T * 2147483392).astype(np.int32).reshape(1, -1))
    raise ValueError(f"unsupported sample format {sample_fmt}")
