"""Batch embedding with Ray Data on generated audio (+ broken files), resumable; neighbours."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from catalogue import write_catalogue
from distributed_helpers import ensure_ray

from mvssl_dist.audio.synth import STYLES, encode, render
from mvssl_dist.cli import main
from mvssl_dist.embed.batch import EmbedOptions, embed_library
from mvssl_dist.embed.search import load_track_embeddings, nearest
from mvssl_dist.models import Backbone, save_backbone
from mvssl_dist.shards import IngestOptions, ingest, path_to_uri, uri_to_path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    ensure_ray()
    root = tmp_path_factory.mktemp("emb_src")
    expected = write_catalogue(root, seconds=13.0)
    weights = tmp_path_factory.mktemp("emb_w") / "backbone.pt"
    torch.manual_seed(3)
    save_backbone(Backbone(), weights)
    return root, expected, weights


@pytest.fixture(scope="module")
def embedded(library, tmp_path_factory):
    root, _, weights = library
    out = tmp_path_factory.mktemp("emb_out")
    said: list[str] = []
    summary = embed_library(EmbedOptions([str(root)], str(weights), str(out), level="both"), report=said.append)
    # the folder walk's other files are reported, not skipped in silence
    assert "[embed] 2 files in the folders were not read (no audio extension): 3f2a9c0b, cover.jpg" in "\n".join(said)
    return out, summary


def table(out, prefix):
    return pa.concat_tables([pq.read_table(p) for p in sorted(out.glob(f"{prefix}-*.parquet"))]).to_pylist()


def test_one_row_per_good_file_and_errors_listed(library, embedded):
    _, expected, _ = library
    out, summary = embedded
    rows = table(out, "tracks")
    good = {str(p) for p in expected["good"]} | {
        str(p) for p, r in expected["rejects"].items() if r in ("too_short", "silent", "duplicate_of")
    }
    assert sorted(uri_to_path(r["source_uri"]) for r in rows) == sorted(good)
    errors = pq.read_table(out / "errors.parquet").to_pylist()
    assert {uri_to_path(e["source_uri"]) for e in errors} == {
        str(p) for p, r in expected["rejects"].items() if r in ("empty", "not_audio", "truncated", "unreadable")
    }
    assert all(e["detail"] for e in errors)
    for r in rows:
        assert r["num_segments"] == max(1, int(np.ceil(r["duration_s"] / 4 - 1e-9)))
    segments = table(out, "segments")
    assert len(segments) == sum(r["num_segments"] for r in rows)
    assert (out / "embed.json").is_file()


def test_embeddings_equal_embed_file(library, embedded, tmp_path):
    root, expected, weights = library
    out, _ = embedded
    rows = {uri_to_path(r["source_uri"]): r for r in table(out, "tracks")}
    for path in expected["good"][:3]:
        single = tmp_path / f"{path.stem}.npy"
        assert main(["embed-file", str(path), "--weights", str(weights), "--out", str(single)]) == 0
        np.testing.assert_allclose(np.array(rows[str(path)]["embedding"]), np.load(single)[0], atol=1e-5)


def test_each_segment_records_its_rms_over_the_tracks(library, embedded):
    """The probe's silence rule (the reference's) reads it; computed here by a plain loop."""
    from mvssl_dist.audio import decode
    from mvssl_dist.embed.batch import rms_ratios

    _, expected, _ = library
    out, _ = embedded
    segments = table(out, "segments")
    for path in expected["good"][:3]:
        audio = decode(path).astype(np.float64)
        track = np.sqrt(np.mean(audio**2))
        cuts = [np.pad(audio[s : s + 64000], (0, max(0, s + 64000 - len(audio)))) for s in range(0, len(audio), 64000)]
        mine = sorted((r["segment"], r["rms_ratio"]) for r in segments if uri_to_path(r["source_uri"]) == str(path))
        np.testing.assert_allclose([v for _, v in mine], [np.sqrt(np.mean(c**2)) / track for c in cuts], rtol=1e-4)
    # a track with a silent second half, a padded last segment, and a silent track
    half = np.concatenate([np.full(64000, 0.5, np.float32), np.zeros(64000, np.float32)])
    np.testing.assert_allclose(rms_ratios(half.reshape(2, 64000), half), [np.sqrt(2), 0.0], rtol=1e-6)
    padded = np.concatenate([np.ones(96000, np.float32), np.zeros(32000, np.float32)])
    np.testing.assert_allclose(rms_ratios(padded.reshape(2, 64000), padded[:96000]), [1.0, np.sqrt(0.5)], rtol=1e-6)
    assert rms_ratios(np.zeros((2, 64000), np.float32), np.zeros(100000, np.float32)).tolist() == [0.0, 0.0]


def test_dataset_input_gives_the_same_vectors(library, embedded, tmp_path):
    root, _, weights = library
    dataset = tmp_path / "ds"
    ingest(IngestOptions([str(root)], str(dataset), progress=False), report=lambda m: None)
    out = tmp_path / "from_ds"
    embed_library(EmbedOptions([str(dataset)], str(weights), str(out)), report=lambda m: None)
    raw = {r["source_uri"]: np.array(r["embedding"]) for r in table(embedded[0], "tracks")}
    for row in table(out, "tracks"):
        a, b = np.array(row["embedding"]), raw[row["source_uri"]]
        assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.999
    shard = sorted((dataset / "shards").glob("*.tar"))[0]
    with open(shard, "r+b") as handle:
        handle.truncate(10_000)  # cut short after ingest: its tracks are errors that say why
    held = {r["key"] for r in pq.read_table(dataset / "index.parquet").to_pylist() if r["shard"].endswith(shard.name)}
    lines: list[str] = []
    embed_library(EmbedOptions([str(dataset)], str(weights), str(tmp_path / "cut")), report=lines.append)
    assert f"[embed] shards/{shard.name} is 10,000 bytes, but ingest wrote" in lines[0]
    errors = pq.read_table(tmp_path / "cut" / "errors.parquet").to_pylist()
    assert {e["detail"].split("track ")[1][:32] for e in errors} == held
    assert all(
        shard.name in e["detail"] and ("not in the shard" in e["detail"] or "tar" in e["detail"]) for e in errors
    )


def test_an_out_dir_is_only_extended_with_the_same_weights_and_cut(library, embedded, tmp_path, capsys):
    """A re-run with other weights used to "resume": it skipped every track, so OUT_DIR kept the
    old vectors while embed.json named the new model."""
    import json
    import shutil

    root, _, weights = library
    out = tmp_path / "out"
    shutil.copytree(embedded[0], out)
    refused = {
        "random": "embedded with weights sha256 ",
        str(weights) + " --hop-s 2": "embedded with --hop-s 4, not 2",
    }
    for model, message in refused.items():
        model, *extra = model.split()
        assert main(["embed", str(root), "--model", model, "--out", str(out), *extra]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    copy = tmp_path / "same-bytes.pt"
    shutil.copy(weights, copy)  # the same weights under another name are the same model
    assert main(["embed", str(root), "--model", str(copy), "--out", str(out), "--level", "track"]) == 0
    record = json.loads((out / "embed.json").read_text())
    assert record["options"]["level"] == "both" and record["counts"]["tracks"] == 11  # still both levels
    assert main(["embed", str(root), "--model", "random:5", "--out", str(out)]) == 1
    assert f"embedded with weights sha256 {record['weights']['weights_sha256'][:12]}, not random:5" in (
        capsys.readouterr().err
    )


def test_an_embed_where_nothing_could_be_embedded_fails(library, tmp_path, capsys):
    root, expected, weights = library
    broken = [str(p) for p, reason in expected["rejects"].items() if reason in ("empty", "not_audio")]
    assert main(["embed", *broken, "--model", str(weights), "--out", str(tmp_path / "o")]) == 1
    captured = capsys.readouterr()
    assert f"{len(broken)} input(s) failed" in captured.out
    assert captured.err.strip().splitlines()[-1] == (
        f"mvssl: error: no input could be embedded; the reasons are in {tmp_path / 'o' / 'errors.parquet'}"
    )


def test_killed_run_resumes_without_duplicates(library, tmp_path):
    root, _, weights = library
    out = tmp_path / "out"
    args = [sys.executable, "-m", "mvssl_dist.cli", "embed", str(root), "--model", str(weights), "--out", str(out)]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "MVSSL_EMBED_ROWS_PER_PART": "2"},
    )
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("tracks-*.parquet")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert main(["embed", str(root), "--model", "random", "--out", str(out)]) == 1  # parts of other weights
    assert main(["embed", str(root), "--model", str(weights), "--out", str(out)]) == 0
    keys = [r["source_uri"] for r in table(out, "tracks")]
    assert len(keys) == len(set(keys)) == 11


def test_an_interrupted_run_keeps_what_it_embedded(library, tmp_path, capsys):
    """Ctrl-C (or SIGTERM, which Ray's driver turns into an exit) once results have come in: the
    tracks embedded so far are written, not lost with the part that was filling up."""
    root, _, weights = library
    out = tmp_path / "out"

    def interrupt_on_first_results(line: str) -> None:
        if "first results" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_library(EmbedOptions([str(root)], str(weights), str(out)), report=interrupt_on_first_results)
    kept = sum(pq.read_metadata(part).num_rows for part in out.glob("*-*.parquet"))  # tracks- and errors- parts
    assert 0 < kept < 16  # 11 tracks and 5 broken files, whose reasons are kept too
    assert main(["embed", str(root), "--model", str(weights), "--out", str(out)]) == 0
    assert f"16 tracks, {kept} already embedded, {16 - kept} to do" in capsys.readouterr().out
    keys = [r["source_uri"] for r in table(out, "tracks")]
    assert len(keys) == len(set(keys)) == 11


def test_a_run_stopped_between_the_two_parts_of_a_flush_embeds_those_tracks_again(
    library, tmp_path, monkeypatch, capsys
):
    """With --level both, a full disk after the tracks part and before the segments part left
    tracks without segments, and the re-run counted them done: their segments were never written."""
    import errno

    import pyarrow.parquet as parquet

    root, _, weights = library
    out = tmp_path / "out"
    real_write = parquet.write_table

    def full_for_segments(table, where, *args, **kwargs):
        if ".segments-" in str(where):
            raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")
        return real_write(table, where, *args, **kwargs)

    monkeypatch.setattr(parquet, "write_table", full_for_segments)
    assert main(["embed", str(root), "--model", str(weights), "--out", str(out), "--level", "both"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after Ray's own log lines
    said = "No space left on device; the tracks written before it are kept, and the same command goes on from there"
    assert re.fullmatch(rf"mvssl: error: {re.escape(str(out))}/segments-[0-9-]+\.parquet: {said}", err), err
    monkeypatch.undo()
    assert not list(out.glob("tracks-*.parquet"))  # the tracks part commits a flush, so it is written last

    options = EmbedOptions([str(root)], str(weights), str(out), level="both", rows_per_part=3)
    embed_library(options, report=lambda line: None)
    first, second = sorted(out.glob("tracks-*.parquet"))[:2]
    first.unlink()  # killed between the writes: segments without their tracks part
    (out / second.name.replace("tracks-", "segments-")).unlink()  # an older version's order: tracks without segments
    (out / f".{second.name}.tmp-999").write_bytes(b"half")
    said: list[str] = []
    embed_library(options, report=said.append)
    assert "left by a run stopped part-way; its tracks are embedded again" in "\n".join(said)
    tracks, segments = table(out, "tracks"), table(out, "segments")
    assert len(tracks) == len({r["source_uri"] for r in tracks}) == 11
    assert len(segments) == len({(r["source_uri"], r["segment"]) for r in segments})
    assert {r["source_uri"] for r in segments} == {r["source_uri"] for r in tracks}
    assert sum(r["num_segments"] for r in tracks) == len(segments)
    assert not list(out.glob(".*.tmp-*"))


def test_retry_embeds_again_what_failed_for_a_reason_since_mended(library, tmp_path, capsys):
    root, expected, weights = library
    shelf, late = tmp_path / "shelf", tmp_path / "late.flac"
    shelf.mkdir()
    for path in expected["good"][:2]:
        shutil.copy(path, shelf / path.name)
    (shelf / "late.flac").symlink_to(late)  # not copied in yet
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "gone.ogg").symlink_to(tmp_path / "gone.ogg")
    args = ["embed", str(shelf), "--model", str(weights), "--out", str(tmp_path / "out")]
    assert main([*args, str(tmp_path / "other")]) == 0 and main(args) == 0
    assert "3 tracks, 3 already embedded, 0 to do" in capsys.readouterr().out  # an error stays an error
    shutil.copy(next(p for p in expected["good"][2:] if p.suffix == ".flac"), late)
    assert main([*args, "--retry", "unreadable"]) == 0
    out = capsys.readouterr().out
    assert "--retry unreadable: 1 input(s) that failed are embedded again" in out and "3 tracks into" in out
    errors = pq.read_table(tmp_path / "out" / "errors.parquet").column("source_uri").to_pylist()
    assert [uri.rsplit("/", 1)[-1] for uri in errors] == ["gone.ogg"]  # not among this run's inputs: kept
    assert len(table(tmp_path / "out", "tracks")) == 3


def test_a_file_longer_than_the_limit_is_listed_not_embedded_until_the_limit_is_raised(library, tmp_path, capsys):
    """Embedding had no length limit: a decode task held a few copies of a whole file's audio, so
    a multi-hour recording (a DJ mix, a live concert) could take a worker's memory, and the job."""
    root, expected, weights = library
    shelf, out = tmp_path / "shelf", tmp_path / "out"
    shelf.mkdir()
    shutil.copy(expected["good"][0], shelf / expected["good"][0].name)  # 13 s
    encode(shelf / "long mix.ogg", render(STYLES[1], 30.0, 44100, seed=5), 44100, "ogg")
    args = ["embed", str(shelf), "--model", str(weights), "--out", str(out), "--max-duration-s", "20"]
    assert main(args) == 0
    assert "1 input(s) failed (too_long: 1); listed in " in capsys.readouterr().out
    (error,) = pq.read_table(out / "errors.parquet").to_pylist()
    assert error["reason"] == "too_long" and error["source_uri"].endswith("/long%20mix.ogg"), error
    assert error["detail"].startswith(f"{shelf / 'long mix.ogg'}: 30 s is longer than the 20 s limit"), error
    assert main([*args[:-1], "60", "--retry", "too_long"]) == 0
    assert "--retry too_long: 1 input(s) that failed are embedded again" in capsys.readouterr().out
    assert not (out / "errors.parquet").exists() or not pq.read_table(out / "errors.parquet").num_rows
    durations = sorted(round(row["duration_s"]) for row in table(out, "tracks"))
    assert durations == [13, 30]


def test_a_file_changed_since_it_was_embedded_is_said_and_embedded_again(library, embedded, tmp_path, capsys):
    root, expected, weights = library
    shelf, out = tmp_path / "shelf", tmp_path / "out"
    shelf.mkdir()
    first, second, other = [p for p in expected["good"] if p.suffix == ".flac"][:3]
    for path in (first, second):
        shutil.copy(path, shelf / path.name)
    args = ["embed", str(shelf), "--model", str(weights), "--out", str(out), "--level", "both"]
    assert main(args) == 0
    stamps = {r["source_uri"]: (r["source_bytes"], r["source_mtime_ns"]) for r in table(out, "tracks")}
    assert stamps[path_to_uri(shelf / first.name)] == (first.stat().st_size, (shelf / first.name).stat().st_mtime_ns)
    shutil.copy(other, shelf / first.name)  # a master replaced under the same name
    capsys.readouterr()
    assert main(args) == 0
    said = capsys.readouterr().out
    assert "[embed] 1 embedded input(s) changed since they were embedded, e.g. " in said
    assert " bytes then, " in said and "`--retry changed` embeds them again" in said
    assert main([*args, "--retry", "changed"]) == 0
    said = capsys.readouterr().out
    assert "--retry changed: 1 input(s) are embedded again" in said and "2 tracks, 1 already embedded, 1 to do" in said
    tracks, segments = table(out, "tracks"), table(out, "segments")
    assert len(tracks) == 2 and len(segments) == sum(r["num_segments"] for r in tracks)  # one row per track
    fresh = {r["source_uri"]: r for r in tracks}[path_to_uri(shelf / first.name)]
    reference = {r["source_uri"]: r["embedding"] for r in table(embedded[0], "tracks")}[path_to_uri(other)]
    np.testing.assert_allclose(fresh["embedding"], reference, atol=1e-5)  # the new audio's, not the old
    assert fresh["source_bytes"] == other.stat().st_size
    # rewritten at the same size: told by its modification time
    stat = (shelf / second.name).stat()
    os.utime(shelf / second.name, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5 * 10**9))
    assert main(args) == 0
    assert (
        "changed since they were embedded" in (said := capsys.readouterr().out) and "(the same size, modified " in said
    )
    # taken out of the library: said, and --retry changed takes its rows out
    (shelf / first.name).unlink()
    assert main([*args, "--retry", "changed"]) == 0
    said = capsys.readouterr().out
    assert "--retry changed: 2 input(s) are embedded again or, if gone, taken out" in said
    assert [uri_to_path(r["source_uri"]) for r in table(out, "tracks")] == [str(shelf / second.name)]
    assert {uri_to_path(r["source_uri"]) for r in table(out, "segments")} == {str(shelf / second.name)}


