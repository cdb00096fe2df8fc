"""Memory of `mvssl evaluate`'s feature reading on whole-track features, side by side.

    python benchmarks/evaluate_memory.py [--tracks 1500 3000] [--workdir /tmp/mvssl-bench-evalmem]

Writes a features folder as `mvssl embed --level segment` does (parts of 256 tracks), with
segments per track drawn like MTG-Jamendo's whole tracks (median ~55 four-second segments, a long
tail to 30 minutes), then reads it into the probe's three splits and takes the train statistics
in two child processes, each measured alone (peak resident memory above what its imports took):
(plain) the straightforward reading: each part's rows in a track's first 10 minutes gathered per
track in a dict, a track's segments stacked, the splits concatenated, numpy's ``std``;
(ours) ``read_features`` + ``split_features`` + ``train_statistics`` as `mvssl evaluate` runs them.
Both must give the same matrices (SHA-256 compared). Two library sizes show how each side's
memory beyond the features grows with them: the plain reading's as a multiple of the features,
ours not at all (a part at a time). From that, what the jamendo-top50 task (~55,000 tracks, at most
~3.1 M segments in their first 10 minutes, 12.7 GB of features) needs on each side.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SPLITS = ("train", "validation", "test")
JAMENDO_SEGMENTS = 3.1e6


def write_features(out: Path, tracks: int) -> list[str]:
    import pyarrow as pa

    from mvssl_dist.embed.batch import fixed_list, segment_schema
    from mvssl_dist.shards.ingest import write_parquet

    rng = np.random.default_rng(0)
    counts = np.clip(rng.lognormal(np.log(55), 0.45, tracks).astype(int), 8, 450)
    uris = [f"/audio/{i // 100:02d}/{i}.mp3" for i in range(tracks)]
    out.mkdir(parents=True)
    for n, first in enumerate(range(0, tracks, 256)):
        mine = range(first, min(tracks, first + 256))
        rows = [(i, s) for i in mine for s in range(counts[i])]
        table = pa.table(
            {
                "key": [f"k{i}" for i, _ in rows],
                "source_uri": [uris[i] for i, _ in rows],
                "source_bytes": [1] * len(rows),
                "source_mtime_ns": [1] * len(rows),
                "start_s": [4.0 * s for _, s in rows],
                "segment": [s for _, s in rows],
                "embedding": fixed_list(rng.standard_normal((len(rows), 1024), dtype=np.float32)),
                "rms_ratio": rng.uniform(0.2, 1.5, len(rows)).astype(np.float32),
            },
            schema=segment_schema(),
        )
        write_parquet(out / f"segments-{n:06d}.parquet", table)
    return uris


def task_of(uris: list[str]):
    from mvssl_dist.evaluate.tasks import Task, TaskTrack

    kinds = ["train"] * 6 + ["validation"] * 2 + ["test"] * 2  # MTG-Jamendo's split-0 is about 60/20/20
    labels = np.eye(2, dtype=np.float32)
    return Task("bench", ["a", "b"], [TaskTrack(str(i), u, kinds[i % 10], labels[i % 2]) for i, u in enumerate(uris)])


def plain(features: Path, task) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    from mvssl_dist.constants import SEGMENT_SECONDS
    from mvssl_dist.embed.batch import embedding_matrix
    from mvssl_dist.evaluate.run import READ_SECONDS

    wanted = {t.path for t in task.tracks}
    found: dict[str, list] = {}
    for part in sorted(features.glob("segments-*.parquet")):
        table = pq.read_table(part, columns=["source_uri", "segment", "start_s", "embedding"])
        matrix = embedding_matrix(table.column("embedding"))
        columns = (table[c].to_pylist() for c in ("source_uri", "segment", "start_s"))
        for uri, seg, start, row in zip(*columns, matrix, strict=True):
            if uri in wanted and start + SEGMENT_SECONDS <= READ_SECONDS:  # a track's first 10 minutes
                found.setdefault(uri, []).append((seg, row))
    per_track = {u: np.stack([r for _, r in sorted(rows, key=lambda x: x[0])]) for u, rows in found.items()}
    splits = {
        s: np.concatenate([per_track[t.path] for t in task.tracks if t.split == s]).astype(np.float32) for s in SPLITS
    }
    splits["train"].mean(axis=0), splits["train"].std(axis=0)
    return splits


def ours(features: Path, task) -> dict[str, np.ndarray]:
    from mvssl_dist.evaluate.probe import train_statistics
    from mvssl_dist.evaluate.run import read_features, split_features

    present = {i: t.path for i, t in enumerate(task.tracks)}
    splits = split_features(task, present, read_features(features, set(present.values())))
    train_statistics(splits["train"])
    return {s: splits[s].segments for s in SPLITS}


def child(side: str, workdir: Path) -> None:
    import pyarrow  # noqa: F401  (the imports both sides need, before the baseline)
    import torch  # noqa: F401

    import mvssl_dist.evaluate.run  # noqa: F401

    uris = json.loads((workdir / "uris.json").read_text())
    task = task_of(uris)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    splits = (plain if side == "plain" else ours)(workdir / "features", task)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(splits[s]).tobytes() for s in SPLITS)).hexdigest()
    size = sum(m.nbytes for m in splits.values())
    print(json.dumps({"above": peak - base, "size": size, "seconds": seconds, "sha": digest[:16]}))


def measure(workdir: Path, tracks: int) -> dict[str, dict]:
    shutil.rmtree(workdir, ignore_errors=True)
    uris = write_features(workdir / "features", tracks)
    (workdir / "uris.json").write_text(json.dumps(uris))
    results = {}
    for side in ("plain", "ours"):
        command = [sys.executable, __file__, "--workdir", str(workdir), "--child", side]
        results[side] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    shutil.rmtree(workdir, ignore_errors=True)
    if results["plain"]["sha"] != results["ours"]["sha"]:
        raise SystemExit(f"{tracks} tracks: the two sides read different matrices")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, nargs=2, default=[1500, 3000], help="two library sizes")
    parser.add_argument("--workdir", default="/tmp/mvssl-bench-evalmem")
    parser.add_argument("--child", choices=("plain", "ours"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    if args.child:
        return child(args.child, workdir)
    runs = [measure(workdir, n) for n in args.tracks]
    for tracks, results in zip(args.tracks, runs, strict=True):
        size = results["ours"]["size"]
        print(
            f"{tracks} tracks, {size / 4096:,.0f} segments, {size / 1e9:.2f} GB of features (same matrices both sides):"
        )
        for side, r in results.items():
            extra = r["above"] - size
            print(
                f"  {side:5s}: peak {r['above'] / 1e9:.2f} GB above its imports, {extra / 1e9:.2f} GB beyond the "
                f"features ({extra / size:.2f}x them), {r['seconds']:.1f} s"
            )
    small, large = runs
    print(f"plain / ours peak at {args.tracks[1]} tracks: {large['plain']['above'] / large['ours']['above']:.2f}x")
    jamendo = JAMENDO_SEGMENTS * 4096
    extra = {side: [r[side]["above"] - r[side]["size"] for r in runs] for side in ("plain", "ours")}
    ratio = min(e / r["plain"]["size"] for e, r in zip(extra["plain"], runs, strict=True))
    print(
        f"jamendo-top50 ({jamendo / 1e9:.1f} GB of features): plain at least ~{jamendo * (1 + ratio) / 1e9:.0f} GB "
        f"(its extra grows with the features, at least {ratio:.1f}x them), ours ~{(jamendo + max(extra['ours'])) / 1e9:.0f} GB "
        f"(its extra did not grow: at most {max(extra['ours']) / 1e9:.2f} GB, a part read at a time)"
    )


if __name__ == "__main__":
    main()
