"""The reference usage example's cutting of a track into segments, in numpy only.

Kept free of torch so that the decode tasks of ``mvssl embed`` start without loading it.
"""

from __future__ import annotations

import numpy as np

from mvssl_dist.constants import SEGMENT_SAMPLES


def peak_magnitude(audio: np.ndarray) -> float:
    """The largest ``|sample|`` (0 for no samples), without an ``|audio|`` temporary."""
    return float(max(audio.max(), -audio.min())) if audio.size else 0.0


def peak_normalise(audio: np.ndarray, in_place: bool = False) -> np.ndarray:
    """``audio`` over its peak magnitude (silence as it is); ``in_place`` divides ``audio`` itself,
    for a caller that holds the only copy of a long track."""
    peak = peak_magnitude(audio)
    if not peak > 0:  # silence; or NaN samples (a float WAV can hold them), left as they were
        return audio
    return np.divide(audio, peak, out=audio if in_place else None)


def cut_segments(
    audio: np.ndarray, segment_samples: int = SEGMENT_SAMPLES, hop_samples: int | None = None
) -> np.ndarray:
    """``[samples]`` -> ``[n, segment_samples]``: zero-padded so the last segment is whole.

    With the default hop (= segment length) this is ceil(samples / segment) segments.
    """
    hop = hop_samples or segment_samples
    count = max(1, int(np.ceil(max(len(audio) - segment_samples, 0) / hop)) + 1)
    needed = (count - 1) * hop + segment_samples
    padded = np.zeros(needed, np.float32)
    padded[: len(audio)] = audio
    if hop == segment_samples:  # back to back: the padded track is the segments' rows already
        return padded.reshape(count, segment_samples)
    starts = np.arange(count) * hop
    return np.stack([padded[s : s + segment_samples] for s in starts])
