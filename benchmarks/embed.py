"""Embedding throughput: `mvssl embed` vs. a bare forward pass vs. the reference's per-file loop, same run.

    python benchmarks/embed.py [--minutes 20] [--workdir /tmp/mvssl-bench-embed]

(a) `embed_library` end to end (Ray Data decode tasks + one model actor), (b) a bare batched
forward pass over the same pre-cut clips (no I/O), (c) a sequential loop as in the reference
usage example: decode a file, chunk it, forward in batches of 4. Targets: a/b >= 0.8 at equal
cores (decode overlaps compute), a/c >= 3 on 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import make_library  # noqa: E402

from mvssl_dist.audio import decode  # noqa: E402
from mvssl_dist.embed import cut_segments, embed_segments, peak_normalise  # noqa: E402
from mvssl_dist.embed.batch import EmbedOptions, embed_library  # noqa: E402
from mvssl_dist.models import Backbone, save_backbone  # noqa: E402
from mvssl_dist.raytools import init_ray  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--workdir", default="/tmp/mvssl-bench-embed")
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    files = make_library(work / "audio", args.minutes, ("mp3", "ogg", "m4a", "flac"))
    weights = save_backbone(Backbone(), work / "backbone.pt")
    init_ray(num_cpus=2)
    clips = np.concatenate([cut_segments(peak_normalise(decode(f))) for f in files])
    torch.set_num_threads(2)
    model = Backbone().eval()
    start = time.perf_counter()
    embed_segments(model, clips, batch_size=64)
    bare = len(clips) / (time.perf_counter() - start)
    start = time.perf_counter()
    for f in files:  # the reference usage example, one file at a time
        embed_segments(model, cut_segments(peak_normalise(decode(f))), batch_size=4)
    loop = len(clips) / (time.perf_counter() - start)
    # warm-up (untimed): Ray and its worker processes start once per job, not per library
    embed_library(EmbedOptions([str(files[0])], str(weights), str(work / "warm")), report=lambda m: None)
    shutil.rmtree(work / "warm", ignore_errors=True)
    shutil.rmtree(work / "out", ignore_errors=True)
    start = time.perf_counter()
    embed_library(
        EmbedOptions([str(f) for f in files], str(weights), str(work / "out"), batch_size=64), report=lambda m: None
    )
    e2e = len(clips) / (time.perf_counter() - start)
    start = time.perf_counter()
    for f in files[: max(1, len(files) // 4)]:
        decode(f)
    per_core_decode = len(clips) / max(1, len(files)) * max(1, len(files) // 4) / (time.perf_counter() - start)
    print(f"{len(files)} files, {len(clips)} clips of 4 s")
    print(f"(a) mvssl embed end to end        : {e2e:8.1f} clips/s")
    print(f"(b) bare batched forward pass     : {bare:8.1f} clips/s")
    print(f"(c) reference per-file loop (bs 4): {loop:8.1f} clips/s")
    print(f"ratio a/b: {e2e / bare:.2f} (target >= 0.8)   ratio a/c: {e2e / loop:.2f} (target >= 3)")
    print(
        f"decode alone: {per_core_decode:.0f} clips/s per core -> CPU cores per GPU at 68,000 clips/s: {68000 / per_core_decode:.0f}"
    )


if __name__ == "__main__":
    main()
