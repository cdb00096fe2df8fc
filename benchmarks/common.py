"""Helpers shared by the benchmark scripts: generated audio and a best-of-N timer."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from mvssl_dist.library import write_library


def make_library(out: Path, minutes: float, formats: tuple[str, ...], seconds: float = 30.0) -> list[Path]:
    tracks = max(len(formats), int(minutes * 60 / seconds))
    return [t.path for t in write_library(out, tracks, seconds, formats, seed=11)]


def best_time(fn: Callable[[], object], repeats: int = 3) -> float:
    """Best wall time of ``repeats`` runs: the least noisy estimate on a shared machine."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best
