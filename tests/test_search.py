"""`mvssl neighbours`' search: exact cosine top-k, and the cache that spares re-reading parquet."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mvssl_dist.cli import main
from mvssl_dist.embed import search
from mvssl_dist.embed.batch import fixed_list, track_schema
from mvssl_dist.embed.search import load_track_embeddings, nearest, search_index


def write_part(out, name: str, vectors: np.ndarray, first: int) -> list[str]:
    keys = [f"{i:032x}" for i in range(first, first + len(vectors))]
    table = pa.table(
        {
            "key": keys,
            "source_uri": [f"file:///m/My%20Music/{i}-caf%E9.mp3" for i in range(first, first + len(vectors))],
            "source_bytes": np.full(len(vectors), 128_000),
            "source_mtime_ns": np.full(len(vectors), 1_700_000_000 * 10**9),
            "duration_s": np.full(len(vectors), 8.0),
            "num_segments": np.full(len(vectors), 2, np.int32),
            "embedding": fixed_list(vectors.astype(np.float32)),
        },
        schema=track_schema(),
    )
    pq.write_table(table, out / f"tracks-{name}.parquet")
    return keys


def test_nearest_by_hand():
    rows = np.zeros((4, 1024), np.float32)
    rows[0, :2] = [3, 4]  # cos to (1, 0) = 0.6
    rows[1, :2] = [1, 0]  # 1.0
    rows[2, :2] = [0, 5]  # 0.0
    rows[3, :2] = [-2, 0]  # -1.0
    query = np.zeros(1024, np.float32)
    query[0] = 7
    top, scores = nearest(rows, query, 3)
    assert top.tolist() == [1, 0, 2] and np.allclose(scores, [1.0, 0.6, 0.0])
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    top_u, scores_u = nearest(unit, query, 3, unit=True)
    assert top_u.tolist() == [1, 0, 2] and np.allclose(scores_u, scores)
    assert nearest(rows, query, 10)[0].tolist() == [1, 0, 2, 3]  # k past the rows: all, ordered


def test_cache_is_built_once_reused_and_rebuilt_for_new_parts(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    first = rng.standard_normal((50, 1024))
    write_part(tmp_path, "a", first, 0)
    keys, uris, matrix = search_index(tmp_path)
    raw_keys, raw_uris, raw = load_track_embeddings(tmp_path)
    assert keys == raw_keys and uris == raw_uris
    np.testing.assert_allclose(matrix, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-6, atol=1e-7)
    assert isinstance(search_index(tmp_path)[2], np.memmap)

    def no_rebuild(*_):
        raise AssertionError("rebuilt although the parts did not change")

    monkeypatch.setattr(search, "build_index", no_rebuild)
    assert search_index(tmp_path)[0] == keys
    monkeypatch.undo()
    added = write_part(tmp_path, "b", rng.standard_normal((7, 1024)), 50)  # a resumed `mvssl embed`
    keys2, _, matrix2 = search_index(tmp_path)
    assert keys2 == keys + added and matrix2.shape == (57, 1024)
    assert json.loads((tmp_path / "search" / "source.json").read_text())[1][0] == "tracks-b.parquet"


def test_an_unfinished_cache_is_rebuilt_and_a_read_only_dir_searched_in_memory(tmp_path, monkeypatch):
    write_part(tmp_path, "a", np.random.default_rng(1).standard_normal((5, 1024)), 0)
    search_index(tmp_path)
    (tmp_path / "search" / "source.json").unlink()  # killed before the last rename
    (tmp_path / "search" / "vectors.npy").write_bytes(b"partial")
    assert search_index(tmp_path)[2].shape == (5, 1024)

    def read_only(*_):
        raise PermissionError("read-only")

    monkeypatch.setattr(search, "build_index", read_only)
    (tmp_path / "search" / "source.json").unlink()
    keys, _, matrix = search_index(tmp_path)
    assert len(keys) == 5 and np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-6)


def test_neighbours_cli_by_key_and_bad_input(tmp_path, capsys):
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((20, 1024))
    vectors[7] = vectors[3] + 0.01 * rng.standard_normal(1024)  # 3's near twin
    keys = write_part(tmp_path, "a", vectors, 0)
    assert main(["neighbours", "--embeddings", str(tmp_path), "--key", keys[3], "-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[1].startswith(keys[7])  # the near twin first; the track itself not listed
    # a path to paste, not a percent-encoded URI (the file name's bytes are Latin-1, not UTF-8)
    assert lines[1].endswith("  /m/My Music/7-caf\\xe9.mp3"), lines[1]
    assert keys[3] not in "".join(lines)
    assert main(["neighbours", "--embeddings", str(tmp_path), "--key", keys[3], "-k", "19"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 20 and keys[3] not in "".join(lines)  # all the others, once each
    assert main(["neighbours", "--embeddings", str(tmp_path), "--key", keys[3], "-k", "50"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 20
    assert main(["neighbours", "--embeddings", str(tmp_path), "--key", "nope"]) == 1
    assert "--key nope: not in" in capsys.readouterr().err
    assert main(["neighbours", "--embeddings", str(tmp_path / "empty"), "--key", "x"]) == 1
    assert "no track embeddings" in capsys.readouterr().err
    assert main(["neighbours", "--embeddings", str(tmp_path), "--query", str(tmp_path / "song.mp3")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "embed.json: missing or unreadable" in err[0], err


def test_a_track_is_named_by_a_start_of_its_key_or_by_its_source_file(tmp_path, capsys):
    """--key took the whole 32-digit key only: a start of it, or the file the track came from,
    was 'not in'; --key "" fell through to --query and ended in a traceback."""
    rng = np.random.default_rng(4)
    keys = write_part(tmp_path, "a", rng.standard_normal((20, 1024)), 0)
    keys += write_part(tmp_path, "b", rng.standard_normal((1, 1024)), 0xABCDEF << 104)

    def first_neighbour(key: str) -> str:
        assert main(["neighbours", "--embeddings", str(tmp_path), "--key", key, "-k", "1"]) == 0, key
        return capsys.readouterr().out.strip().splitlines()[1].split()[0]

    whole = first_neighbour(keys[20])
    assert first_neighbour("abcd") == first_neighbour("ABCDEF") == whole  # a start no other key shares
    source = os.fsdecode(b"/m/My Music/5-caf\xe9.mp3")  # the path of track 5, its bytes not UTF-8
    assert first_neighbour(source) == first_neighbour("file:///m/My%20Music/5-caf%E9.mp3") == first_neighbour(keys[5])
    assert main(["neighbours", "--embeddings", str(tmp_path), "--key", "0000"]) == 1
    assert "--key 0000: the start of 20 keys in" in capsys.readouterr().err
    assert main(["neighbours", "--embeddings", str(tmp_path), "--key", "/m/other.mp3"]) == 1
    assert "not a key, the start of one, or a track's source file; for an audio file" in capsys.readouterr().err
    for option in ("--key", "--query"):
        assert main(["neighbours", "--embeddings", str(tmp_path), option, ""]) == 2
        assert capsys.readouterr().err == f"mvssl: error: {option}: empty\n"


def test_a_file_that_failed_to_embed_is_said_with_its_reason(tmp_path, capsys):
    """--key on a file `mvssl embed` listed as an error said only "not in", as for a file never given."""
    from mvssl_dist.embed.batch import ERROR_SCHEMA

    write_part(tmp_path, "a", np.random.default_rng(5).standard_normal((3, 1024)), 0)
    broken = tmp_path / "lib" / "broken.flac"
    detail = f"{broken}: decoding failed after 72576 frames (Invalid data found when processing input)"
    rows = {"source_uri": [broken.as_uri(), "file:///m/empty.mp3"], "reason": ["truncated", "empty"]}
    pq.write_table(pa.table({**rows, "detail": [detail, ""]}, schema=ERROR_SCHEMA), tmp_path / "errors.parquet")
    assert main(["neighbours", "--embeddings", str(tmp_path), "--key", str(broken)]) == 1
    assert capsys.readouterr().err == (
        f"mvssl: error: --key {broken}: not embedded in {tmp_path}, which lists it in errors.parquet: "
        "truncated (decoding failed after 72576 frames (Invalid data found when processing input))\n"
    )
    assert main(["neighbours", "--embeddings", str(tmp_path), "--key", "/m/empty.mp3"]) == 1
    assert capsys.readouterr().err.endswith("which lists it in errors.parquet: empty\n")
    assert main(["neighbours", "--embeddings", str(tmp_path), "--key", "/m/other.mp3"]) == 1
    assert "not a key, the start of one, or a track's source file" in capsys.readouterr().err


@pytest.mark.parametrize("k", [1, 5])
def test_search_agrees_with_a_plain_loop(tmp_path, k):
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((40, 1024))
    write_part(tmp_path, "a", vectors, 0)
    _, _, matrix = search_index(tmp_path)
    query = rng.standard_normal(1024)
    cosines = [float(v @ query / np.linalg.norm(v) / np.linalg.norm(query)) for v in vectors]
    expected = sorted(range(40), key=lambda i: -cosines[i])[:k]
    top, scores = nearest(matrix, query.astype(np.float32), k, unit=True)
    assert top.tolist() == expected and np.allclose(scores, [cosines[i] for i in expected], atol=1e-5)
