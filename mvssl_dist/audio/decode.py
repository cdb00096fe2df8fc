"""Decode any common audio file to float32 mono at a target rate, with PyAV (bundled FFmpeg).

No system ffmpeg is needed: the PyAV wheel carries its codecs. Channels are averaged
(mean downmix) before resampling, and resampling is soxr's high-quality mode, streamed,
so a long track never holds more than one copy of its native-rate signal.
"""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass, field
from typing import BinaryIO

import av
import numpy as np
import soxr

Source = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO

# Decoded length may fall short of the declared one by this much before we call it truncated.
TRUNCATION_TOLERANCE_S = 0.5
TRUNCATION_TOLERANCE_FRAC = 0.02
TAG_NAMES = ("title", "artist", "album")
RESAMPLE_BLOCK = 1 << 16  # native samples pooled per resampler call


class AudioDecodeError(Exception):
    """A file that cannot become audio. ``reason`` is a short machine-readable code.

    Codes: ``empty``, ``unreadable``, ``not_audio``, ``truncated``, ``zero_length``, ``too_long``,
    ``not_finite``.
    """

    def __init__(self, name: str, reason: str, detail: str) -> None:
        super().__init__(f"{name}: {detail}")
        self.name = name
        self.reason = reason
        self.detail = detail


@dataclass
class DecodedAudio:
    """The decoded signal plus what the source said about itself."""

    audio: np.ndarray  # float32 [samples], mono, at ``sample_rate``
    sample_rate: int
    source_sample_rate: int
    source_channels: int
    source_format: str  # container name as FFmpeg reports it, e.g. "mp3", "flac", "ogg"
    source_codec: str
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate


def display_name(source: object) -> str:
    """A printable name for a path, even one whose bytes are not valid UTF-8."""
    if isinstance(source, (str, os.PathLike)):
        raw = os.fsencode(source)
        return raw.decode("utf-8", errors="backslashreplace")
    return getattr(source, "name", None) or "<bytes>"


def special_kind(mode: int) -> str:
    """What a path that is neither a file nor a folder is, in words (from ``os.stat().st_mode``)."""
    kinds = (
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "a special file")


def refuse_special_file(path: str | os.PathLike, name: str) -> None:
    """A named pipe or a device is refused before it is opened: opening a pipe waits for a writer,
    and a device such as /dev/urandom never ends. A missing path is left to ``open`` to report."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise AudioDecodeError(name, "unreadable", f"not a regular file but {special_kind(mode)}")


def _open_source(source: Source, name: str) -> BinaryIO:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioDecodeError(name, "empty", "empty input (0 bytes)")
        return io.BytesIO(bytes(source))
    if isinstance(source, (str, os.PathLike)):
        refuse_special_file(source, name)
        try:
            handle = open(source, "rb")  # our own open: PyAV rejects bytes paths and odd encodings
        except IsADirectoryError:
            raise AudioDecodeError(name, "unreadable", "is a directory, not a file") from None
        except OSError as err:
            raise AudioDecodeError(name, "unreadable", f"cannot open ({err.strerror or err})") from None
        if os.fstat(handle.fileno()).st_size == 0:
            handle.close()
            raise AudioDecodeError(name, "empty", "empty file (0 bytes)")
        return handle
    return source  # an already-open binary file object


def _why(err: av.error.FFmpegError) -> str:
    return err.strerror or type(err).__name__


def _to_float_channels(frame: av.AudioFrame) -> np.ndarray:
    """One decoded frame as float32 ``[channels, samples]`` whatever its sample format."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:
        data = data.reshape(-1, channels).T
    if data.dtype.kind == "f":
        return data.astype(np.float32, copy=False)
    if data.dtype == np.uint8:
        return (data.astype(np.float32) - 128.0) / 128.0
    scale = float(2 ** (8 * data.dtype.itemsize - 1))
    return data.astype(np.float32) / scale


