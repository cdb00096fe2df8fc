"""DINO-style clustering loss: centred, sharpened teacher targets; cross-entropy to the student."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mvssl_dist.losses.distributed import gather, gather_no_grad
from mvssl_dist.losses.pairs import view_pairs

LOG_FLOOR = -100.0


def clustering_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    center: torch.Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy between teacher and student distributions over view pairs ``i != j``.

    Args:
        student: ``[views, batch, K]`` student logits.
        teacher: ``[views, batch, K]`` teacher logits (detached here).
        center: ``[1, K]`` running centre of the teacher logits.
        student_temp / teacher_temp: sharpening temperatures.

    ``p_t = softmax((teacher - center) / teacher_temp)``, ``log p_s = log softmax(student /
    student_temp)`` clamped at -100 as in the reference; loss = mean over pairs and the
    gathered batch of ``sum_k -p_t log p_s``.
    """
    log_s = F.log_softmax(gather(student.float(), dim=1) / student_temp, dim=-1).clamp(min=LOG_FLOOR)
    p_t = F.softmax((gather_no_grad(teacher.detach().float(), dim=1) - center.float()) / teacher_temp, dim=-1)
    cross = -torch.einsum("ibk,jbk->ijb", p_t, log_s)  # [V_teacher, V_student, N]
    loss = torch.stack([cross[i, j] for i, j in view_pairs(cross.shape[0])]).mean()
    return loss, {"clustering": loss.detach()}


@torch.no_grad()
def updated_center(center: torch.Tensor, teacher: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """EMA of the gathered batch mean of teacher logits: ``c * m + mean * (1 - m)``.

    Args:
        center: ``[1, K]``; teacher: ``[views, batch, K]``.
    """
    batch_mean = gather_no_grad(teacher.detach().float(), dim=1).reshape(-1, teacher.shape[-1]).mean(0, keepdim=True)
    return center * momentum + batch_mean * (1 - momentum)
