"""`mvssl neighbours` at catalogue size: our numpy search vs. an exact FAISS index, same run.

    python benchmarks/neighbours.py [--rows 1000000] [--queries 20] [--workdir /tmp/mvssl-bench-nn]

Writes an embedding table of ROWS tracks in `mvssl embed`'s format (parts of 100,000 rows;
vectors drawn around 1,000 centres so that neighbours are meaningful), then times:
(load) `load_track_embeddings`, reading the parquet parts into one array;
(build) the first `search_index`: the parts read again, rows normalised into OUT_DIR/search/;
(open) a later `search_index`: the cache memory-mapped;
(ours) `nearest` over the unit rows, one matrix-vector product and an argpartition, per query;
(faiss) `IndexFlatIP` over the same unit rows (the exact cosine search a library offers):
the index build once, then per query, and one batched search of all queries;
(cli) a whole `mvssl neighbours --key` call, cache in place (first call: build + this).
FAISS is optional (`pip install faiss-cpu`); without it only our side runs. The top-k lists of
both sides are compared, so the ratio is between searches that return the same answer.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mvssl_dist.constants import EMBEDDING_DIM
from mvssl_dist.embed.batch import fixed_list, track_schema
from mvssl_dist.embed.search import CACHE, load_track_embeddings, nearest, search_index

PART_ROWS = 100_000


def write_table(out: Path, rows: int, seed: int = 0) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, EMBEDDING_DIM)).astype(np.float32)
    for part, start in enumerate(range(0, rows, PART_ROWS)):
        n = min(PART_ROWS, rows - start)
        vectors = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, EMBEDDING_DIM), np.float32)
        table = pa.table(
            {
                "key": [f"{i:032x}" for i in range(start, start + n)],
                "source_uri": [f"file:///music/{i}.mp3" for i in range(start, start + n)],
                "source_bytes": np.full(n, 4_000_000),
                "source_mtime_ns": np.full(n, 1_700_000_000 * 10**9),
                "duration_s": np.full(n, 180.0),
                "num_segments": np.full(n, 45, np.int32),
                "embedding": fixed_list(vectors),
            },
            schema=track_schema(),
        )
        pq.write_table(table, out / f"tracks-bench-{part:06d}.parquet")


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--workdir", default="/tmp/mvssl-bench-nn")
    args = parser.parse_args(argv)
    out = Path(args.workdir) / f"rows-{args.rows}"
    if not list(out.glob("tracks-*.parquet")):
        print(f"writing {args.rows:,} rows to {out} ...", flush=True)
        write_table(out, args.rows)
    load_s, (keys, _, raw) = timed(lambda: load_track_embeddings(out))
    del raw
    shutil.rmtree(out / CACHE, ignore_errors=True)
    build_s, _ = timed(lambda: search_index(out))
    open_s, (keys, _, matrix) = timed(lambda: search_index(out))
    queries = np.array(matrix[np.random.default_rng(1).integers(0, len(matrix), args.queries)])
    ours = [timed(lambda q=q: nearest(matrix, q, args.k, unit=True)) for q in queries]
    ours_s = statistics.median(t for t, _ in ours)
    print(
        f"{len(keys):,} rows x {EMBEDDING_DIM} float32 ({matrix.nbytes / 1e9:.1f} GB), {args.queries} queries, k={args.k}"
    )
    print(f"(load)  load_track_embeddings (parquet)  : {load_s:7.2f} s")
    print(f"(build) first search_index (writes cache): {build_s:7.2f} s")
    print(f"(open)  later search_index (memory map)  : {open_s:7.2f} s")
    print(f"(ours)  nearest, per query (median)      : {ours_s:7.3f} s")
    faiss_side(np.asarray(matrix), queries, ours, ours_s, args.k)
    cli_s, _ = timed(
        lambda: subprocess.run(
            [sys.executable, "-m", "mvssl_dist.cli", "neighbours", "--embeddings", str(out), "--key", keys[0]],
            check=True,
            capture_output=True,
        )
    )
    print(f"(cli)   mvssl neighbours --key, whole call   : {cli_s:7.2f} s")


def faiss_side(matrix: np.ndarray, queries: np.ndarray, ours: list, ours_s: float, k: int) -> None:
    try:
        import faiss
    except ImportError:
        print("(faiss) not installed: pip install faiss-cpu to compare")
        return

    def build():
        index = faiss.IndexFlatIP(matrix.shape[1])
        index.add(matrix)
        return index

    build_s, index = timed(build)
    normed_q = np.ascontiguousarray(queries / np.linalg.norm(queries, axis=1, keepdims=True))
    single = [timed(lambda q=q: index.search(q[None], k)) for q in normed_q]
    single_s = statistics.median(t for t, _ in single)
    batch_s, _ = timed(lambda: index.search(normed_q, k))
    same = np.mean([set(o[1][0]) == set(f[1][1][0]) for o, f in zip(ours, single, strict=True)])
    print(f"(faiss) IndexFlatIP build (add): {build_s:7.2f} s")
    print(f"(faiss) search, per query (median)   : {single_s:7.3f} s")
    print(f"(faiss) search, {len(queries)} queries at once   : {batch_s:7.3f} s ({batch_s / len(queries):.3f} s each)")
    print(f"same top-k as ours: {same:.0%} of queries")
    print(f"ratio faiss/ours time per query: {single_s / ours_s:.2f} (above 1: ours is faster)")


if __name__ == "__main__":
    main()
