"""Embedding: the per-track core here; the Ray Data batch pipeline joins in its own issue."""

from mvssl_dist.embed.core import cut_segments, embed_segments, embed_track, peak_normalise

__all__ = ["cut_segments", "embed_segments", "embed_track", "peak_normalise"]
