"""Views throughput: the Ray Data views dataset vs. a decode-per-pair loop and a bare slice loop.

    python benchmarks/views.py [--minutes 20] [--pairs-per-track 1000] [--rounds 5]

(end-to-end) `views_dataset` with 1 CPU task slot, reading tars from disk, drawing, checking
silence, cutting and batching, consumed as torch batches by this process (the training side,
on its own core); (a) decode the compressed file for every pair and cut two clips (how such
training is usually written); (b) cut the same clips from int16 PCM already in memory with
numpy (no I/O, no checks). All on the same tracks in the same run.

One full untimed pass first warms Ray, its workers and its object store (the first pass of a
fresh object store faults its pages in and runs 2-3x slower). This machine is noisy, so the paths
run in interleaved rounds and each ratio is the median of the per-round ratios. End to end is
given twice: over the whole pass (one Ray Data execution start-up and the first shard's read
included, ~0.5-1 s) and in steady state (after the first batch, whose clips are not counted),
which is what a training run of hours sees.
"""

from __future__ import annotations

import argparse
import statistics
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
    """The views stage's own work (read tars, draw, silence check, cut) without Ray."""
    from mvssl_dist.views.dataset import shard_items, shard_views

    start, clips = time.perf_counter(), 0
    for item in shard_items(dataset, 0, 0, pairs):
        clips += shard_views(item, ViewSpec())[0]["views"].shape[0] * 2
    return clips, time.perf_counter() - start


def end_to_end(dataset: Path, pairs: int, seed: int = 0) -> tuple[float, float]:
    """(clips/s over the whole pass, clips/s after the first batch: its clips and wait left out)."""
    ds = views_dataset(dataset, pairs_per_track=pairs, seed=seed, concurrency=1, stats_name=None)
    start = time.perf_counter()
    clips, first, first_clips = 0, None, 0
    for batch in ds.iter_torch_batches(batch_size=256, collate_fn=collate_views()):
        clips += batch["views"].shape[0] * batch["views"].shape[1]
        if first is None:
            first, first_clips = time.perf_counter(), clips
    end = time.perf_counter()
    return clips / (end - start), (clips - first_clips) / max(end - first, 1e-9)


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
    parser.add_argument("--pairs-per-track", type=int, default=1000, help="draws per track read (more = longer run)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", default="/tmp/mvssl-bench-views")
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    files = make_library(work / "audio", args.minutes, ("mp3", "ogg", "m4a"), seconds=120.0)  # song-length tracks
    init_ray(num_cpus=2)
    dataset = work / "dataset"
    if not (dataset / "dataset.json").is_file():
        options = IngestOptions([str(f) for f in files], str(dataset), shard_target_mb=16, progress=False)
        ingest(options, report=lambda m: None)
    end_to_end(dataset, args.pairs_per_track)  # warm-up: worker processes, imports, object store pages
    pcm = [np.round(t.audio * 32768).astype(np.int16) for t in read_tracks(dataset)]
    rates: dict[str, list[float]] = {"whole": [], "steady": [], "own": [], "bare": []}
    for round_ in range(args.rounds):
        whole, steady = end_to_end(dataset, args.pairs_per_track, seed=round_ + 1)
        rates["whole"].append(whole)
        rates["steady"].append(steady)
        rates["own"].append(per_second(*in_process(dataset, args.pairs_per_track // 4)))
        rates["bare"].append(per_second(*bare_slices(pcm, args.pairs_per_track // 4)))
    dec = per_second(*decode_per_pair(files, 25))
    median = {k: statistics.median(v) for k, v in rates.items()}
    bare = statistics.median(w / b for w, b in zip(rates["whole"], rates["bare"], strict=True))
    bare_steady = statistics.median(s / b for s, b in zip(rates["steady"], rates["bare"], strict=True))
    print(f"{len(pcm)} tracks, {sum(map(len, pcm)) / 16000 / 60:.1f} min; pairs_per_track={args.pairs_per_track}")
    print(f"{args.rounds} interleaved rounds; medians, clips/s per core:")
    print(f"end-to-end views dataset, whole pass  : {median['whole']:10.0f}   (rounds: {fmt(rates['whole'])})")
    print(f"end-to-end views dataset, steady state: {median['steady']:10.0f}   (rounds: {fmt(rates['steady'])})")
    print(f"views work in-process, no Ray         : {median['own']:10.0f}   (rounds: {fmt(rates['own'])})")
    print(f"(a) decode the file for every pair     : {dec:10.1f}")
    print(f"(b) bare numpy slices of in-memory PCM : {median['bare']:10.0f}   (rounds: {fmt(rates['bare'])})")
    print(
        f"ratio end-to-end / (a): whole {median['whole'] / dec:6.0f}x  steady {median['steady'] / dec:6.0f}x  (target >= 1000x)"
    )
    print(f"ratio end-to-end / (b): whole {bare:6.2f}   steady {bare_steady:6.2f}   (target >= 0.35; median of rounds)")
    cores = GPU_CLIPS_PER_S / median["steady"]
    print(f"CPU cores of view workers to feed one GPU at {GPU_CLIPS_PER_S} clips/s: {cores:.1f} (steady state)")


def per_second(clips: int, seconds: float) -> float:
    return clips / seconds


def fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.0f}" for v in values)


if __name__ == "__main__":
    main()
