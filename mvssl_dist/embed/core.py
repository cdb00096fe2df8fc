"""Whole-track embedding as the reference's usage example does it, shared by every embed path.

Track (float32 mono 16 kHz) -> peak-normalised -> zero-padded to a multiple of the segment
length -> non-overlapping segments -> backbone -> segment embeddings; track = their mean.
"""

from __future__ import annotations

import numpy as np
import torch

from mvssl_dist.models.backbone import SEGMENT_SAMPLES, Backbone


def peak_normalise(audio: np.ndarray) -> np.ndarray:
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    return audio / peak if peak > 0 else audio


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
    starts = np.arange(count) * hop
    return np.stack([padded[s : s + segment_samples] for s in starts])


@torch.inference_mode()
def embed_segments(model: Backbone, segments: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """``[n, samples]`` float32 -> ``[n, 1024]`` float32 embeddings (model in eval mode)."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(segments), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(segments[start : start + batch_size])).to(device)
        out.append(model(batch).float().cpu().numpy())
    return np.concatenate(out)


def embed_track(model: Backbone, audio: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(track_embedding [1024], segment_embeddings [n, 1024])``."""
    segments = cut_segments(peak_normalise(audio))
    per_segment = embed_segments(model, segments, batch_size)
    return per_segment.mean(axis=0), per_segment
