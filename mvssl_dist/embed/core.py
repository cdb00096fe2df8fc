"""Whole-track embedding as the reference's usage example does it, shared by every embed path.

Track (float32 mono 16 kHz) -> peak-normalised -> zero-padded to a multiple of the segment
length -> non-overlapping segments -> backbone -> segment embeddings; track = their mean.
"""

from __future__ import annotations

import numpy as np
import torch

from mvssl_dist.embed.segments import cut_segments, peak_normalise
from mvssl_dist.models.backbone import Backbone


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
