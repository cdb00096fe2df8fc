from __future__ import annotations

import importlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from catalogue import write_catalogue, write_float_wav
from distributed_helpers import ensure_ray
from s3_helpers import CREDENTIALS, local_s3

from mvssl_dist.audio.synth import STYLES, encode, render
from mvssl_dist.cli import main
from mvssl_dist.shards import IngestOptions, ingest, path_to_uri, read_tracks, uri_to_path
from mvssl_dist.shards.format import Malformed, read_shard
from mvssl_dist.shards.ingest import inspect_input, load_plan, plan_units, scatter_key
from mvssl_dist.shards.reader import iter_shard_members
from mvssl_dist.shards.uris import find_sources

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalogue")
    return root, write_catalogue(root)


@pytest.fixture(scope="module")
def ingested(catalogue, tmp_path_factory):
    ensure_ray()
    root, _ = catalogue
    out = tmp_path_factory.mktemp("dataset")
    summary = ingest(IngestOptions([str(root)], str(out), shard_target_mb=2, progress=False), report=lambda m: None)
    return out, summary


def independent_decode(path: Path) -> np.ndarray:
    """PyAV with its own resampler (swresample) at the source layout, then a channel mean: not our path."""
    with open(path, "rb") as handle, av.open(handle) as container:
        layout = container.streams.audio[0].layout.name
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=16000)
        frames = [f.to_ndarray() for fr in container.decode(audio=0) for f in resampler.resample(fr)]
        frames += [f.to_ndarray() for f in resampler.resample(None)]
    return np.concatenate(frames, axis=1).mean(axis=0)


def test_every_input_is_indexed_or_rejected_with_its_reason(catalogue, ingested):
    _, expected = catalogue
    out, summary = ingested
    index = pq.read_table(out / "index.parquet").to_pylist()
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert summary.inputs == len(expected["good"]) + len(expected["rejects"]) == len(index) + len(rejects)
    assert sorted(uri_to_path(r["source_uri"]) for r in index) == sorted(str(p) for p in expected["good"])
    reasons = {uri_to_path(r["source_uri"]): r["reason"].split(":")[0] for r in rejects}
    assert reasons == {str(p): reason for p, reason in expected["rejects"].items()}
    dup = next(r for r in rejects if r["reason"].startswith("duplicate_of:"))
    original = next(r for r in index if r["source_uri"].endswith("00_bright_pop.mp3"))
    assert dup["reason"] == f"duplicate_of:{original['key']}" and original["key"] == original["source_sha256"][:32]
    assert all(r["detail"] for r in rejects)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["counts"]["tracks"] == len(index) and meta["counts"]["rejects"] == len(rejects)
    assert len(meta["index_sha256"]) == 64 and meta["total_hours"] > 0
    # What the folder walk passed over is counted and listed, not silently skipped.
    not_read = pq.read_table(out / "not_read.parquet").column("uri").to_pylist()
    assert [uri_to_path(u) for u in not_read] == [str(p) for p in expected["not_read"]]
    assert meta["counts"]["not_read"] == summary.not_read == 2


def album_catalogue(artists: int, first: int = 0) -> list[str]:
    """Bucket keys as a walk lists them: artist by artist, 10 tracks each."""
    return [f"s3://music/artist{a:03d}/album/{t:02d}.mp3" for a in range(first, artists) for t in range(10)]


def test_a_shard_holds_a_sample_of_the_catalogue_not_a_few_folders():
    """Packed as listed, a 20-track unit held 2 artists, and training drew each batch from the few
    shards its views tasks had just read: same-artist negatives no catalogue-wide draw gives."""
    uris = album_catalogue(40)
    plan = plan_units(uris, {}, 20 * 2e6, dict.fromkeys(uris, 1_000_000)).to_pylist()
    units: dict[int, list[dict]] = {}
    for row in plan:
        units.setdefault(row["unit"], []).append(row)
    assert len(units) == 20 and sorted(r["uri"] for r in plan) == sorted(uris)
    for rows in units.values():
        assert len({r["uri"].split("/")[3] for r in rows}) >= 10, rows  # 20 tracks from 10+ of the 40 artists
        assert [r["position"] for r in rows] == list(range(len(rows)))
        assert [r["order"] for r in rows] == sorted(r["order"] for r in rows)  # listing order inside a unit
    assert [r["order"] for r in sorted(plan, key=lambda r: r["order"])] == list(range(400))
    assert all(uris[r["order"]] == r["uri"] for r in plan)
    # a later run keeps every earlier place and packs the new inputs into new units, listed after
    previous = {r["uri"]: (r["unit"], r["position"], r["order"]) for r in plan}
    more = album_catalogue(50, first=40)
    again = plan_units(uris + more, previous, 20 * 2e6, dict.fromkeys(more, 1_000_000)).to_pylist()
    assert {r["uri"]: (r["unit"], r["position"], r["order"]) for r in again if r["uri"] in previous} == previous
    assert {r["unit"] for r in again if r["uri"] in more} == set(range(20, 25))
    assert sorted(r["order"] for r in again if r["uri"] in more) == list(range(400, 500))


