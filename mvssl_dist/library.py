"""Write a small synthetic music library to disk: real encoded files in mixed formats.

Used by the tests, the benchmarks, ``mvssl synth-audio`` and the quickstart. Each track's
style (and so its label) is recorded in ``labels.csv`` beside the audio.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvssl_dist.audio.synth import STYLES, encode, render

DEFAULT_FORMATS = ("mp3", "flac", "ogg", "wav", "m4a")


@dataclass(frozen=True)
class LibraryTrack:
    path: Path
    style: str
    seconds: float


def write_library(
    out_dir: str | os.PathLike,
    tracks: int = 8,
    seconds: float = 20.0,
    formats: tuple[str, ...] = DEFAULT_FORMATS,
    sample_rate: int = 44100,
    seed: int = 0,
    broken: bool = False,
) -> list[LibraryTrack]:
    """Render ``tracks`` tracks (styles and formats in rotation) and, optionally, broken files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    rng = np.random.default_rng(seed)
    for i in range(tracks):
        style = STYLES[i % len(STYLES)]
        fmt = formats[i % len(formats)]
        length = float(seconds * rng.uniform(0.9, 1.1))
        path = out / f"track{i:04d}_{style.name}.{fmt}"
        if not path.exists():
            encode(path, render(style, length, sample_rate, seed=seed * 100_000 + i), sample_rate, fmt)
        written.append(LibraryTrack(path, style.name, length))
    with open(out / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["uri", "style"])
        writer.writerows([[t.path.name, t.style] for t in written])
    if broken:
        write_broken_files(out / "broken")
    return written


def write_broken_files(out_dir: str | os.PathLike) -> list[Path]:
    """A zoo of inputs that must be rejected with a reason: empty, garbage, text, truncated."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    files = {
        "empty.mp3": b"",
        "random_bytes.mp3": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "notes.wav": b"this is a text file, not audio\n" * 40,
    }
    for name, data in files.items():
        (out / name).write_bytes(data)
    full = out / "_whole.flac"
    encode(full, render(STYLES[0], 15.0, 16000, seed=7), 16000, "flac")
    data = full.read_bytes()
    full.unlink()
    (out / "truncated.flac").write_bytes(data[: len(data) // 3])
    return sorted(out.iterdir())
