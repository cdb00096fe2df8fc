"""Ingest throughput vs. a bare decode loop, same files, same run; and scaling from 1 to 2 workers.

    python benchmarks/ingest.py [--minutes 20] [--workdir /tmp/mvssl-bench-ingest]

(a) `ingest` through Ray Data with 1 worker, then 2 workers (a fresh output each time; Ray is
started before the clock starts); (b) a plain single-process loop that only decodes the same
files with our `decode`. Prints audio-seconds per second per core and the ratios
(target: ingest with 1 worker / bare loop >= 0.8).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import make_library  # noqa: E402

from mvssl_dist.audio import decode  # noqa: E402
from mvssl_dist.raytools import init_ray  # noqa: E402
from mvssl_dist.shards import IngestOptions, ingest  # noqa: E402


def timed_ingest(files: list[Path], out: Path, workers: int, target_mb: float) -> tuple[float, float]:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    summary = ingest(
        IngestOptions([str(f) for f in files], str(out), workers=workers, shard_target_mb=target_mb, progress=False),
        report=lambda m: None,
    )
    return time.perf_counter() - start, summary.hours * 3600


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--workdir", default="/tmp/mvssl-bench-ingest")
    parser.add_argument("--units", type=int, default=16, help="about how many shards to cut the audio into")
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    files = make_library(work / "audio", args.minutes, ("mp3", "ogg", "m4a", "flac"))
    init_ray(num_cpus=2)
    # Warm-up (untimed): Ray starts and imports its worker processes once; a catalogue-scale run
    # pays that once too, so the timed runs measure the steady state.
    timed_ingest(files[:4], work / "warmup", 2, 0.5)
    target_mb = max(0.2, args.minutes * 60 * 64000 / 1e6 / args.units)  # estimates run ~2x the real size
    start = time.perf_counter()
    audio_s = sum(len(decode(f)) for f in files) / 16000
    bare_s = time.perf_counter() - start
    one_s, ingested_s = timed_ingest(files, work / "out1", 1, target_mb)
    two_s, _ = timed_ingest(files, work / "out2", 2, target_mb)
    print(f"{len(files)} files, {audio_s / 60:.1f} min of audio ({ingested_s / 60:.1f} min ingested)")
    print(f"bare decode loop, 1 process : {audio_s / bare_s:8.0f} audio-s/s per core")
    print(f"ingest, 1 worker            : {audio_s / one_s:8.0f} audio-s/s per core")
    print(f"ingest, 2 workers           : {audio_s / two_s / 2:8.0f} audio-s/s per core ({audio_s / two_s:.0f} total)")
    print(f"ratio ingest(1 worker) / bare loop: {bare_s / one_s:.2f} (target >= 0.8)")
    print(f"scaling 1 -> 2 workers: {one_s / two_s:.2f}x")


if __name__ == "__main__":
    main()
