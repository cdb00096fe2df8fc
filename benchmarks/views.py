"""Views throughput: the Ray Data views dataset vs. a decode-per-pair loop and a bare slice loop.

    python benchmarks/views.py [--minutes 20] [--pairs-per-track 25] [--workdir /tmp/mvssl-bench-views]

(end-to-end) `views_dataset` with 1 CPU task slot, reading tars from disk, cutting, checking
silence and batching, consumed as torch batches; (a) decode the compressed file for every pair
and cut two clips (how such training is usually written); (b) cut the same clips from int16 PCM
already in memory with numpy (no I/O, no checks). All on the same tracks in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import make_library  # noqa: E402

from mvssl_dist.audio import decode  # noqa: E402
from mvssl_dist.raytools import init_ray  # noqa: E402
from mvssl_dist.shards import IngestOptions, ingest, read_tracks  # noqa: E402
from mvssl_dist.views import ViewSpec, collate_views, draw_starts, views_dataset  # noqa: E402

GPU_CLIPS_PER_S = 50_000  # one H200, bf16 + compile, reference model (issue figure)


def in_process(dataset: Path, pairs: int) -> tuple[int, float]:
    """The views stage's own work (read tars, draw, silence check, cut) without Ray, twice (warm)."""
    from mvssl_dist.views.dataset import shard_items, shard_views

    items = shard_items(dataset, 0, 0, pairs)
    for _ in range(2):
        start, clips = time.perf_counter(), 0
        for item in items:
            clips += shard_views(item, ViewSpec())[0]["views"].shape[0] * 2
    return clips, time.perf_counter() - start


def end_to_end(dataset: Path, pairs: int) -> tuple[int, float]:
    ds = views_dataset(dataset, pairs_per_track=pairs, seed=0, concurrency=1, stats_name=None)
    start = time.perf_counter()
    clips = 0
    for batch in ds.iter_torch_batches(batch_size=256, collate_fn=collate_views()):
        clips += batch["views"].shape[0] * batch["views"].shape[1]
    return clips, time.perf_counter() - start


def decode_per_pair(files: list[Path], pairs: int) -> tuple[int, float]:
    rng = np.random.default_rng(0)
    spec = ViewSpec()
    start = time.perf_counter()
    clips = 0
    for f in files[: max(2, len(files) // 8)]:  # slow: a subset is enough for a rate
        for _ in range(max(1, pairs // 5)):
            audio = decode(f)
            starts = draw_starts(len(audio), spec, rng)
            clips += len([audio[s : s + spec.segment_samples] for s in starts])
    return clips, time.perf_counter() - start


def bare_slices(pcm: list[np.ndarray], pairs: int) -> tuple[int, float]:
    rng = np.random.default_rng(0)
    spec = ViewSpec()
    start = time.perf_counter()
    clips = 0
    for _ in range(pairs):
        for track in pcm:
            starts = draw_starts(len(track), spec, rng)
            out = np.stack([track[s : s + spec.segment_samples] for s in starts])
            clips += len(out)
    return clips, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--pairs-per-track", type=int, default=200, help="draws per track read (more = longer run)")
    parser.add_argument("--workdir", default="/tmp/mvssl-bench-views")
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    files = make_library(work / "audio", args.minutes, ("mp3", "ogg", "m4a"), seconds=240.0)  # song-length tracks
    init_ray(num_cpus=2)
    dataset = work / "dataset"
    ingest(
        IngestOptions([str(f) for f in files], str(dataset), shard_target_mb=8, progress=False), report=lambda m: None
    )
    end_to_end(dataset, 1)  # warm-up: worker processes and imports
    e2e_clips, e2e_s = end_to_end(dataset, args.pairs_per_track)
    own_clips, own_s = in_process(dataset, args.pairs_per_track // 4)
    pcm = [np.round(t.audio * 32768).astype(np.int16) for t in read_tracks(dataset)]
    bare_clips, bare_s = bare_slices(pcm, args.pairs_per_track)
    dec_clips, dec_s = decode_per_pair(files, args.pairs_per_track)
    e2e, bare, dec = e2e_clips / e2e_s, bare_clips / bare_s, dec_clips / dec_s
    print(f"{len(pcm)} tracks, {sum(map(len, pcm)) / 16000 / 60:.1f} min; pairs_per_track={args.pairs_per_track}")
    print(f"end-to-end views dataset (1 task slot) : {e2e:10.0f} clips/s per core")
    print(f"views work in-process, no Ray         : {own_clips / own_s:10.0f} clips/s per core")
    print(f"(a) decode the file for every pair     : {dec:10.1f} clips/s per core")
    print(f"(b) bare numpy slices of in-memory PCM : {bare:10.0f} clips/s per core")
    print(f"ratio end-to-end / (a): {e2e / dec:8.0f}x   (target >= 1000x)")
    print(f"ratio end-to-end / (b): {e2e / bare:8.2f}    (target >= 0.35)")
    print(f"CPU cores to feed one GPU at {GPU_CLIPS_PER_S} clips/s: {GPU_CLIPS_PER_S / e2e:.1f}")


if __name__ == "__main__":
    main()
