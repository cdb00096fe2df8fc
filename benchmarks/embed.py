"""Embedding throughput: `mvssl embed` vs. a bare forward pass vs. the reference's per-file loop, same run.

    python benchmarks/embed.py [--minutes 40] [--rounds 2] [--workdir /tmp/mvssl-bench-embed]

(a) `embed_library` end to end: one model actor (one torch thread: the actor's one CPU) and
Ray Data decode tasks (two per CPU) on the CPU it leaves; (b) a bare batched forward pass over the same
pre-cut clips, no I/O, on one torch thread: the model's cores are equal in (a) and (b), so
a/b says how well decoding overlaps the model; (c) a sequential loop as in the reference
usage example (usage/sample.py): load a file at its own rate, average the channels, resample
to 16 kHz with torchaudio.functional.resample, peak-normalise, zero-pad to a multiple of 4 s,
forward in batches of 4, with torch's default threads (both cores). The example loads with
torchaudio.load, whose FFmpeg backend (TorchCodec) is not installed: PyAV does that decode here,
to float at the file's rate, as that backend would. (c0) is the same loop with our decoder
(mono 16 kHz straight from the codec), to show what the decoder alone is worth.
Targets: a/b >= 0.8, a/c >= 3 on 2 cores.

(a') is `mvssl embed` on the same audio already ingested (a DATASET_DIR: int16 shards, no
decoding), the input a GPU job should use. (a) is given over the whole run (Ray Data start-up
and the actor's model load included) and in steady state (between the first and the last
progress line). Paths run in interleaved rounds; medians.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

import av
import numpy as np
import torch
import torchaudio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import make_library  # noqa: E402

from mvssl_dist.audio import decode  # noqa: E402
from mvssl_dist.embed import cut_segments, embed_segments, peak_normalise  # noqa: E402
from mvssl_dist.embed.batch import EmbedOptions, embed_library  # noqa: E402
from mvssl_dist.models import Backbone, save_backbone  # noqa: E402
from mvssl_dist.raytools import init_ray  # noqa: E402
from mvssl_dist.shards import IngestOptions, ingest  # noqa: E402

GPU_CLIPS_PER_S = 68_000  # one H200, bf16, reference backbone (issue figure)


def bare_forward(model: Backbone, clips: np.ndarray) -> float:
    torch.set_num_threads(1)
    start = time.perf_counter()
    embed_segments(model, clips, batch_size=64)
    return len(clips) / (time.perf_counter() - start)


def reference_load(path: Path) -> np.ndarray:
    """The usage example's loading: float samples at the file's rate, channel mean, torchaudio's
    sinc resampling to 16 kHz, peak normalisation (its zero-padding is ``cut_segments``')."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        to_float = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=stream.rate)
        frames = [f.to_ndarray() for frame in container.decode(stream) for f in to_float.resample(frame)]
        rate = stream.rate
    waveform = torch.from_numpy(np.concatenate(frames, axis=1)).mean(dim=0)
    return peak_normalise(torchaudio.functional.resample(waveform, rate, 16000).numpy())


def reference_loop(model: Backbone, files: list[Path], clips: int, threads: int, load=reference_load) -> float:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    for f in files:  # the reference usage example, one file at a time
        embed_segments(model, cut_segments(load(f)), batch_size=4)
    return clips / (time.perf_counter() - start)


def end_to_end(sources: list[str], weights: Path, out: Path, clips: int) -> tuple[float, float]:
    """(clips/s over the whole run, clips/s between the first and the last progress line).

    Progress lines (``[embed] k/N tracks``) give how much was done when; the tracks of the first
    line and the time before it are left out of the steady rate.
    """
    shutil.rmtree(out, ignore_errors=True)
    marks: list[tuple[float, int]] = []

    def report(message: str) -> None:
        if match := re.match(r"\[embed\] (\d+)/(\d+) tracks", message):
            marks.append((time.perf_counter(), int(match[1])))

    options = EmbedOptions(sources, str(weights), str(out), batch_size=64)
    start = time.perf_counter()
    summary = embed_library(options, report=report)
    end = time.perf_counter()
    assert summary.errors == 0 and marks, summary
    (t0, done0), (t1, done1) = marks[0], marks[-1]
    steady = clips * (done1 - done0) / done1 / (t1 - t0) if t1 > t0 else clips / (end - start)
    return clips / (end - start), steady


def decode_rate(files: list[Path], clips_per_file: float) -> float:
    sample = files[: max(1, len(files) // 4)]
    start = time.perf_counter()
    for f in sample:
        decode(f)
    return clips_per_file * len(sample) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=40.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", default="/tmp/mvssl-bench-embed")
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    files = make_library(work / "audio", args.minutes, ("mp3", "ogg", "m4a", "flac"))
    weights = save_backbone(Backbone(), work / "backbone.pt")
    threads = torch.get_num_threads()
    init_ray(num_cpus=2)
    clips = np.concatenate([cut_segments(peak_normalise(decode(f))) for f in files])
    model = Backbone().eval()
    dataset = work / "dataset"
    if not (dataset / "dataset.json").is_file():
        ingest(IngestOptions([str(f) for f in files], str(dataset), progress=False), report=lambda m: None)
    end_to_end([str(files[0])], weights, work / "warm", 2)  # Ray and its workers start once per job, not per library
    keys = ("whole", "steady", "ds_whole", "ds_steady", "bare", "loop", "loop_ours")
    rates: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(args.rounds):
        whole, steady = end_to_end([str(f) for f in files], weights, work / "out", len(clips))
        rates["whole"].append(whole)
        rates["steady"].append(steady)
        whole, steady = end_to_end([str(dataset)], weights, work / "out-dataset", len(clips))
        rates["ds_whole"].append(whole)
        rates["ds_steady"].append(steady)
        rates["bare"].append(bare_forward(model, clips))
        rates["loop"].append(reference_loop(model, files, len(clips), threads))
        rates["loop_ours"].append(
            reference_loop(model, files, len(clips), threads, lambda f: peak_normalise(decode(f)))
        )
    med = {k: statistics.median(v) for k, v in rates.items()}
    decode_per_core = decode_rate(files, len(clips) / len(files))
    print(f"{len(files)} files, {len(clips)} clips of 4 s, {args.rounds} interleaved rounds (medians)")
    print(f"(a) mvssl embed, whole run         : {med['whole']:8.1f} clips/s   (rounds {fmt(rates['whole'])})")
    print(f"(a) mvssl embed, steady state      : {med['steady']:8.1f} clips/s   (rounds {fmt(rates['steady'])})")
    print(f"(a') from a DATASET_DIR, whole run : {med['ds_whole']:8.1f} clips/s   (rounds {fmt(rates['ds_whole'])})")
    print(f"(a') from a DATASET_DIR, steady    : {med['ds_steady']:8.1f} clips/s   (rounds {fmt(rates['ds_steady'])})")
    print(f"(b) bare batched forward, 1 thread : {med['bare']:8.1f} clips/s   (rounds {fmt(rates['bare'])})")
    print(f"(c) reference loop, {threads} threads     : {med['loop']:8.1f} clips/s   (rounds {fmt(rates['loop'])})")
    print(f"(c0) the loop with our decoder     : {med['loop_ours']:8.1f} clips/s   (rounds {fmt(rates['loop_ours'])})")
    print(
        f"ratio a/b: whole {med['whole'] / med['bare']:.2f}, steady {med['steady'] / med['bare']:.2f} (target >= 0.8)"
    )
    print(
        f"ratio a'/b (no decoding): whole {med['ds_whole'] / med['bare']:.2f}, steady {med['ds_steady'] / med['bare']:.2f}"
    )
    print(f"ratio a/c: whole {med['whole'] / med['loop']:.2f}, steady {med['steady'] / med['loop']:.2f} (target >= 3)")
    print(f"ratio a/c0: whole {med['whole'] / med['loop_ours']:.2f}, steady {med['steady'] / med['loop_ours']:.2f}")
    print(
        f"decode alone: {decode_per_core:.0f} clips/s per core -> CPU cores per GPU at {GPU_CLIPS_PER_S} clips/s: "
        f"{GPU_CLIPS_PER_S / decode_per_core:.0f}"
    )


def fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    main()
