"""Nearest-neighbour search over the track embeddings that ``mvssl embed`` wrote.

Reading the parquet parts is the slow side at catalogue size, not the search: a million 1024-d
rows took ~35-40 s to decode here (``benchmarks/neighbours.py``), against ~0.2 s for the
matrix-vector product. So the first search writes ``OUT_DIR/search/``: the rows L2-normalised in
one ``.npy`` (memory-mapped by later searches), their keys and URIs, and the list of parts they
came from. A later search whose parts are unchanged opens it in about a second; new parts (a
resumed or extended ``mvssl embed``) rebuild it. An OUT_DIR that cannot be written is searched
from memory instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mvssl_dist.constants import EMBEDDING_DIM
from mvssl_dist.embed.batch import embedding_matrix

CACHE = "search"


class SearchError(RuntimeError):
    """The embeddings cannot be searched; one line."""


def track_parts(out_dir: str | Path) -> list[Path]:
    parts = sorted(Path(out_dir).glob("tracks-*.parquet"))
    if not parts:
        raise SearchError(f"{out_dir}: no track embeddings (run `mvssl embed --level track|both` first)")
    return parts


def load_track_embeddings(out_dir: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """(keys, source URIs, ``[tracks, 1024]`` float32) as written."""
    parts = track_parts(out_dir)
    return read_rows(parts, np.empty((row_count(parts), EMBEDDING_DIM), np.float32), normalise=False)


def row_count(parts: list[Path]) -> int:
    return sum(pq.read_metadata(p).num_rows for p in parts)


def read_rows(parts: list[Path], matrix: np.ndarray, normalise: bool) -> tuple[list[str], list[str], np.ndarray]:
    """Copy each part's embeddings into ``matrix`` (no concatenated copy of the whole table)."""
    keys: list[str] = []
    uris: list[str] = []
    for part in parts:
        table = pq.read_table(part, columns=["key", "source_uri", "embedding"])
        rows = embedding_matrix(table.column("embedding"))
        matrix[len(keys) : len(keys) + len(rows)] = unit_rows(rows) if normalise else rows
        keys += table.column("key").to_pylist()
        uris += table.column("source_uri").to_pylist()
    return keys, uris, matrix


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm; an all-zero row stays zero."""
    norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    return rows / np.maximum(norms, 1e-12)[:, None]


def fingerprint(parts: list[Path]) -> list[list]:
    return [[p.name, stat.st_size, stat.st_mtime_ns] for p, stat in ((p, p.stat()) for p in parts)]


def search_index(out_dir: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """(keys, URIs, unit-norm ``[tracks, 1024]`` rows), from the cache when it matches the parts."""
    out = Path(out_dir)
    parts = track_parts(out)
    cache = out / CACHE
    source = fingerprint(parts)
    try:
        if json.loads((cache / "source.json").read_text()) == source:
            rows = pq.read_table(cache / "rows.parquet")
            matrix = np.load(cache / "vectors.npy", mmap_mode="r")
            return rows.column("key").to_pylist(), rows.column("source_uri").to_pylist(), matrix
    except (OSError, ValueError, pa.ArrowException):
        pass  # no cache yet, or one left unfinished: build it
    try:
        return build_index(cache, parts, source)
    except PermissionError:
        return read_rows(parts, np.empty((row_count(parts), EMBEDDING_DIM), np.float32), normalise=True)


def build_index(cache: Path, parts: list[Path], source: list[list]) -> tuple[list[str], list[str], np.ndarray]:
    """Write the cache under temporary names; ``source.json`` last, so a killed build is redone."""
    cache.mkdir(exist_ok=True)
    suffix = f".tmp{os.getpid()}"
    vectors = cache / f"vectors.npy{suffix}"
    shape = (row_count(parts), EMBEDDING_DIM)
    keys, uris, matrix = read_rows(parts, np.lib.format.open_memmap(vectors, "w+", np.float32, shape), normalise=True)
    matrix.flush()
    del matrix
    rows = cache / f"rows.parquet{suffix}"
    pq.write_table(pa.table({"key": keys, "source_uri": uris}), rows)
    (cache / "source.json").unlink(missing_ok=True)
    os.replace(vectors, cache / "vectors.npy")
    os.replace(rows, cache / "rows.parquet")
    (cache / f"source.json{suffix}").write_text(json.dumps(source))
    os.replace(cache / f"source.json{suffix}", cache / "source.json")
    return keys, uris, np.load(cache / "vectors.npy", mmap_mode="r")


def nearest(matrix: np.ndarray, query: np.ndarray, k: int, unit: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of ``matrix`` ``[n, d]`` by cosine similarity to ``query`` ``[d]``: (indices, scores), best first.

    ``unit``: the rows are already L2-normalised (``search_index``), so the scores are one
    matrix-vector product (~0.2 s for a million 1024-d rows here, as fast as FAISS's exact
    ``IndexFlatIP``); otherwise the row norms are computed too, without a temporary copy.
    """
    scores = matrix @ (query / max(float(np.linalg.norm(query)), 1e-12))
    if not unit:
        scores = scores / np.maximum(np.sqrt(np.einsum("ij,ij->i", matrix, matrix)), 1e-12)
    k = min(k, len(scores))
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top])]
    return top, scores[top]


def find_track(keys: list[str], uris: list[str], value: str, where: str) -> int:
    """The row ``--key VALUE`` names: a key, a start of one that no other key shares (as git takes
    a commit), or the source file of a track (its path or URI)."""
    from mvssl_dist.shards.uris import path_to_uri

    if value in keys:
        return keys.index(value)
    wanted = value.lower()
    if len(wanted) >= 4 and all(c in "0123456789abcdef" for c in wanted):
        starts = [i for i, key in enumerate(keys) if key.startswith(wanted)]
        if len(starts) == 1:
            return starts[0]
        if starts:
            shown = ", ".join(keys[i] for i in starts[:3])
            raise SearchError(
                f"--key {value}: the start of {len(starts)} keys in {where} ({shown}, …): give more of it"
            )
    uri = value if "://" in value else path_to_uri(os.path.abspath(value))
    if uri in uris:
        return uris.index(uri)
    if failure := embed_failure(where, uri):
        raise SearchError(f"--key {value}: not embedded in {where}, which lists it in errors.parquet: {failure}")
    raise SearchError(
        f"--key {value}: not in {where} (not a key, the start of one, or a track's source file; "
        "for an audio file not embedded there, use --query)"
    )


def embed_failure(out_dir: str | Path, uri: str) -> str | None:
    """Why ``mvssl embed`` did not embed the file at ``uri`` into ``out_dir`` (its reason and
    detail from ``errors.parquet``), or ``None`` when it is not listed there."""
    try:
        table = pq.read_table(Path(out_dir) / "errors.parquet", filters=[("source_uri", "=", uri)])
    except (OSError, pa.ArrowInvalid):  # none written (an older or unfinished run): no reason to give
        return None
    if not table.num_rows:
        return None
    from mvssl_dist.shards.uris import display_uri

    row = table.slice(table.num_rows - 1).to_pylist()[0]
    detail = (row.get("detail") or "").removeprefix(f"{display_uri(uri)}: ")  # the file is named already
    return f"{row['reason']} ({detail})" if detail else row["reason"]