def _wav_shortfall(handle: BinaryIO) -> int:
    """Bytes a RIFF/WAVE file's ``data`` chunk claims beyond the end of the file (0 if none).

    FFmpeg re-derives a WAV's duration from the file size, so a cut-off WAV would decode
    "successfully"; the header still says how long it should have been.
    """
    try:
        start = handle.tell()
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return 0
        size = handle.seek(0, io.SEEK_END)
        pos = 12
        while pos + 8 <= size:
            handle.seek(pos)
            chunk = handle.read(8)
            length = int.from_bytes(chunk[4:8], "little")
            if chunk[:4] == b"data":
                return 0 if length == 0xFFFFFFFF else max(0, pos + 8 + length - size)
            pos += 8 + length + (length & 1)
        return 0
    except (OSError, ValueError):
        return 0
    finally:
        handle.seek(start)


def _declared_seconds(container: av.container.InputContainer, stream: av.audio.AudioStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def _tags(container: av.container.InputContainer, stream: av.audio.AudioStream) -> dict[str, str]:
    found: dict[str, str] = {}
    for meta in (container.metadata, stream.metadata):
        for key, value in meta.items():
            key = key.lower()
            if key in TAG_NAMES and value and key not in found:
                found[key] = valid_text(str(value))
    return found


def valid_text(value: str) -> str:
    """A tag as valid UTF-8 text: bytes that were not UTF-8 are dropped. PyAV 19 hands them on
    as lone surrogates (``surrogateescape``), which parquet cannot store; before 19 the
    decoder dropped them itself (``metadata_errors="ignore"``, an option 19 removed)."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "ignore")


# PyAV 19 removed ``metadata_errors`` (tags are decoded with ``surrogateescape``, see valid_text);
# before it, a tag that is not UTF-8 (a Latin-1 WAV INFO title) failed the whole file.
OPEN_OPTIONS = {"metadata_errors": "ignore"} if int(av.__version__.split(".")[0]) < 19 else {}


class _Resampler:
    """Mono float32 stream -> target rate; a pass-through when the rates match."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.rate_in = in_rate
        self.passthrough = in_rate == out_rate
        self.stream = (
            None if self.passthrough else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")
        )

    def push(self, mono: np.ndarray, last: bool = False) -> np.ndarray:
        if self.passthrough:
            return mono
        return self.stream.resample_chunk(mono, last=last)


def _decode_stream(
    container, stream, name: str, sample_rate: int, max_seconds: float | None = None
) -> tuple[list[np.ndarray], int, int]:
    """Decode, downmix and resample every frame; returns (chunks, native frames, channels).

    With ``max_seconds``, decoding stops with ``too_long`` once that much audio has come out: a
    stream that declares no length, or a shorter one than it holds, cannot fill a worker's memory.

    Decoded frames are small (128-2048 samples): they are pooled in an ``av.AudioFifo`` (a
    copy in C) and converted, downmixed and resampled ``RESAMPLE_BLOCK`` samples at a time.
    Per-frame numpy work cost 2-4x the codec itself (Vorbis frames are the smallest).
    """
    chunks: list[np.ndarray] = []
    native = 0
    channels = stream.codec_context.channels or 0
    resampler: _Resampler | None = None
    fifo = av.AudioFifo()

    drained = 0  # native samples resampled so far: where a block starts

    def drain(last: bool = False) -> None:
        nonlocal channels, drained
        mono = np.zeros(0, np.float32)
        if fifo.samples:
            data = _to_float_channels(fifo.read())
            channels = data.shape[0]
            mono = data[0] if channels == 1 else data.mean(axis=0)
            check_finite(mono, drained, resampler.rate_in, name)
            drained += len(mono)
        if len(mono) or last:
            chunks.append(resampler.push(mono, last=last))

    try:
        for packet in container.demux(stream):
            for frame in packet.decode():
                if not frame.samples:
                    continue
                if resampler is None:
                    resampler = _Resampler(frame.sample_rate, sample_rate)
                native += frame.samples
                if max_seconds is not None and native > max_seconds * frame.sample_rate:
                    raise AudioDecodeError(
                        name, "too_long", f"more than the {max_seconds:.0f} s limit (decoding stopped there)"
                    )
                frame.pts = None  # the fifo checks timestamps for continuity; gaps are not ours to judge
                try:
                    fifo.write(frame)
                except ValueError:  # the format or layout changed mid-stream: a fresh fifo
                    drain()
                    fifo = av.AudioFifo()
                    fifo.write(frame)
                if fifo.samples >= RESAMPLE_BLOCK:
                    drain()
    except av.error.FFmpegError as err:
        if native == 0:
            raise AudioDecodeError(name, "not_audio", f"cannot decode audio ({_why(err)})") from None
        raise AudioDecodeError(name, "truncated", f"decoding failed after {native} frames ({_why(err)})") from None
    if resampler is not None:
        drain(last=True)
    return chunks, native, channels


def decode_with_info(
    source: Source, sample_rate: int = 16000, name: str | None = None, max_seconds: float | None = None
) -> DecodedAudio:
    """Decode ``source`` (a path, the file's bytes, or a binary file object) to mono float32.

    Raises :class:`AudioDecodeError` naming the file and the cause; never returns empty audio.
    With ``max_seconds``, a file whose declared length exceeds it fails fast with ``too_long``
    (before any decoding); one that declares no length fails as soon as it has decoded more.
    """
    name = name or display_name(source)
    handle = _open_source(source, name)
    try:
        if handle.seekable() and (missing := _wav_shortfall(handle)):
            raise AudioDecodeError(name, "truncated", f"WAV data chunk is {missing} bytes longer than the file")
        try:
            container = av.open(handle, mode="r", **OPEN_OPTIONS)
        except av.error.FFmpegError as err:
            raise AudioDecodeError(name, "not_audio", f"not a recognised audio file ({_why(err)})") from None
        with container:
            if not container.streams.audio:
                raise AudioDecodeError(name, "not_audio", "no audio stream in the file")
            stream = container.streams.audio[0]
            source_rate = stream.codec_context.sample_rate or stream.rate or 0
            declared = _declared_seconds(container, stream)
            if max_seconds is not None and declared and declared > max_seconds:
                raise AudioDecodeError(
                    name, "too_long", f"{declared:.0f} s is longer than the {max_seconds:.0f} s limit"
                )
            chunks, native, channels = _decode_stream(container, stream, name, sample_rate, max_seconds)
            if native == 0:
                raise AudioDecodeError(name, "zero_length", "the audio stream holds no samples")
            source_rate = source_rate or sample_rate
            decoded_s = native / source_rate
            if declared and declared - decoded_s > max(TRUNCATION_TOLERANCE_S, TRUNCATION_TOLERANCE_FRAC * declared):
                raise AudioDecodeError(
                    name, "truncated", f"decoded {decoded_s:.2f} s of a declared {declared:.2f} s (file cut short?)"
                )
            audio = np.concatenate(chunks).astype(np.float32, copy=False)
            return DecodedAudio(
                audio=audio,
                sample_rate=sample_rate,
                source_sample_rate=int(source_rate),
                source_channels=int(channels),
                source_format=container.format.name,
                source_codec=stream.codec_context.name,
                tags=_tags(container, stream),
            )
    finally:
        if handle is not source:
            handle.close()


def check_finite(block: np.ndarray, start: int, rate: int, name: str) -> None:
    """Refuse a block of native-rate samples (the ``start``-th onwards) holding NaN or infinity:
    a corrupt floating-point file, which would pass every level check as silence or noise and
    turn any embedding made from it into NaN."""
    if not np.isfinite(block).all():
        first = (start + int(np.argmin(np.isfinite(block)))) / rate
        raise AudioDecodeError(name, "not_finite", f"NaN or infinite samples, the first at {first:.2f} s")


def decode(source: Source, sample_rate: int = 16000, name: str | None = None) -> np.ndarray:
    """Decode to a float32 mono numpy array at ``sample_rate``; see :func:`decode_with_info`."""
    return decode_with_info(source, sample_rate, name).audio
