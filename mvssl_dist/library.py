"""Write a small synthetic music library to disk: real encoded files in mixed formats.

Used by the tests, the benchmarks, ``mvssl synth-audio`` and the quickstart. Each track's
style and its content-determined tags are recorded in ``labels.csv`` beside the audio, with a
train/validation/test split: the file is directly a ``csv:`` tagging task for ``mvssl evaluate``.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvssl_dist.audio.synth import STYLES, encode, random_style, render, style_tags

DEFAULT_FORMATS = ("mp3", "flac", "ogg", "wav", "m4a")
UNLABELLED = "unlabelled"  # the split, and the folder, of tracks left out of labels.csv


@dataclass(frozen=True)
class LibraryTrack:
    path: Path
    style: str
    seconds: float
    tags: tuple[str, ...] = ()
    split: str = "train"


def split_of(i: int) -> str:
    """Three in five tracks train, one validates, one tests."""
    return ("train", "train", "train", "validation", "test")[i % 5]


def write_library(
    out_dir: str | os.PathLike,
    tracks: int = 8,
    seconds: float = 20.0,
    formats: tuple[str, ...] = DEFAULT_FORMATS,
    sample_rate: int = 44100,
    seed: int = 0,
    broken: bool = False,
    varied: bool = False,
    jobs: int = 1,
    layers: float = 0.0,
    unlabelled: int = 0,
) -> list[LibraryTrack]:
    """Render ``tracks`` labelled tracks, ``unlabelled`` more and, optionally, broken files.

    Styles rotate through :data:`STYLES`, or with ``varied`` every track draws its own
    attributes (:func:`random_style`); formats rotate through ``formats``. ``layers`` > 0 (varied
    styles only) adds untagged layers that change every section, at that level. The unlabelled
    tracks (split ``unlabelled``) go to ``unlabelled/`` and not into ``labels.csv``: music to
    pre-train on whose tags the probe never sees, drawn after the labelled ones, so that they are
    the same tracks as numbers ``tracks`` onwards of a larger library. Files already there are
    kept; ``jobs`` > 1 renders in that many processes.
    """
    if layers < 0 or (layers > 0 and not varied):
        raise ValueError(f"layers {layers:g}: must be >= 0, and > 0 only with varied styles")
    if unlabelled < 0:
        raise ValueError(f"unlabelled {unlabelled}: must be >= 0")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if unlabelled:
        (out / UNLABELLED).mkdir(exist_ok=True)
    written, todo = [], []
    rng = np.random.default_rng(seed)
    for i in range(tracks + unlabelled):
        style = random_style(rng, layers) if varied else STYLES[i % len(STYLES)]
        fmt = formats[i % len(formats)]
        length = float(seconds * rng.uniform(0.9, 1.1))
        folder, split = (out, split_of(i)) if i < tracks else (out / UNLABELLED, UNLABELLED)
        path = folder / f"track{i:04d}_{style.name}.{fmt}"
        if not path.exists():
            todo.append((path, style, length, sample_rate, seed * 100_000 + i, fmt))
        written.append(LibraryTrack(path, style.name, length, tuple(style_tags(style)), split))
    render_all(todo, jobs)
    with open(out / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["uri", "style", "split", "tags"])
        writer.writerows([[t.path.name, t.style, t.split, ",".join(t.tags)] for t in written if t.split != UNLABELLED])
    if broken:
        write_broken_files(out / "broken")
    return written


def render_one(item: tuple) -> None:
    path, style, length, sample_rate, seed, fmt = item
    tmp = path.with_name(f".{path.name}.tmp")  # a killed run leaves no half-written track
    with open(tmp, "wb") as handle:
        encode(handle, render(style, length, sample_rate, seed=seed), sample_rate, fmt)
    os.replace(tmp, path)


def render_all(items: list[tuple], jobs: int) -> None:
    if jobs <= 1 or len(items) < 4:
        for item in items:
            render_one(item)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(render_one, items, chunksize=2))


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
