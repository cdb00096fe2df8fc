"""On-the-fly multi-view generation from ingested shards (Ray Data, CPU workers)."""

from mvssl_dist.views.dataset import collate_views, iter_view_batches, to_float, view_stats, views_dataset
from mvssl_dist.views.sampling import ViewSpec, draw_starts, draw_track_views, draw_views, is_silent

__all__ = [
    "collate_views",
    "iter_view_batches",
    "ViewSpec",
    "draw_starts",
    "draw_track_views",
    "draw_views",
    "is_silent",
    "to_float",
    "view_stats",
    "views_dataset",
]
