"""The on-disk shard format: WebDataset tars of ``<key>.json`` + ``<key>.s16`` (or ``.flac``).

``.s16`` is raw little-endian int16 PCM at 16 kHz mono: reading it back is a ``frombuffer``.
``.flac`` (``--codec flac``) is about half the disk and needs a decode to read.
Member names are validated on read: only ``<32 hex>.<json|s16|flac>`` regular files are
accepted, so nothing can escape a directory or collide; anything else is reported as malformed.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from mvssl_dist.constants import SAMPLE_RATE

CODECS = {"s16": "s16", "flac": "flac"}  # codec name -> member extension
MEMBER_NAME = re.compile(r"^(?P<key>[0-9a-f]{32})\.(?P<ext>json|s16|flac)$")
INT16_SCALE = 32768.0
NOT_IN_SHARD = "not in the shard, though the index lists it there (a truncated or replaced file?)"


def to_int16(audio: np.ndarray) -> np.ndarray:
    return np.round(np.clip(audio, -1.0, 32767 / 32768) * INT16_SCALE).astype("<i2")


def encode_payload(audio: np.ndarray, codec: str) -> bytes:
    """float32 mono 16 kHz -> the member's bytes for ``codec``."""
    pcm = to_int16(audio)
    if codec == "s16":
        return pcm.tobytes()
    if codec == "flac":
        return flac_bytes(pcm)
    raise ValueError(f"unknown codec '{codec}' (known: {', '.join(CODECS)})")


def flac_bytes(pcm: np.ndarray) -> bytes:
    """Lossless FLAC of int16 mono 16 kHz PCM (bit-exact on decode)."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="flac") as container:
        stream = container.add_stream("flac", rate=SAMPLE_RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buffer.getvalue()


def decode_payload(ext: str, payload: bytes, num_samples: int) -> np.ndarray:
    """Member bytes -> int16 ``[num_samples]``; ValueError when the payload does not fit."""
    if ext == "s16":
        if len(payload) != 2 * num_samples:
            raise ValueError(f"payload holds {len(payload) // 2} samples, json says {num_samples}")
        return np.frombuffer(payload, dtype="<i2")
    if ext == "flac":
        from mvssl_dist.audio import decode

        audio = decode(payload, SAMPLE_RATE, name="flac member")
        if len(audio) != num_samples:
            raise ValueError(f"flac member decodes to {len(audio)} samples, json says {num_samples}")
        return np.round(audio * INT16_SCALE).astype("<i2")
    raise ValueError(f"unknown payload type '{ext}'")


@dataclass
class Member:
    """One track as stored: its key, metadata and int16 audio."""

    key: str
    meta: dict
    pcm: np.ndarray  # int16 [samples]

    @property
    def audio(self) -> np.ndarray:
        return self.pcm.astype(np.float32) / INT16_SCALE


@dataclass
class Malformed:
    """A member that could not be read; skipped and counted, never fatal."""

    shard: str
    name: str
    reason: str


def write_sample(tar: tarfile.TarFile, key: str, meta: dict, payload: bytes, ext: str) -> None:
    for name, data in ((f"{key}.json", json.dumps(meta, sort_keys=True).encode()), (f"{key}.{ext}", payload)):
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o444, 0  # mtime 0: identical bytes on re-runs
        tar.addfile(info, io.BytesIO(data))


def _parse_group(shard: str, key: str, parts: dict[str, bytes]) -> Member | Malformed:
    if "json" not in parts:
        return Malformed(shard, key, "no json member")
    payload_ext = [e for e in parts if e != "json"]
    if len(payload_ext) != 1:
        return Malformed(shard, key, f"expected one audio member, found {payload_ext}")
    try:
        meta = json.loads(parts["json"])
        num_samples = int(meta["num_samples"])
        pcm = decode_payload(payload_ext[0], parts[payload_ext[0]], num_samples)
    except (ValueError, KeyError, TypeError) as err:
        return Malformed(shard, key, f"{type(err).__name__}: {err}")
    return Member(key, meta, pcm)


def read_shard(fileobj: BinaryIO, shard: str, wanted: set[str] | None = None) -> Iterator[Member | Malformed]:
    """Read a shard tar: yields each track (only ``wanted`` keys when given), or a :class:`Malformed`
    record for what is bad, a wanted key the tar lacks included.

    A seekable file is read in random-access mode: each payload is one read, and members
    not wanted are skipped without reading them (stream mode copies 10 KB records, ~20x slower).
    """
    seen: set[str] = set()
    key, parts, broken = None, {}, ""
    seekable = getattr(fileobj, "seekable", lambda: False)()

    def keep(name: str | None) -> bool:
        return name is not None and (wanted is None or name in wanted)

    try:
        with tarfile.open(fileobj=fileobj, mode="r:" if seekable else "r|") as tar:
            for info in tar:
                match = MEMBER_NAME.match(info.name)
                if not info.isfile() or match is None:
                    yield Malformed(shard, info.name, "invalid member name or type")
                    continue
                if match["key"] != key:
                    if keep(key):
                        yield _parse_group(shard, key, parts)
                    key, parts = match["key"], {}
                    if key in seen:
                        yield Malformed(shard, info.name, "key repeated in the shard")
                        key = None
                        continue
                    seen.add(key)
                if not keep(key):
                    continue
                parts[match["ext"]] = tar.extractfile(info).read()
    except tarfile.TarError as err:
        broken = f"corrupt tar: {err}"
    told = False  # whether a track's record carries the tar's error
    if keep(key):
        group = _parse_group(shard, key, parts)
        told = bool(broken) and isinstance(group, Malformed)
        yield Malformed(shard, key, broken) if told else group
    lost = sorted((wanted or set()) - seen)  # a tar cut at a member's start ends without an error
    for name in lost:
        yield Malformed(shard, name, f"{broken}, before this track" if broken else NOT_IN_SHARD)
    if broken and not lost and not told:
        yield Malformed(shard, "<tar>", broken)
