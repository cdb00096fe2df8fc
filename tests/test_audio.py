from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import soxr
from catalogue import write_float_wav

from mvssl_dist.audio import AudioDecodeError, decode, decode_with_info
from mvssl_dist.audio.synth import STYLES, encode, render

# Encoder frame sizes bound how far a lossy file's length may differ from the truth.
FRAME_AT_16K = {"mp3": 1152, "ogg": 1024, "opus": 960, "m4a": 1024}


def truth_16k(music: np.ndarray, rate: int = 44100) -> np.ndarray:
    return soxr.resample(music, rate, 16000, quality="VHQ")


@pytest.mark.parametrize(
    "name", ["music.mp3", "music.flac", "music.ogg", "music.opus", "music.wav", "music24.wav", "music.m4a"]
)
def test_decode_every_format(encoded_dir, music_44k, name):
    truth = truth_16k(music_44k)
    decoded = decode_with_info(encoded_dir / name)
    audio = decoded.audio
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert decoded.sample_rate == 16000 and decoded.source_channels in (1, 2)
    frame = FRAME_AT_16K.get(name.rsplit(".", 1)[1], 1)
    assert abs(len(audio) - len(truth)) <= frame
    n = min(len(audio), len(truth))
    assert np.corrcoef(audio[:n], truth[:n])[0, 1] > 0.99


def test_six_channel_96k_flac_is_mean_downmixed(tmp_path):
    channels = np.stack([render(STYLES[i % 4], 5.0, 96000, seed=i) for i in range(6)])
    encode(tmp_path / "surround.flac", channels, 96000)
    decoded = decode_with_info(tmp_path / "surround.flac")
    assert (decoded.source_channels, decoded.source_sample_rate) == (6, 96000)
    truth = truth_16k(channels.mean(axis=0), 96000)
    assert abs(len(decoded.audio) - len(truth)) <= 1
    assert np.corrcoef(decoded.audio, truth[: len(decoded.audio)])[0, 1] > 0.99


def test_bytes_file_objects_and_non_utf8_names(tmp_path, encoded_dir):
    data = (encoded_dir / "music.flac").read_bytes()
    reference = decode(encoded_dir / "music.flac")
    np.testing.assert_array_equal(decode(data), reference)
    with open(encoded_dir / "music.flac", "rb") as handle:
        np.testing.assert_array_equal(decode(handle), reference)
    odd = os.path.join(os.fsencode(tmp_path), b"caf\xe9 \xff.flac")
    with open(odd, "wb") as handle:
        handle.write(data)
    np.testing.assert_array_equal(decode(os.fsdecode(odd)), reference)  # str with surrogate escapes
    np.testing.assert_array_equal(decode(Path(os.fsdecode(odd))), reference)
    with pytest.raises(AudioDecodeError) as info:  # the name in an error stays printable
        decode(os.fsdecode(odd)[:-5] + ".missing")
    assert "caf\\xe9 \\xff.missing" in str(info.value)


def test_a_tag_that_is_not_utf8_loses_only_its_odd_bytes(tmp_path):
    """A Latin-1 WAV INFO title: PyAV before 19 failed the file unless told to ignore the bytes;
    19 removed that option and hands them on as surrogates, which parquet refuses."""
    import struct
    import wave

    import pyarrow as pa

    path = tmp_path / "latin.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes((np.sin(np.arange(16000) / 10) * 8000).astype(np.int16).tobytes())
    value = b"Caf\xe9 del Mar\x00"
    title = b"INAM" + struct.pack("<I", len(value)) + value + b"\x00" * (len(value) % 2)
    data = bytearray(path.read_bytes()) + b"LIST" + struct.pack("<I", 4 + len(title)) + b"INFO" + title
    struct.pack_into("<I", data, 4, len(data) - 8)
    path.write_bytes(bytes(data))
    decoded = decode_with_info(path)
    assert decoded.tags == {"title": "Caf del Mar"} and len(decoded.audio) == 16000
    assert pa.array([decoded.tags["title"]], pa.string()).to_pylist() == ["Caf del Mar"]


