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
    return _placements(slack, spec, rng, 1)[0]


def _placements(slack: int, spec: ViewSpec, rng: np.random.Generator, draws: int) -> np.ndarray:
    """``[draws, n_views]`` time-ordered starts (see :func:`draw_starts`)."""
    offsets = np.sort(rng.integers(0, slack + 1, size=(draws, spec.n_views)), axis=1)
    return offsets + np.arange(spec.n_views) * (spec.segment_samples + spec.gap_samples)


def is_silent(segment: np.ndarray, track_rms: float, threshold: float = SILENCE_THRESHOLD) -> bool:
    """The reference's rule: ``10 * ln(rms_segment / rms_track) < threshold`` (natural log)."""
    seg = segment.astype(np.float32)
    rms = math.sqrt(float(np.dot(seg, seg)) / max(1, len(seg)))
    if rms <= 0 or track_rms <= 0:
        return True
    return 10 * math.log(rms / track_rms) < threshold


def _energy_function(pcm: np.ndarray, spec: ViewSpec, draws: int):
    """``starts [..] -> sum of squares of each segment``, exact (int64 prefix sums or float64 dots).

    When the draws will touch more samples than the track holds, one prefix sum over the
    track makes every segment O(1); otherwise each segment is summed on its own.
    """
    length = spec.segment_samples
    if draws * spec.n_views * length > len(pcm):
        prefix = np.concatenate(([0], np.cumsum(np.square(pcm, dtype=np.int64))))
        return lambda starts: prefix[starts + length] - prefix[starts]

    def direct(starts: np.ndarray) -> np.ndarray:  # float64 sums of int16 squares are exact below 2**53
        flat = [np.dot(x := pcm[s : s + length].astype(np.float64), x) for s in starts.ravel()]
        return np.array(flat).reshape(starts.shape)

    return direct


def draw_track_views(
    pcm: np.ndarray, track_rms: float, spec: ViewSpec, rng: np.random.Generator, draws: int = 1
) -> tuple[np.ndarray, str]:
    """``[rows, n_views]`` start samples of up to ``draws`` non-silent view sets (no audio copied).

    Vectorised over the draws. A silent draw (any segment failing :func:`is_silent`'s rule) is
    redrawn up to ``max_redraws`` times; if it stays silent the track stops there (``"silent"``,
    earlier rows kept). ``"too_short"``: no rows. The views of a row come back in a random
    order (not time order), so no view index is systematically earlier.
    """
    n = spec.n_views
    slack = len(pcm) - spec.min_track_samples()
    if slack < 0:
        return np.empty((0, n), np.int64), "too_short"
    # silent <=> rms < track_rms * exp(threshold / 10) <=> energy < L * (that rms)^2; every segment
    # of a track without level is silent (as in is_silent)
    level = track_rms * math.exp(spec.silence_threshold / 10)
    floor = spec.segment_samples * level**2 if track_rms > 0 else math.inf
    energy = _energy_function(pcm, spec, draws)
    starts = _placements(slack, spec, rng, draws)
    status = "ok"

    def silent(candidates: np.ndarray) -> np.ndarray:
        sums = energy(candidates)
        return ((sums < floor) | (sums <= 0)).any(axis=1)

    for row in np.flatnonzero(silent(starts)):
        for _ in range(spec.max_redraws):
            candidate = _placements(slack, spec, rng, 1)
            if not silent(candidate)[0]:
                starts[row] = candidate[0]
                break
        else:
            starts, status = starts[:row], "silent"
            break
    order = np.argsort(rng.random(starts.shape), axis=1)
    return np.take_along_axis(starts, order, axis=1), status


def draw_view_starts(
    pcm: np.ndarray, track_rms: float, spec: ViewSpec, rng: np.random.Generator
) -> tuple[np.ndarray | None, str]:
    """Start samples of one set of views (no copy of the audio), or ``(None, why)``."""
    starts, status = draw_track_views(pcm, track_rms, spec, rng, 1)
    return (starts[0], status) if len(starts) else (None, status)


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
