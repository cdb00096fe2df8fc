"""Drawing views: where the segments of one track go, and the reference's silence rule.

Pure numpy, so it runs the same in a Ray task, a test, or a benchmark loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SILENCE_THRESHOLD = -7.5  # 10 * ln(rms_segment / rms_track) below this: silent (the reference's rule)


@dataclass(frozen=True)
class ViewSpec:
    n_views: int = 2
    segment_samples: int = 64000
    gap_samples: int = 64000  # audio between the end of one segment and the start of the next
    max_redraws: int = 10
    silence_threshold: float = SILENCE_THRESHOLD

    def __post_init__(self) -> None:
        if self.n_views < 1 or self.segment_samples < 1 or self.gap_samples < 0 or self.max_redraws < 0:
            raise ValueError(f"invalid view spec: {self}")

    def min_track_samples(self) -> int:
        return self.n_views * self.segment_samples + (self.n_views - 1) * self.gap_samples


def draw_starts(length: int, spec: ViewSpec, rng: np.random.Generator) -> np.ndarray | None:
    """Start samples of ``n_views`` segments, in time order, uniform over all valid placements.

    Valid: each segment inside the track and at least ``gap_samples`` between consecutive
    segments. The free slack is shared out by sorted uniform draws (uniform over the simplex
    of placements). ``None`` when the track is too short.
    """
    slack = length - spec.min_track_samples()
    if slack < 0:
        return None
    offsets = np.sort(rng.integers(0, slack + 1, size=spec.n_views))
    return offsets + np.arange(spec.n_views) * (spec.segment_samples + spec.gap_samples)


def is_silent(segment: np.ndarray, track_rms: float, threshold: float = SILENCE_THRESHOLD) -> bool:
    """The reference's rule: ``10 * ln(rms_segment / rms_track) < threshold`` (natural log)."""
    seg = segment.astype(np.float32)
    rms = math.sqrt(float(np.dot(seg, seg)) / max(1, len(seg)))
    if rms <= 0 or track_rms <= 0:
        return True
    return 10 * math.log(rms / track_rms) < threshold


def draw_view_starts(
    pcm: np.ndarray, track_rms: float, spec: ViewSpec, rng: np.random.Generator
) -> tuple[np.ndarray | None, str]:
    """Start samples of the views (no copy of the audio), or ``(None, why)``.

    Redraws up to ``max_redraws`` times when a segment is silent. The starts come back in a
    random order (not time order), so no view index is systematically earlier.
    """
    for _ in range(spec.max_redraws + 1):
        starts = draw_starts(len(pcm), spec, rng)
        if starts is None:
            return None, "too_short"
        if not any(is_silent(pcm[s : s + spec.segment_samples], track_rms, spec.silence_threshold) for s in starts):
            return starts[rng.permutation(spec.n_views)], "ok"
    return None, "silent"


def draw_views(
    pcm: np.ndarray, track_rms: float, spec: ViewSpec, rng: np.random.Generator
) -> tuple[np.ndarray | None, str]:
    """``[n_views, segment_samples]`` copies of the drawn slices of ``pcm``, or ``(None, why)``."""
    starts, status = draw_view_starts(pcm, track_rms, spec, rng)
    if starts is None:
        return None, status
    return np.stack([pcm[s : s + spec.segment_samples] for s in starts]), status


def track_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """An independent, reproducible generator per (seed, epoch, track): the track's draws use
    it in sequence, so they never depend on which worker reads the track, or when."""
    return np.random.default_rng([seed, epoch, int(key[:15], 16)])
