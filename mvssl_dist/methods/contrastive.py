"""Contrastive (SimCLR-style NT-Xent) on the projections of one network."""

from __future__ import annotations

from mvssl_dist.losses import nt_xent
from mvssl_dist.methods.base import SSLMethod
from mvssl_dist.methods.registry import register


@register("contrastive", aliases=("simclr", "nt_xent"))
class Contrastive(SSLMethod):
    release_format = "contrastive"
    head_widths = (1024, 1024, 2048)
    option_bounds = {"temperature": ((">", 0),)}  # checked by check_options

    def __init__(self, temperature: float = 0.1, head_widths: tuple[int, ...] | None = None) -> None:
        super().__init__(head_widths)
        self.temperature = temperature

    def compute_loss(self, views, projections, schedule, tracks=None):
        return nt_xent(projections, self.temperature, tracks)
