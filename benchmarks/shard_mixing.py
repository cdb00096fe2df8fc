"""How much of the catalogue a training batch sees: shards packed as a walk lists the files vs.
as the ingest now packs them (scattered by a hash of each URI), side by side in one run.

    python benchmarks/shard_mixing.py [--artists 30] [--tracks 8] [--batch 16] [--buffer 64]

A catalogue laid out as most are, one folder per artist (`artistNN/album/MM.wav`; short tones,
written in a few seconds), is ingested twice into shards of about 15 tracks: (a) packed in listing
order, as the ingest did before 2026-12-02; (b) packed as it does now. Each dataset's views are
then read as a training worker reads them (one views task per shard, batches drawn from a local
shuffle buffer) over 3 epochs, and the benchmark prints how many artists a shard holds and the
share of a batch's pairs that come from one artist, next to that share in uniform draws.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import sys
import tempfile
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from mvssl_dist.audio.synth import encode  # noqa: E402
from mvssl_dist.shards import IngestOptions, ingest  # noqa: E402

ingest_module = importlib.import_module("mvssl_dist.shards.ingest")  # the package exports a function of that name

SECONDS = 13.0  # above the 12 s ingest minimum
RATE = 16000


def write_catalogue(root: Path, artists: int, tracks: int) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(int(SECONDS * RATE)) / RATE
    for a in range(artists):
        (root / f"artist{a:02d}" / "album").mkdir(parents=True)
        for k in range(tracks):
            tone = 0.1 * np.sin(2 * np.pi * (200 + 10 * a + k) * t) + 0.01 * rng.standard_normal(t.size)
            encode(root / f"artist{a:02d}" / "album" / f"{k:02d}.wav", tone.astype(np.float32), RATE)


def ingest_into(src: Path, out: Path, shard_mb: float, as_listed: bool) -> None:
    options = IngestOptions([str(src)], str(out), shard_target_mb=shard_mb, progress=False)
    if not as_listed:
        ingest(options, report=lambda m: None)
        return
    listed: dict[str, int] = {}

    def listing_order(uri: str) -> int:  # the packing before: inputs in the order they were found
        return listed.setdefault(uri, len(listed))

    with mock.patch.object(ingest_module, "scatter_key", listing_order):
        ingest(options, report=lambda m: None)


def artist_of(uri: str) -> str:
    return uri.rstrip("/").split("/")[-3]


def measure(dataset: Path, batch: int, buffer: int) -> tuple[list[int], float, float]:
    """(artists per shard, share of a batch's pairs from one artist, that share in uniform draws)."""
    from mvssl_dist.views import views_dataset

    index = pq.read_table(dataset / "index.parquet").to_pylist()
    artist = {r["key"]: artist_of(r["source_uri"]) for r in index}
    shards: dict[str, set] = {}
    for r in index:
        shards.setdefault(r["shard"], set()).add(artist[r["key"]])
    same = pairs = 0
    for epoch in range(3):
        views = views_dataset(dataset, pairs_per_track=1, seed=0, epoch=epoch, num_cpus_per_task=0.5, stats_name=None)
        for rows in views.iter_batches(batch_size=batch, local_shuffle_buffer_size=buffer, drop_last=True):
            for x, y in itertools.combinations([artist[k] for k in rows["key"]], 2):
                same, pairs = same + (x == y), pairs + 1
    per_artist = len(index) / len(set(artist.values()))
    return sorted(len(a) for a in shards.values()), same / pairs, (per_artist - 1) / (len(index) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artists", type=int, default=30)
    parser.add_argument("--tracks", type=int, default=8, help="tracks per artist folder")
    parser.add_argument("--batch", type=int, default=16, help="rows per training worker's batch")
    parser.add_argument("--buffer", type=int, default=64, help="the worker's local shuffle buffer, in rows")
    parser.add_argument("--shard-mb", type=float, default=1.1, help="~15 tracks a shard at the defaults")
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_catalogue(work / "catalogue", args.artists, args.tracks)
        results = {}
        for name, as_listed in (("packed as listed (before)", True), ("packed scattered (now)", False)):
            folder = work / ("as-listed" if as_listed else "scattered")
            ingest_into(work / "catalogue", folder, args.shard_mb, as_listed)
            results[name] = measure(folder, args.batch, args.buffer)
    uniform = next(iter(results.values()))[2]
    print(f"{args.artists} artists x {args.tracks} tracks; batches of {args.batch} from a {args.buffer}-row buffer")
    for name, (per_shard, share, _) in results.items():
        print(
            f"{name:27s} artists per shard {min(per_shard)}-{max(per_shard)}; "
            f"same-artist pairs in a batch {share:.3f} = {share / uniform:.1f}x uniform draws ({uniform:.3f})"
        )
    before, now = (r[1] for r in results.values())
    print(f"ratio before / now: {before / now:.1f}x")


if __name__ == "__main__":
    main()
