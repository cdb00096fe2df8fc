"""Barlow Twins: decorrelate features while aligning views (the reference's "barlow_twins")."""

from __future__ import annotations

from mvssl_dist.losses import barlow_twins_loss
from mvssl_dist.methods.base import SSLMethod
from mvssl_dist.methods.registry import register


@register("barlow_twins", aliases=("barlow", "barlowtwins"))
class BarlowTwins(SSLMethod):
    release_format = "barlow_twins"
    head_widths = (1024, 1024, 2048)
    option_bounds = {"off_coef": ((">=", 0),)}  # checked by check_options

    def __init__(self, off_coef: float = 1.0, head_widths: tuple[int, ...] | None = None) -> None:
        super().__init__(head_widths)
        self.off_coef = off_coef

    def compute_loss(self, views, projections, schedule, tracks=None):
        return barlow_twins_loss(projections, self.off_coef)
