"""Clustering (DINO-style): the student matches a centred, sharpened EMA teacher over K prototypes."""

from __future__ import annotations

import torch

from mvssl_dist.losses import clustering_loss, updated_center
from mvssl_dist.methods.base import SSLMethod
from mvssl_dist.methods.registry import register


@register("clustering", aliases=("dino",))
class Clustering(SSLMethod):
    release_format = "clustering"
    head_widths = (1024, 1024, 256, 4096)
    uses_teacher = True
    release_prefixes = {"student.": "student.module.", "teacher.": "teacher."}
    option_bounds = {"center_momentum": ((">=", 0), ("<=", 1))}  # checked by check_options

    def __init__(self, center_momentum: float = 0.9, head_widths: tuple[int, ...] | None = None) -> None:
        super().__init__(head_widths)
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, self.student.head.out_dim))

    def compute_loss(self, views, projections, schedule, tracks=None):
        teacher = self.teacher_projections(views)
        loss, metrics = clustering_loss(
            projections, teacher, self.center, schedule["student_temp"], schedule["teacher_temp"]
        )
        if self.training:  # the centre moves with training steps only, after the loss used the old one
            self.center.copy_(updated_center(self.center, teacher, self.center_momentum))
        metrics["teacher_temp"] = float(schedule["teacher_temp"])
        return loss, metrics