def test_a_dataset_track_ingested_again_after_a_change_is_told_by_its_key(tmp_path):
    from mvssl_dist.embed.batch import changed_since_embedded, drop_embedded, embedded_stamps, track_schema
    from mvssl_dist.shards.uris import Sources

    vectors = np.zeros((3, 1024), np.float32)
    rows = {"key": ["k1", "k2", "k3"], "source_uri": ["s3://b/1.mp3", "s3://b/2.mp3", "s3://b/3.mp3"]}
    rows.update(source_bytes=[1, 2, 3], source_mtime_ns=[None] * 3, duration_s=[1.0] * 3, num_segments=[1] * 3)
    rows["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 1024)
    pq.write_table(pa.table(rows, schema=track_schema()), tmp_path / "tracks-1-000000.parquet")
    shard = {"shard": "/d/shards/shard-000000.tar", "source_bytes": 1, "source_mtime_ns": -1}
    items = [{"uri": "s3://b/1.mp3", "key": "k1", **shard}, {"uri": "s3://b/2.mp3", "key": "k9", **shard}]
    changed = changed_since_embedded(embedded_stamps(tmp_path, "track"), items, Sources())
    assert changed == {
        "s3://b/2.mp3": "ingested again as track k9; embedded as k2",
        "s3://b/3.mp3": "gone from the dataset",
    }
    from mvssl_dist.shards.ingest import changed_line

    told = changed_line("embed", changed, "changed", "redo")
    assert told.startswith("[embed] 2 changed (1 of them gone), e.g. ")  # gone from the dataset counts as gone
    raw = [{"uri": "s3://b/3.mp3", "key": "", "shard": "", "source_bytes": -1, "source_mtime_ns": -1}]
    listing = Sources(sizes={"s3://b/3.mp3": 4}, walked=[("s3://b/", None)])
    assert changed_since_embedded(embedded_stamps(tmp_path, "track"), raw, listing) == {
        "s3://b/1.mp3": "gone since it was read",  # the bucket's listing lacks it
        "s3://b/2.mp3": "gone since it was read",
        "s3://b/3.mp3": "3 bytes then, 4 now",
    }
    drop_embedded(tmp_path, "track", {"s3://b/2.mp3"})
    assert table(tmp_path, "tracks") and [r["key"] for r in table(tmp_path, "tracks")] == ["k1", "k3"]


def test_an_out_dir_inside_the_source_is_not_walked(library, tmp_path, capsys):
    _, expected, weights = library
    for path in expected["good"][:2]:
        shutil.copy(path, tmp_path / path.name)
    for _ in range(2):  # the second run finds OUT_DIR's parts, lock and embed.json under the source
        assert main(["embed", str(tmp_path), "--model", str(weights), "--out", str(tmp_path / "emb")]) == 0
        said = capsys.readouterr().out
        assert "not read" not in said and "2 tracks into" in said, said


def test_models_uri_and_neighbours(library, embedded, tmp_path, monkeypatch, capsys):
    from mvssl_dist.tracking import connect, log_and_register_backbone

    root, expected, weights = library
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    connect(os.environ["MLFLOW_TRACKING_URI"], "emb")
    with mlflow.start_run(experiment_id=connect(os.environ["MLFLOW_TRACKING_URI"], "emb")):
        log_and_register_backbone(weights, "emb-model", {"method": "none"})
    out = tmp_path / "out"
    assert (
        main(
            ["embed", *[str(p) for p in expected["good"][:3]], "--model", "models:/emb-model@latest", "--out", str(out)]
        )
        == 0
    )
    keys, uris, matrix = load_track_embeddings(out)
    reference = {r["source_uri"]: np.array(r["embedding"]) for r in table(embedded[0], "tracks")}
    for uri, vector in zip(uris, matrix, strict=True):
        np.testing.assert_allclose(vector, reference[uri], atol=1e-5)  # same weights via the registry
    capsys.readouterr()
    top, scores = nearest(matrix, matrix[1], 3)
    assert top[0] == 1 and scores[0] == pytest.approx(1.0, abs=1e-5)
    other = tmp_path / "other.pt"
    torch.manual_seed(9)
    save_backbone(Backbone(), other)
    with mlflow.start_run(experiment_id=connect(os.environ["MLFLOW_TRACKING_URI"], "emb")):
        assert log_and_register_backbone(other, "emb-model", {"method": "none"}) == "2"  # @latest moves on
    assert main(["neighbours", "--embeddings", str(out), "--query", str(expected["good"][2]), "-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert expected["good"][2].name in lines[1] and float(lines[1].split()[1]) > 0.9999  # embedded by version 1
    assert (
        main(["neighbours", "--embeddings", str(out), "--query", str(expected["good"][2]), "--max-duration-s", "1"])
        == 1
    )
    assert capsys.readouterr().err.strip().endswith("s limit; --max-duration-s raises the limit")
    assert main(["neighbours", "--embeddings", str(out), "--key", keys[0], "-k", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[1].split()[0] in keys[1:]  # another track, not the query's own row
    assert main(["embed", str(root), "--model", "models:/nope@latest", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "models:/nope" in err and f"registry: {os.environ['MLFLOW_TRACKING_URI']}" in err, err
    # From another folder, with no MLFLOW_TRACKING_URI: --query finds the registry OUT_DIR names.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    query = [str(Path(sys.executable).parent / "mvssl"), "neighbours", "--embeddings", str(out), "-k", "1"]
    run = subprocess.run(
        [*query, "--query", str(expected["good"][2])], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0 and expected["good"][2].name in run.stdout, run.stderr
    assert not (elsewhere / "mlflow.db").exists()  # it did not open (and create) a store in the cwd
    # Another registry's emb-model v1 (other weights) is not the model OUT_DIR was embedded with.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other.db'}")
    with mlflow.start_run(experiment_id=connect(os.environ["MLFLOW_TRACKING_URI"], "emb")):
        assert log_and_register_backbone(other, "emb-model", {"method": "none"}) == "1"
    capsys.readouterr()
    four = [str(p) for p in expected["good"][:4]]
    assert main(["embed", *four, "--model", "models:/emb-model/1", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "embedded with models:/emb-model/1 (registered from models:/" in err[0], err
    assert main(["neighbours", "--embeddings", str(out), "--query", str(expected["good"][2])]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "names another registry" in err[0], err


def test_a_query_finds_a_weights_file_named_relative_to_the_folder_embed_ran_in(library, tmp_path, monkeypatch):
    """``--model w.pt`` was recorded as typed, so ``--query`` from another folder said "no such weights file"."""
    _, expected, weights = library
    monkeypatch.chdir(weights.parent)
    out = tmp_path / "out"
    assert main(["embed", *[str(p) for p in expected["good"][:2]], "--model", weights.name, "--out", str(out)]) == 0
    monkeypatch.chdir(tmp_path)
    assert main(["neighbours", "--embeddings", str(out), "--query", str(expected["good"][0]), "-k", "1"]) == 0


def test_same_weights_tells_registries_apart_and_reads_older_records():
    from mvssl_dist.embed.batch import same_weights

    version = {"model_name": "m", "model_version": "1", "model_source": "models:/m-aaa"}
    assert same_weights(version, dict(version))
    assert not same_weights(version, {**version, "model_source": "models:/m-bbb"})  # another registry's v1
    assert same_weights({"model_name": "m", "model_version": "1"}, version)  # recorded before sources were
    assert not same_weights({"model_name": "m", "model_version": "2"}, version)
    assert not same_weights({"random_seed": 0}, {"random_seed": 1})


def test_forward_batches_cross_tracks_in_order_and_copy_one_batch_at_a_time():
    from mvssl_dist.embed.batch import forward_batches

    rows = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    clips = [rows[:3], rows[3:8], rows[8:8], rows[8:]]  # 3, 5, 0 and 2 segments
    for clip in clips:
        clip.flags.writeable = False  # as np.frombuffer gives them
    batches = list(forward_batches(clips, 4))
    assert [len(b) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(batches), rows)
    assert all(b.flags.writeable and not np.shares_memory(b, rows) for b in batches)
    assert list(forward_batches([], 4)) == []


def test_decode_workers_do_not_load_torch():
    """Decode tasks (embedding, ingest) import their module in fresh Ray workers; torch there costs
    about 2 CPU-seconds per worker: 4-5 s of a 30 s embedding job on 2 cores (measured)."""
    code = (
        "import sys, numpy as np\n"
        "from mvssl_dist.embed.batch import prepare_tracks\n"
        "from mvssl_dist.shards.ingest import ingest\n"
        "item = {'uri': ['/no/such.wav'], 'key': [''], 'shard': [''], 'source_bytes': [-1], 'source_mtime_ns': [-1]}\n"
        "out = prepare_tracks({k: np.array(v) for k, v in item.items()}, 4.0, 4.0, 3600.0)\n"
        "assert out['reason'][0], out\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchaudio', 'mlflow')))\n"
    )
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert printed.strip() == "[]", printed