def test_a_plan_from_before_the_listing_order_was_kept_reads_it_from_its_units(tmp_path):
    """Datasets written before: packed as listed, so (unit, position) is the listing order."""
    import pyarrow as pa

    old = pa.table({"uri": ["c", "a", "b"], "unit": [1, 0, 0], "position": [0, 1, 0]})
    pq.write_table(old, tmp_path / "plan.parquet")
    assert load_plan(tmp_path) == {"b": (0, 0, 0), "a": (0, 1, 1), "c": (1, 0, 2)}


def test_of_two_copies_the_one_listed_first_is_kept_whichever_shard_it_is_in(tmp_path, ray_local):  # noqa: ARG001
    """One input per unit, so the units follow the scattered order: the copy named second is given
    a name that the scatter puts first, and it is still the duplicate."""
    src = tmp_path / "src"
    src.mkdir()
    encode(src / "a.flac", render(STYLES[0], 13.0, 16000, seed=1), 16000)
    original = find_sources([str(src)]).uris[0]
    copy = next(n for n in (f"b{i}.flac" for i in range(100)) if scatter_key(original[:-6] + n) < scatter_key(original))
    shutil.copy(src / "a.flac", src / copy)
    ingest(IngestOptions([str(src)], str(tmp_path / "ds"), shard_target_mb=0.001, progress=False), report=print)
    plan = {r["uri"]: r["unit"] for r in pq.read_table(tmp_path / "ds" / "plan.parquet").to_pylist()}
    assert plan[original[:-6] + copy] < plan[original]  # the copy's shard comes first
    (kept,) = pq.read_table(tmp_path / "ds" / "index.parquet").to_pylist()
    (rejected,) = pq.read_table(tmp_path / "ds" / "rejects.parquet").to_pylist()
    assert uri_to_path(kept["source_uri"]) == str(src / "a.flac")
    assert uri_to_path(rejected["source_uri"]) == str(src / copy)
    assert rejected["reason"] == f"duplicate_of:{kept['key']}"


def test_files_not_read_can_be_given_back_as_a_list(catalogue, ingested, tmp_path, ray_local):  # noqa: ARG001
    """``not_read.parquet`` is a list file: passed as a SRC, the hash-named audio becomes a track,
    the image a ``not_audio`` reject, and the list empties; a re-run of the folder alone keeps it so."""
    root, expected = catalogue
    out = tmp_path / "ds"
    shutil.copytree(ingested[0], out)
    said: list[str] = []
    options = IngestOptions([str(root), str(out / "not_read.parquet")], str(out), shard_target_mb=2, progress=False)
    summary = ingest(options, report=said.append)
    index = {uri_to_path(r["source_uri"]) for r in pq.read_table(out / "index.parquet").to_pylist()}
    rejects = {uri_to_path(r["source_uri"]): r["reason"] for r in pq.read_table(out / "rejects.parquet").to_pylist()}
    assert str(expected["not_read"][0]) in index and rejects[str(expected["not_read"][1])] == "not_audio"
    assert summary.tracks == ingested[1].tracks + 1 and summary.not_read == 0
    assert pq.read_table(out / "not_read.parquet").num_rows == 0 and not any("not read" in m for m in said)
    again = ingest(IngestOptions([str(root)], str(out), shard_target_mb=2, progress=False), report=said.append)
    assert again.units_run == 0 and again.not_read == 0 and again.tracks == summary.tracks


