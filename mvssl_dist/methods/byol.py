"""BYOL: an online network + predictor regresses an EMA teacher's projections."""

from __future__ import annotations

import torch

from mvssl_dist.losses import byol_loss
from mvssl_dist.methods.base import SSLMethod
from mvssl_dist.methods.registry import register
from mvssl_dist.models import Head


@register("byol")
class BYOL(SSLMethod):
    release_format = "byol"
    head_widths = (1024, 1024, 2048)
    uses_teacher = True
    ema_buffers = True  # the reference EMA'd the teacher's whole state dict
    release_prefixes = {"student.": "student.module.", "teacher.": "teacher.", "predictor.": "projector."}

    def __init__(
        self, head_widths: tuple[int, ...] | None = None, predictor_widths: tuple[int, ...] = (256, 2048)
    ) -> None:
        super().__init__(head_widths)
        if predictor_widths[-1] != self.student.head.out_dim:
            raise ValueError("predictor_widths must end with the head's output width")
        self.predictor = Head(self.student.head.out_dim, predictor_widths)

    def compute_loss(self, views, projections, schedule, tracks=None):
        prediction = torch.stack([self.predictor(p) for p in projections])
        return byol_loss(prediction, self.teacher_projections(views))