def test_tags_are_read(tmp_path):
    import av

    path = tmp_path / "tagged.flac"
    encode(path, render(STYLES[0], 2.0, 16000), 16000)
    with av.open(str(tmp_path / "t.flac"), "w") as out, av.open(str(path)) as src:
        out.metadata.update({"title": "Song", "artist": "Band", "album": "Record"})
        stream = out.add_stream_from_template(src.streams.audio[0])
        for packet in src.demux(src.streams.audio[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    assert decode_with_info(tmp_path / "t.flac").tags == {"title": "Song", "artist": "Band", "album": "Record"}


def _broken(tmp_path: Path, encoded_dir: Path) -> dict[str, tuple[Path, str]]:
    flac = (encoded_dir / "music.flac").read_bytes()
    wav = (encoded_dir / "music.wav").read_bytes()
    cases = {
        "empty": (tmp_path / "empty.mp3", b"", "empty"),
        "random": (tmp_path / "random.mp3", np.random.default_rng(0).bytes(8000), "not_audio"),
        "text": (tmp_path / "text.wav", b"plain text, no audio here\n" * 50, "not_audio"),
        "truncated_flac": (tmp_path / "cut.flac", flac[: len(flac) // 3], "truncated"),
        "truncated_wav": (tmp_path / "cut.wav", wav[: len(wav) // 4], "truncated"),
    }
    out = {}
    for key, (path, data, reason) in cases.items():
        path.write_bytes(data)
        out[key] = (path, reason)
    (tmp_path / "x.mp3").mkdir()
    out["directory"] = (tmp_path / "x.mp3", "unreadable")
    out["missing"] = (tmp_path / "missing.ogg", "unreadable")
    return out


@pytest.mark.parametrize("case", ["empty", "random", "text", "truncated_flac", "truncated_wav", "directory", "missing"])
def test_broken_inputs_raise_our_error_naming_the_file(tmp_path, encoded_dir, case):
    path, reason = _broken(tmp_path, encoded_dir)[case]
    with pytest.raises(AudioDecodeError) as info:
        decode(path)
    assert info.value.reason == reason
    assert str(info.value).startswith(f"{path}: ")
    assert "\n" not in str(info.value)


@pytest.mark.timeout(60)
def test_a_pipe_or_a_device_is_refused_before_it_is_opened(tmp_path):
    """Opening a named pipe waited for a writer, and /dev/urandom never ends: both hung for good."""
    os.mkfifo(tmp_path / "pipe.mp3")
    for path, kind in ((tmp_path / "pipe.mp3", "a named pipe"), (Path("/dev/urandom"), "a character device")):
        with pytest.raises(AudioDecodeError, match=f"^{path}: not a regular file but {kind}$") as info:
            decode(path)
        assert info.value.reason == "unreadable"


class _Unseekable(io.RawIOBase):
    """A file read as a pipe or a network stream is: no seeking, so no declared length."""

    def __init__(self, data: bytes) -> None:
        self.data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self.data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


@pytest.mark.parametrize("name", ["music.ogg", "music.mp3", "music.wav"])
def test_a_stream_with_no_declared_length_stops_decoding_at_the_limit(encoded_dir, name):
    """A length limit was checked only against the declared length; a stream declaring none was
    decoded whole, however long, before ingest's duration check could reject it."""
    data = (encoded_dir / name).read_bytes()
    whole = decode(_Unseekable(data))  # an mp3 read without seeking keeps ~250 more samples: compare like with like
    with pytest.raises(AudioDecodeError) as info:
        decode_with_info(_Unseekable(data), name=name, max_seconds=5)
    assert info.value.reason == "too_long" and "more than the 5 s limit" in str(info.value), info.value
    np.testing.assert_array_equal(decode_with_info(_Unseekable(data), name=name, max_seconds=60).audio, whole)


def test_empty_bytes_and_zero_length_stream(tmp_path):
    with pytest.raises(AudioDecodeError, match="<bytes>: empty input"):
        decode(b"")
    import struct

    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)  # PCM, mono, 16 kHz, 16-bit
    header = b"RIFF" + struct.pack("<I", 36) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
    (tmp_path / "zero.wav").write_bytes(header + b"data" + struct.pack("<I", 0))  # valid, no samples
    with pytest.raises(AudioDecodeError) as info:
        decode(tmp_path / "zero.wav")
    assert info.value.reason == "zero_length"


def test_nan_or_infinite_samples_are_refused_and_a_level_past_full_scale_kept(tmp_path):
    """A floating-point WAV with NaN samples decoded as it was: ingest called it silent ("RMS -inf
    dBFS") and `embed-file` wrote a NaN embedding."""
    music = render(STYLES[1], 6.0, 44100, seed=2)
    broken = music.copy()
    broken[44100:44200] = np.nan
    broken[50000] = np.inf
    write_float_wav(tmp_path / "nan.wav", broken, 44100)
    with pytest.raises(AudioDecodeError) as info:
        decode(tmp_path / "nan.wav")
    assert info.value.reason == "not_finite", info.value
    assert str(info.value).startswith(
        f"{tmp_path / 'nan.wav'}: "
    ) and "NaN or infinite samples, the first at 1.00 s" in str(info.value)
    write_float_wav(tmp_path / "loud.wav", 30 * music, 44100)  # the decoder keeps the level; ingest scales it
    write_float_wav(tmp_path / "plain.wav", music, 44100)
    np.testing.assert_allclose(decode(tmp_path / "loud.wav"), 30 * decode(tmp_path / "plain.wav"), rtol=1e-5, atol=1e-5)


class _FakePacket:
    def __init__(self, frame) -> None:
        self.frame = frame

    def decode(self):
        return [self.frame]


class _FakeContainer:
    """Yields pre-made frames, as a stream whose sample format and layout change midway."""

    def __init__(self, frames) -> None:
        self.frames = frames

    def demux(self, stream):
        return [_FakePacket(f) for f in self.frames]


def test_frames_that_change_format_midway_are_all_decoded():
    import av

    from mvssl_dist.audio.decode import RESAMPLE_BLOCK, _decode_stream

    rng = np.random.default_rng(0)
    mono = (rng.uniform(-0.5, 0.5, (1, 3000)) * 32767).astype(np.int16)
    stereo = rng.uniform(-0.5, 0.5, (2, RESAMPLE_BLOCK + 500)).astype(np.float32)
    frames = []
    for data, fmt, layout in [(mono, "s16", "mono"), (stereo, "fltp", "stereo"), (mono, "s16", "mono")]:
        frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=layout)
        frame.sample_rate = 16000
        frames.append(frame)
    stream = type("Stream", (), {"codec_context": type("Ctx", (), {"channels": 1})()})()
    chunks, native, _ = _decode_stream(_FakeContainer(frames), stream, "fake", 16000)
    expected = np.concatenate([mono[0] / 32768.0, stereo.mean(axis=0), mono[0] / 32768.0]).astype(np.float32)
    assert native == len(expected)
    np.testing.assert_allclose(np.concatenate(chunks), expected, atol=1e-7)