def test_a_folder_of_files_without_audio_extensions_says_so(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a1b2").write_bytes(b"x" * 100)
    assert main(["ingest", str(tmp_path / "in"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("1 file in the folders was not read (no audio extension): a1b2: name them or list them")
    assert "\n" not in err


def test_an_ingest_where_nothing_became_a_track_fails(tmp_path, capsys, ray_local):  # noqa: ARG001
    """It printed "ingested 0 tracks" and exited 0, so `ray job submit` went on to pretrain nothing."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "empty.mp3").write_bytes(b"")
    (tmp_path / "in" / "notes.wav").write_text("not audio")
    assert main(["ingest", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "ingested 0 tracks" in captured.out and "2 rejected (empty: 1, not_audio: 1)" in captured.out
    last = captured.err.strip().splitlines()[-1]  # above it, when this test starts Ray: Ray's own lines
    assert last == f"mvssl: error: no input became a track; the reasons are in {tmp_path / 'o' / 'rejects.parquet'}"
    assert pq.read_table(tmp_path / "o" / "rejects.parquet").num_rows == 2


def test_non_utf8_name_is_recorded_losslessly(ingested):
    out, _ = ingested
    uris = pq.read_table(out / "index.parquet").column("source_uri").to_pylist()
    odd = next(u for u in uris if "caf" in u)
    assert odd.endswith("07_caf%E9.flac")
    assert os.fsencode(uri_to_path(odd)).endswith(b"07_caf\xe9.flac")


def test_audio_read_back_matches_an_independent_decode(catalogue, ingested):
    out, _ = ingested
    index = {r["key"]: r for r in pq.read_table(out / "index.parquet").to_pylist()}
    tracks = list(read_tracks(out))
    assert sorted(t.key for t in tracks) == sorted(index)
    for track in tracks:
        row = index[track.key]
        assert track.audio.dtype == np.float32 and len(track.audio) == row["num_samples"]
        assert row["duration_s"] == pytest.approx(len(track.audio) / 16000)
        truth = independent_decode(Path(uri_to_path(row["source_uri"])))
        assert abs(len(truth) - len(track.audio)) <= 1200  # within one codec frame
        n = min(len(truth), len(track.audio))
        assert np.corrcoef(truth[:n], track.audio[:n])[0, 1] > 0.99, row["source_uri"]
    surround = next(r for r in index.values() if r["source_uri"].endswith("06_surround.flac"))
    assert (surround["source_channels"], surround["source_sample_rate"]) == (6, 96000)


def test_rerun_skips_everything_and_a_new_file_is_picked_up(catalogue, tmp_path, ray_local):
    root, _ = catalogue
    src = tmp_path / "src"
    shutil.copytree(root, src, symlinks=True)
    out = tmp_path / "out"
    first = ingest(IngestOptions([str(src)], str(out), shard_target_mb=2, progress=False), report=lambda m: None)
    again = ingest(IngestOptions([str(src)], str(out), shard_target_mb=2, progress=False), report=lambda m: None)
    assert again.units_run == 0 and again.tracks == first.tracks
    shards = sorted((out / "shards").glob("*.tar"))
    written = {s.name: s.read_bytes() for s in shards}
    shards[0].write_bytes(written[shards[0].name][:10_000])  # a copy cut short, and one lost
    shards[-1].unlink()
    lines: list[str] = []
    mended = ingest(IngestOptions([str(src)], str(out), shard_target_mb=2, progress=False), report=lines.append)
    assert mended.units_run == 2 and mended.tracks == first.tracks
    assert f"shards/{shards[0].name} is 10,000 bytes, but ingest wrote {len(written[shards[0].name]):,}" in lines[0]
    assert "(and 1 more): written again from the inputs" in lines[0]
    assert {s.name: s.read_bytes() for s in sorted((out / "shards").glob("*.tar"))} == written  # byte for byte
    encode(src / "new_track.ogg", render(STYLES[3], 13.0, 44100, seed=99), 44100)
    grown = ingest(IngestOptions([str(src)], str(out), shard_target_mb=2, progress=False), report=lambda m: None)
    assert grown.units_run == 1 and grown.tracks == first.tracks + 1
    assert any(r["source_uri"].endswith("new_track.ogg") for r in pq.read_table(out / "index.parquet").to_pylist())
    # a master replaced under the same name: said, and read again on request
    encode(src / "new_track.ogg", render(STYLES[1], 17.0, 44100, seed=7), 44100)
    uri = path_to_uri(src / "new_track.ogg")
    lines.clear()
    said = ingest(IngestOptions([str(src)], str(out), shard_target_mb=2, progress=False), report=lines.append)
    assert said.units_run == 0 and "1 ingested input(s) changed since they were read, e.g. " in lines[0]
    assert " bytes then, " in lines[0] and "`--retry changed` reads them again" in lines[0]
    options = IngestOptions([str(src)], str(out), shard_target_mb=2, progress=False, retry=("changed",))
    lines.clear()
    redone = ingest(options, report=lines.append)
    assert redone.units_run == 1 and "--retry changed: 1 input(s) in 1 unit(s) are read again" in lines[0]
    row = next(r for r in pq.read_table(out / "index.parquet").to_pylist() if r["source_uri"] == uri)
    assert row["source_bytes"] == (src / "new_track.ogg").stat().st_size and 16.9 < row["duration_s"] < 17.1
    assert ingest(options, report=lambda m: None).units_run == 0  # nothing changed since
    # rewritten at the same size (a WAV remastered in place keeps it): seen by its modification time
    stat = (src / "new_track.ogg").stat()
    os.utime(src / "new_track.ogg", ns=(stat.st_atime_ns, stat.st_mtime_ns + 5 * 10**9))
    lines.clear()
    assert (
        ingest(IngestOptions([str(src)], str(out), shard_target_mb=2, progress=False), report=lines.append).units_run
        == 0
    )
    assert "1 ingested input(s) changed since they were read" in lines[0] and "(the same size, modified " in lines[0]
    # taken out of the catalogue: said, and with --retry changed it leaves the index for the rejects
    (src / "new_track.ogg").unlink()
    lines.clear()
    assert (
        ingest(IngestOptions([str(src)], str(out), shard_target_mb=2, progress=False), report=lines.append).units_run
        == 0
    )
    assert (
        "1 ingested input(s) changed since they were read, e.g. " in lines[0] and "(gone since it was read)" in lines[0]
    )
    gone = ingest(options, report=lambda m: None)
    assert gone.units_run == 1 and gone.tracks == first.tracks
    assert uri not in pq.read_table(out / "index.parquet").column("source_uri").to_pylist()
    assert {r["source_uri"]: r["reason"] for r in pq.read_table(out / "rejects.parquet").to_pylist()}[
        uri
    ] == "unreadable"


def _run_cli(args, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "mvssl_dist.cli", *args], env={**os.environ, **(env or {})}, **kw)


def test_killed_ingest_resumes_to_the_same_index(catalogue, tmp_path):
    root, _ = catalogue
    args = [str(root), "--shard-target-mb", "0.01", "--workers", "1", "--no-progress"]
    ensure_ray()  # the uninterrupted reference runs in this process's Ray: one Ray start-up fewer
    clean = IngestOptions([str(root)], str(tmp_path / "clean"), workers=1, shard_target_mb=0.01, progress=False)
    ingest(clean, report=lambda message: None)
    out = tmp_path / "killed"
    proc = _run_cli(
        ["ingest", *args, "--out", str(out)],
        env={"MVSSL_FAULT_UNIT_DELAY_S": "0.7"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and len(list((out / "shards").glob("shard-*.parquet"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    proc.wait()
    done_before = len(list((out / "shards").glob("shard-*.parquet")))
    units = len(set(pq.read_table(out / "plan.parquet").column("unit").to_pylist()))
    assert 2 <= done_before < units and not (out / "index.parquet").exists()
    resumed = _run_cli(["ingest", *args, "--out", str(out)], stdout=subprocess.DEVNULL)
    assert resumed.wait(timeout=300) == 0
    assert pq.read_table(out / "index.parquet").equals(pq.read_table(tmp_path / "clean" / "index.parquet"))
    assert pq.read_table(out / "rejects.parquet").equals(pq.read_table(tmp_path / "clean" / "rejects.parquet"))
    hashes = [json.loads((d / "dataset.json").read_text())["index_sha256"] for d in (out, tmp_path / "clean")]
    assert hashes[0] == hashes[1]
    assert not list((out / "shards").glob(".*tmp*"))  # no half-written file visible
    assert not list(out.glob(".*tmp*"))


def test_a_failed_write_is_one_line_and_leaves_no_partial_file(catalogue, ingested, tmp_path, monkeypatch):
    """A full disk gave the user a Ray traceback and left the half-written tar behind."""
    import errno
    import importlib

    module = importlib.import_module("mvssl_dist.shards.ingest")  # the package's `ingest` is the function

    _, expected = catalogue
    defaults = IngestOptions([], "")
    options = json.dumps({k: getattr(defaults, k) for k in module.PROCESSING_OPTIONS})
    uris = [path_to_uri(p) for p in expected["good"][:2]]
    out = tmp_path / "full"
    (out / "shards").mkdir(parents=True)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(module, "write_sample", full)
    result = module.process_unit({"unit": 3, "uris": uris, "out": str(out), "options": options})
    assert result["error"] == f"writing {out / 'shards' / 'shard-000003.tar'}: No space left on device"
    assert list((out / "shards").iterdir()) == []  # the temporary tar is gone
    monkeypatch.undo()

    gone = tmp_path / "gone"  # the output folder vanished under the workers: the driver says so in one line
    with pytest.raises(module.IngestError) as err:
        module.run_units(gone, {0: uris}, IngestOptions([], str(gone), progress=False), report=lambda m: None)
    assert str(err.value).startswith(f"writing {gone / 'shards'}")
    assert "No such file or directory; the 0 unit(s) finished are kept" in str(err.value)

    done, _ = ingested  # what a killed run left under temporary names goes at the next run
    for stale in (done / "shards" / ".shard-000000.tar.tmp-999", done / ".index.parquet.tmp-999"):
        stale.write_bytes(b"half")
    ingest(IngestOptions([str(catalogue[0])], str(done), shard_target_mb=2, progress=False), report=lambda m: None)
    assert not list(done.glob(".*.tmp-*")) and not list((done / "shards").glob(".*.tmp-*"))


def test_retry_reads_again_what_was_rejected_for_a_reason_since_mended(catalogue, tmp_path, ray_local, capsys):  # noqa: ARG001
    """A read that failed (a network or disk error, a file not yet copied in) stayed rejected for
    good: a re-run skips finished units, so only a new DATASET_DIR could take the file in."""
    _, expected = catalogue
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    for path in expected["good"][:3]:
        shutil.copy(path, shelf / path.name)
    late = tmp_path / "late.flac"
    (shelf / "late.flac").symlink_to(late)  # not there yet: read fails
    args = ["ingest", str(shelf), "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(args) == 0
    assert main(args) == 0  # the same command leaves the reject as it is
    rejects = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    assert [r["reason"] for r in rejects] == ["unreadable"] and "late.flac" in rejects[0]["detail"]
    shutil.copy(next(p for p in expected["good"][3:] if p.suffix == ".flac"), late)
    capsys.readouterr()
    assert main([*args, "--retry", "unreadable,truncated"]) == 0
    out = capsys.readouterr().out
    assert "--retry unreadable,truncated: 1 input(s) in 1 unit(s) are read again" in out
    assert "ingested 4 tracks" in out and "rejected" not in out
    index = pq.read_table(tmp_path / "out" / "index.parquet").column("source_uri").to_pylist()
    assert len(index) == 4 and any(uri.endswith("late.flac") for uri in index)
    assert main([*args, "--retry", "unreadble"]) == 1
    assert capsys.readouterr().err.strip().startswith("mvssl: error: --retry unreadble: not a reason inputs are")


def test_an_output_folder_inside_the_source_is_not_walked(catalogue, tmp_path, ray_local, monkeypatch, capsys):  # noqa: ARG001
    """`mvssl ingest . --out dataset` listed the dataset's own index, shards and lock as files
    "not read" on every re-run."""
    _, expected = catalogue
    for path in expected["good"][:2]:
        shutil.copy(path, tmp_path / path.name)
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main(["ingest", ".", "--out", "dataset", "--no-progress"]) == 0
        said = capsys.readouterr().out
        assert "ingested 2 tracks" in said and "not read" not in said, said
    assert not (tmp_path / "dataset" / "not_read.parquet").exists()


@pytest.mark.timeout(60)
def test_a_pipe_or_a_device_among_the_inputs_becomes_a_reject_not_a_hang(tmp_path):
    """A named pipe with an audio name in a catalogue folder (or a link to /dev/urandom) stopped
    the ingest for good: its task waited for a writer, or read without end."""
    os.mkfifo(tmp_path / "pipe.mp3")
    (tmp_path / "noise.wav").symlink_to("/dev/urandom")
    found = find_sources([str(tmp_path)])
    assert [uri_to_path(u) for u in found.uris] == [str(tmp_path / "noise.wav"), str(tmp_path / "pipe.mp3")]
    options = {"max_duration_s": 1800.0, "min_duration_s": 12.0}
    rows = [inspect_input(uri, options) for uri in found.uris]
    assert [(row["status"], audio) for row, audio in rows] == [("unreadable", None)] * 2
    assert rows[0][0]["detail"] == f"{tmp_path / 'noise.wav'}: not a regular file but a character device"
    assert rows[1][0]["detail"] == f"{tmp_path / 'pipe.mp3'}: not a regular file but a named pipe"


def test_a_level_past_full_scale_is_scaled_not_clipped_and_nan_samples_rejected(tmp_path):
    """Shards store int16: a floating-point file at 30x full scale was clipped into a square wave,
    and one with NaN samples was rejected as silent ("RMS -inf dBFS")."""
    from mvssl_dist.audio import decode
    from mvssl_dist.shards.ingest import write_unit

    music = render(STYLES[2], 14.0, 44100, seed=5)
    write_float_wav(tmp_path / "loud.wav", 30 * music, 44100)
    broken = music.copy()
    broken[1000] = np.nan
    write_float_wav(tmp_path / "nan.wav", broken, 44100)
    options = {"min_duration_s": 12.0, "max_duration_s": 1800.0, "silence_db": -60.0, "codec": "s16"}
    (tmp_path / "out" / "shards").mkdir(parents=True)
    uris = [path_to_uri(tmp_path / "loud.wav"), path_to_uri(tmp_path / "nan.wav")]
    assert write_unit(0, uris, tmp_path / "out", options) == {"unit": 0, "tracks": 1, "inputs": 2, "scaled": 1}
    manifest = pq.read_table(tmp_path / "out" / "shards" / "shard-000000.parquet").to_pylist()
    assert [row["status"] for row in manifest] == ["ok", "not_finite"], manifest
    (member,) = iter_shard_members(tmp_path / "out" / "shards" / "shard-000000.tar")
    source = decode(tmp_path / "loud.wav")
    peak = np.abs(source).max()
    assert peak > 15 and member.meta["gain_db"] == round(-20 * np.log10(peak), 2)
    assert np.abs(member.pcm.astype(np.int32)).max() >= 32767  # the loudest sample at full scale
    np.testing.assert_allclose(member.audio, source / peak, atol=1 / 32768)  # the waveform, not a square wave
    assert manifest[0]["rms_db"] == pytest.approx(20 * np.log10(np.sqrt(np.mean(source.astype(np.float64) ** 2))))


def test_a_large_input_is_decoded_from_the_file_with_the_same_result(catalogue, monkeypatch):
    """Inputs were read whole into memory (and copied once more by the decoder): a multi-GB master
    could take a worker's memory. Above a size they are now hashed and decoded from the open file."""
    import importlib

    uris = importlib.import_module("mvssl_dist.shards.uris")
    ingest_module = importlib.import_module("mvssl_dist.shards.ingest")
    _, expected = catalogue
    options = {"min_duration_s": 12.0, "max_duration_s": 1800.0, "silence_db": -60.0}
    inputs = [*expected["good"], *expected["rejects"]]
    in_memory = [ingest_module.inspect_input(path_to_uri(p), options) for p in inputs]
    monkeypatch.setattr(uris, "STREAM_ABOVE_BYTES", 0)  # every input counts as large
    opened = []
    real_open = uris.open_input
    monkeypatch.setattr(uris, "open_input", lambda uri: opened.append(uri) or real_open(uri))
    streamed = [ingest_module.inspect_input(path_to_uri(p), options) for p in inputs]
    assert len(opened) >= 2 * len(expected["good"])  # hashed in one pass, decoded from a second
    for path, (row, audio), (row_s, audio_s) in zip(inputs, in_memory, streamed, strict=True):
        assert row_s == row, path
        if audio is None:
            assert audio_s is None, path
        else:
            np.testing.assert_array_equal(audio_s, audio)


def test_flac_codec_stores_the_same_audio(catalogue, ingested, tmp_path, ray_local):  # noqa: ARG001
    root, expected = catalogue
    out = tmp_path / "flac"
    ingest(
        IngestOptions([str(p) for p in expected["good"][:2]], str(out), codec="flac", progress=False),
        report=lambda m: None,
    )
    s16 = {t.key: t.audio for t in read_tracks(ingested[0])}
    for track in read_tracks(out):
        np.testing.assert_array_equal(track.audio, s16[track.key])
    assert next((out / "shards").glob("*.tar")).stat().st_size < 0.8 * sum(len(a) * 2 for a in s16.values()) / 4


def test_changed_processing_options_are_refused(ingested, catalogue, capsys):
    out, _ = ingested
    root, _ = catalogue
    assert main(["ingest", str(root), "--out", str(out), "--min-duration-s", "5", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert "min_duration_s=12.0" in err and "\n" not in err


def test_cli_bad_sources_fail_with_one_line(tmp_path, capsys):
    assert main(["ingest", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err.strip() == f"mvssl: error: {tmp_path / 'nope'}: no such file, directory or pattern"
    (tmp_path / "list.csv").write_text("path\nx.mp3\n")
    assert main(["ingest", str(tmp_path / "list.csv"), "--out", str(tmp_path / "o")]) == 1
    assert "needs a 'uri' column" in capsys.readouterr().err


def test_list_files_saved_by_spreadsheets_and_notepad_resolve(tmp_path):
    """A UTF-8 byte-order mark used to become part of the first name: the .csv had no 'uri'
    column, and the .txt's first path did not exist."""
    (tmp_path / "a.mp3").write_bytes(b"x")
    (tmp_path / "list.csv").write_bytes("\ufeffuri ,note\r\na.mp3,first\r\n".encode())
    (tmp_path / "list.txt").write_bytes("\ufeffa.mp3\r\n".encode())
    (tmp_path / "short.csv").write_text("note,uri\nno uri on this row\nsecond,a.mp3\n")  # was an AttributeError
    for name in ("list.csv", "list.txt", "short.csv"):
        assert find_sources([str(tmp_path / name)]).uris == [path_to_uri(tmp_path / "a.mp3")], name


def test_linked_folders_are_walked_once_and_an_unlistable_folder_is_one_line(tmp_path, monkeypatch, capsys):
    """Symbolic links to folders were passed over in silence (their tracks never ingested), and a
    folder that could not be listed was skipped without a word."""
    shelf, other = tmp_path / "shelf", tmp_path / "elsewhere" / "artist"
    (shelf / "sub").mkdir(parents=True)
    other.mkdir(parents=True)
    for path in (shelf / "a.mp3", shelf / "sub" / "b.flac", other / "c.ogg"):
        path.write_bytes(b"x")
    (shelf / "artist").symlink_to(other)  # a catalogue assembled from links
    (shelf / "sub" / "up").symlink_to(shelf)  # a loop
    (shelf / "again").symlink_to(other)  # a second link to one folder
    walked = find_sources([str(shelf)]).uris
    names = sorted(uri.rsplit("/", 1)[-1] for uri in walked)
    assert names == ["a.mp3", "b.flac", "c.ogg"], walked
    assert walked == find_sources([str(shelf)]).uris  # the same paths on every run

    real_scandir = os.scandir

    def refusing(path="."):
        if os.fspath(path).endswith("sub"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    assert main(["ingest", str(shelf), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err == f"mvssl: error: {shelf / 'sub'}: cannot list this folder (Permission denied); its files would be missed"
    )


def test_list_files_and_globs(catalogue, tmp_path, ray_local):
    root, expected = catalogue
    (tmp_path / "list.txt").write_text("\n".join(str(p) for p in expected["good"][:2]) + "\n")
    import pyarrow as pa

    pq.write_table(pa.table({"uri": [path_to_uri(expected["good"][2])]}), tmp_path / "list.parquet")
    out = tmp_path / "out"
    summary = ingest(
        IngestOptions(
            [str(tmp_path / "list.txt"), str(tmp_path / "list.parquet"), str(root / "*.wav")], str(out), progress=False
        ),
        report=lambda m: None,
    )
    assert summary.inputs == 4 and summary.tracks == 4


def _tar(members: list[tuple[str, bytes]]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def test_member_names_are_validated_and_bad_members_skipped():
    good_key, bad_key, short_key = "a" * 32, "b" * 32, "c" * 32
    pcm = np.arange(10, dtype="<i2").tobytes()
    shard = _tar(
        [
            ("../evil.json", b"{}"),
            (f"{good_key}.json", json.dumps({"num_samples": 10}).encode()),
            (f"{good_key}.s16", pcm),
            (f"{bad_key}.json", b"{not json"),
            (f"{bad_key}.s16", pcm),
            (f"{short_key}.json", json.dumps({"num_samples": 99}).encode()),
            (f"{short_key}.s16", pcm),
            (f"{good_key}.json", b"{}"),  # the same key again: a collision
            ("dir/x.s16", pcm),
        ]
    )
    items = list(read_shard(shard, "t.tar"))
    tracks = [i for i in items if not isinstance(i, Malformed)]
    bad = [i for i in items if isinstance(i, Malformed)]
    assert [t.key for t in tracks] == [good_key] and tracks[0].pcm.tolist() == list(range(10))
    assert {b.name for b in bad} == {"../evil.json", bad_key, short_key, f"{good_key}.json", "dir/x.s16"}


def test_a_shard_cut_short_names_every_wanted_track_it_lost():
    keys = [f"{i:032x}" for i in range(4)]
    pcm = np.zeros(2000, dtype="<i2").tobytes()
    whole = _tar(
        [m for k in keys for m in ((f"{k}.json", json.dumps({"num_samples": 2000}).encode()), (f"{k}.s16", pcm))]
    ).getvalue()
    per_track = 2 * 512 + 512 + 4096  # two headers, the json's block, the payload's blocks
    for cut in (2 * per_track, 2 * per_track + 1500):  # at a member's start tarfile stops without an error
        items = list(read_shard(io.BytesIO(whole[:cut]), "t.tar", set(keys)))
        read = [i.key for i in items if not isinstance(i, Malformed)]
        bad = {i.name: i.reason for i in items if isinstance(i, Malformed)}
        assert read and set(read) | set(bad) == set(keys) and not set(read) & set(bad)  # one record each
        assert "not in the shard, though the index lists it there" in bad[keys[-1]] or "corrupt tar" in bad[keys[-1]]
    assert len(list(read_shard(io.BytesIO(whole), "t.tar", set(keys)))) == 4  # nothing lost, nothing said


def test_shards_read_with_the_webdataset_library_give_the_same_tracks(ingested):
    wds = pytest.importorskip("webdataset")
    out, _ = ingested
    shards = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    ours = {t.key: t.audio for t in read_tracks(out)}
    theirs = {s["__key__"]: s for s in wds.WebDataset(shards, shardshuffle=False)}
    assert theirs.keys() == ours.keys()
    for key, sample in theirs.items():
        meta = json.loads(sample["json"])
        pcm = np.frombuffer(sample["s16"], dtype="<i2")
        assert meta["key"] == key and meta["num_samples"] == len(pcm) == len(ours[key])
        np.testing.assert_array_equal(pcm / 32768.0, ours[key])


def test_reader_only_yields_indexed_members(ingested, tmp_path):
    out, _ = ingested
    shard = next((out / "shards").glob("*.tar"))
    everything = list(iter_shard_members(shard))
    assert len(list(iter_shard_members(shard, {everything[0].key}))) == 1


def test_bucket_keys_are_read_as_written_from_one_filesystem_per_bucket(monkeypatch):
    import pyarrow.fs as pafs

    from mvssl_dist.shards import uris

    asked = []
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setattr(pafs, "resolve_s3_region", lambda bucket: asked.append(bucket) or "eu-west-1")
    uris.bucket_filesystem.cache_clear()
    fs, path = uris.filesystem("s3://music/Artist - Live 100%.mp3")
    assert path == "music/Artist - Live 100%.mp3" and fs.region == "eu-west-1"  # from_uri refused the space
    assert uris.filesystem("s3://music/b.mp3")[0] is fs and asked == ["music"]  # built once per bucket
    assert uris.filesystem("s3://other/c.mp3")[0] is not fs and asked == ["music", "other"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    assert uris.filesystem("s3://music/b.mp3")[0] is not fs and len(asked) == 2  # a given endpoint: no lookup
    uris.bucket_filesystem.cache_clear()
    with pytest.raises(OSError, match=r"cannot be opened .*; use a local path, s3:// or gs://") as err:
        uris.filesystem("http://example.com/a.mp3")
    assert err.value.filename == "http://example.com/a.mp3"
    with pytest.raises(uris.SourceError, match=r"^http://example.com/music/: cannot be opened"):
        find_sources(["http://example.com/music/"])


def test_a_source_changed_since_it_was_read_is_told_by_size_modification_time_or_absence(tmp_path):
    import pyarrow as pa

    from mvssl_dist.shards.uris import Sources

    ingest_module = importlib.import_module("mvssl_dist.shards.ingest")
    names = ("same", "resized", "remastered", "withdrawn", "bucket")
    files = {name: tmp_path / f"{name}.wav" for name in names}
    for path in files.values():
        path.write_bytes(b"RIFF" + bytes(96))
    stamps = {name: (path.stat().st_size, path.stat().st_mtime_ns) for name, path in files.items()}
    files["resized"].write_bytes(b"RIFF" + bytes(50))
    os.utime(files["remastered"], ns=(0, stamps["remastered"][1] + 10**9))  # same size, written later
    files["withdrawn"].unlink()  # taken out of the catalogue
    uris = {name: path_to_uri(path) for name, path in files.items()}
    rows = [{"source_uri": uris[n], "source_bytes": stamps[n][0], "source_mtime_ns": stamps[n][1]} for n in files]
    keys = ["s3://b/elsewhere.wav", "s3://b/music/old.wav", "s3://c/a.wav", "s3://c/b.flac"]
    rows += [{"source_uri": key, "source_bytes": 9, "source_mtime_ns": 1} for key in keys]
    listed = Sources(
        sizes={uris["bucket"]: 100},
        mtimes={uris["bucket"]: stamps["bucket"][1] + 1},
        walked=[("s3://b/music/", None), ("s3://c/", "c/*.flac")],  # listed whole, and listed by a pattern
    )
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "index.parquet")
    changed = ingest_module.changed_inputs(tmp_path, listed)
    gone = "gone since it was read"
    assert changed == {
        uris["resized"]: "100 bytes then, 54 now",
        uris["remastered"]: changed[uris["remastered"]],
        uris["withdrawn"]: gone,
        uris["bucket"]: changed[uris["bucket"]],  # the listing's time, 1 ns later
        "s3://b/music/old.wav": gone,  # under a prefix listed whole, and not listed: gone
        "s3://c/b.flac": gone,  # matches the pattern that was listed; s3://c/a.wav does not: not known
    }
    for name in ("remastered", "bucket"):
        assert re.fullmatch(r"the same size, modified [-\d:. ]+ UTC then, [-\d:. ]+ UTC now", changed[uris[name]])
    then, now = re.findall(r"modified (.+) then, (.+) now", changed[uris["bucket"]])[0]
    assert then != now  # 1 ns apart: told to the nanosecond
    line = ingest_module.changed_line("ingest", changed, "ingested input(s) changed since they were read", "reads")
    assert line.startswith("[ingest] 6 ingested input(s) changed since they were read (3 of them gone), e.g. ")
    # an index written before modification times were kept: sizes alone (and absence)
    pq.write_table(
        pa.Table.from_pylist([{k: r[k] for k in ("source_uri", "source_bytes")} for r in rows]),
        tmp_path / "index.parquet",
    )
    assert set(ingest_module.changed_inputs(tmp_path, Sources())) == {uris["resized"], uris["withdrawn"]}


def test_planning_asks_only_the_sizes_it_was_not_given(monkeypatch):
    ingest_module = importlib.import_module("mvssl_dist.shards.ingest")
    asked = []
    monkeypatch.setattr(ingest_module, "source_size", lambda uri: asked.append(uri) or 7)
    sizes = ingest_module.input_sizes([f"s3://b/{i}.mp3" for i in range(100)], {"s3://b/0.mp3": 5})
    assert sizes["s3://b/0.mp3"] == 5 and sizes["s3://b/1.mp3"] == 7 and len(sizes) == 100
    assert sorted(asked) == sorted(f"s3://b/{i}.mp3" for i in range(1, 100))


@pytest.fixture
def s3_server(monkeypatch):
    """A local S3-compatible server (moto) on 127.0.0.1, reached over real HTTP by Ray workers too."""
    with local_s3() as endpoint:
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "us-east-1", **CREDENTIALS}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        yield env


def test_s3_sources_against_a_local_server(catalogue, s3_server, tmp_path, monkeypatch):
    import boto3
    import ray

    root, expected = catalogue
    s3 = boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"])
    s3.create_bucket(Bucket="music")
    for i, path in enumerate(expected["good"][:3] + [root / "zoo" / "random.mp3"]):
        name = f"Artist - Live 100%{path.suffix}" if i == 0 else path.name  # keys as a catalogue names them
        s3.upload_file(str(path), "music", f"catalogue/{name}")
    ingest_module = importlib.import_module("mvssl_dist.shards.ingest")
    asked = []
    monkeypatch.setattr(ingest_module, "source_size", lambda uri: asked.append(uri) or 0)
    ray.shutdown()  # workers must start with the endpoint in their environment
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": s3_server})
    try:
        summary = ingest(
            IngestOptions(["s3://music/catalogue/"], str(tmp_path / "out"), progress=False), report=lambda m: None
        )
        # the listing's times agree with those read by the workers: nothing told as changed ...
        said: list[str] = []
        ingest(IngestOptions(["s3://music/catalogue/"], str(tmp_path / "out"), progress=False), report=said.append)
        assert not [line for line in said if "changed" in line], said
        # ... until a key is taken out of the bucket
        s3.delete_object(Bucket="music", Key=f"catalogue/{expected['good'][1].name}")
        ingest(IngestOptions(["s3://music/catalogue/"], str(tmp_path / "out"), progress=False), report=said.append)
        told = [line for line in said if "changed since" in line]
        assert len(told) == 1 and "1 ingested input(s) changed since they were read, e.g. s3://music/" in told[0]
        assert "(gone since it was read)" in told[0]
    finally:
        ray.shutdown()
    assert (summary.tracks, summary.rejects) == (3, 1)
    assert asked == []  # planning took the sizes from the bucket listing: no request per key
    rows = pq.read_table(tmp_path / "out" / "index.parquet").to_pylist()
    assert all(r["source_uri"].startswith("s3://music/catalogue/") for r in rows)
    assert "s3://music/catalogue/Artist - Live 100%.mp3" in {r["source_uri"] for r in rows}
    local = {r["key"] for r in pq.read_table(tmp_path / "out" / "index.parquet").to_pylist()}
    assert len(local) == 3


def test_two_node_cluster_gives_the_same_result_as_one(catalogue, ingested, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    root, _ = catalogue
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        ingest(
            IngestOptions(
                [str(root)],
                str(tmp_path / "two"),
                shard_target_mb=2,
                workers=2,
                ray_address=cluster.address,
                progress=False,
            ),
            report=lambda m: None,
        )
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert pq.read_table(tmp_path / "two" / "index.parquet").equals(pq.read_table(ingested[0] / "index.parquet"))
