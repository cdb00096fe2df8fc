"""A small generated catalogue with a broken-file zoo, for the ingest-and-later tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from mvssl_dist.audio.synth import STYLES, encode, render

GOOD_FORMATS = ("mp3", "flac", "ogg", "opus", "wav", "m4a")


def write_float_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    """A mono 32-bit floating-point WAV holding ``samples`` as they are: levels past full scale,
    NaN and infinities included (an encoder would clip them; such files come from DAWs and scripts)."""
    import struct

    data = np.asarray(samples, "<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)  # WAVE_FORMAT_IEEE_FLOAT, mono
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
    path.write_bytes(header + b"data" + struct.pack("<I", len(data)) + data)


def write_catalogue(root: Path, seconds: float = 14.0) -> dict:
    """Returns {"good": [paths], "rejects": {path: reason}} for what it wrote under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    good = []
    for i, fmt in enumerate(GOOD_FORMATS):
        path = root / f"{i:02d}_{STYLES[i % 4].name}.{fmt}"
        encode(path, render(STYLES[i % 4], seconds + i, 44100, seed=i), 44100, fmt)
        good.append(path)
    surround = np.stack([render(STYLES[c % 4], seconds, 96000, seed=40 + c) for c in range(6)])
    encode(root / "06_surround.flac", surround, 96000)
    good.append(root / "06_surround.flac")
    odd = os.path.join(os.fsencode(root), b"07_caf\xe9.flac")
    encode(odd, render(STYLES[1], seconds, 22050, seed=7), 22050, "flac")
    good.append(Path(os.fsdecode(odd)))

    zoo = root / "zoo"
    zoo.mkdir()
    rejects = {}
    (zoo / "empty.mp3").write_bytes(b"")
    rejects[zoo / "empty.mp3"] = "empty"
    (zoo / "random.mp3").write_bytes(np.random.default_rng(0).bytes(6000))
    rejects[zoo / "random.mp3"] = "not_audio"
    (zoo / "text.wav").write_bytes(b"definitely not audio\n" * 40)
    rejects[zoo / "text.wav"] = "not_audio"
    flac = good[1].read_bytes()
    (zoo / "truncated.flac").write_bytes(flac[: len(flac) // 3])
    rejects[zoo / "truncated.flac"] = "truncated"
    encode(zoo / "short.wav", render(STYLES[0], 0.5, 16000, seed=9), 16000)
    rejects[zoo / "short.wav"] = "too_short"
    encode(zoo / "zeros.flac", np.zeros(16000 * 15, np.float32), 16000)
    rejects[zoo / "zeros.flac"] = "silent"
    (zoo / "x.mp3").mkdir()
    rejects[zoo / "x.mp3"] = "unreadable"
    shutil.copy(good[0], zoo / "zz_copy.mp3")
    rejects[zoo / "zz_copy.mp3"] = "duplicate_of"
    # Not inputs of a folder walk (no audio extension), but reported: a cover image, and audio
    # stored under a hash name as object stores often do.
    (zoo / "cover.jpg").write_bytes(b"\xff\xd8\xff\xe0" + np.random.default_rng(1).bytes(3000))
    encode(zoo / "3f2a9c0b", render(STYLES[3], seconds, 44100, seed=11), 44100, "flac")
    return {"good": good, "rejects": rejects, "not_read": [zoo / "3f2a9c0b", zoo / "cover.jpg"]}


def ingested_catalogue(src: Path, out: Path, seconds: float, **options) -> Path:
    """:func:`write_catalogue` into ``src``, then ingest it into ``out`` (extra ``IngestOptions`` allowed)."""
    from mvssl_dist.shards import IngestOptions, ingest

    write_catalogue(src, seconds=seconds)
    ingest(IngestOptions([str(src)], str(out), progress=False, **options), report=lambda m: None)
    return out
