"""Audio-seconds decoded per second per core: our ``decode`` vs. the bare PyAV calls, same files, same run.

    python benchmarks/decode.py [--minutes 4] [--workdir /tmp/mvssl-bench-decode]

Two baselines per format: (1) PyAV decoding to 16 kHz mono with its own resampler (the same
work as ours, done the library's way); (2) PyAV decoding alone, no resampling or downmix.
Target: ours / (1) >= 0.9.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_time, make_library  # noqa: E402

from mvssl_dist.audio import decode  # noqa: E402

FORMATS = ("mp3", "flac", "ogg", "opus", "wav", "m4a")


def bare_resampled(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
        chunks = [f.to_ndarray() for frame in container.decode(audio=0) for f in resampler.resample(frame)]
        chunks += [f.to_ndarray() for f in resampler.resample(None)]
    return np.concatenate(chunks, axis=1)[0]


def bare_decode_only(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(frame.to_ndarray().size for frame in container.decode(audio=0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=4.0, help="minutes of audio per format")
    parser.add_argument("--workdir", default="/tmp/mvssl-bench-decode")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"{'format':6} {'audio_s':>8} {'ours x':>9} {'av+swr x':>9} {'av only x':>10} {'ours/swr':>9} {'ours/av':>8}")
    ratios = []
    for fmt in FORMATS:
        files = make_library(Path(args.workdir) / fmt, args.minutes, (fmt,))
        seconds = sum(len(decode(f)) for f in files) / 16000
        ours = best_time(lambda: [decode(f) for f in files])  # noqa: B023
        swr = best_time(lambda: [bare_resampled(f) for f in files])  # noqa: B023
        only = best_time(lambda: [bare_decode_only(f) for f in files])  # noqa: B023
        ratios.append(swr / ours)
        print(
            f"{fmt:6} {seconds:8.0f} {seconds / ours:9.0f} {seconds / swr:9.0f} {seconds / only:10.0f}"
            f" {swr / ours:9.2f} {only / ours:8.2f}"
        )
    mean_ratio = float(np.exp(np.mean(np.log(ratios))))
    print(f"geometric-mean ratio ours / (PyAV + its resampler): {mean_ratio:.2f} (target >= 0.9)")
    print("x = audio-seconds decoded per wall-second on one core (higher is faster)")


if __name__ == "__main__":
    main()
