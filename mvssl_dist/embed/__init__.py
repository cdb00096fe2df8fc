"""Embedding: the per-track core (``core``, ``segments``) and the Ray Data batch pipeline (``batch``).

Names are loaded on first use, so that importing ``mvssl_dist.embed.batch`` in a decode worker
does not load torch through this package.
"""

from importlib import import_module

_HOMES = {
    "cut_segments": "mvssl_dist.embed.segments",
    "peak_normalise": "mvssl_dist.embed.segments",
    "embed_segments": "mvssl_dist.embed.core",
    "embed_track": "mvssl_dist.embed.core",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'mvssl_dist.embed' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
