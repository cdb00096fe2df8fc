"""Per-step schedules, pure functions of the step: learning rate, weight decay, EMA momentum, temperatures.

Shapes follow the reference's schedulers: a cosine from ``start`` to ``end`` over ``n``
steps is ``end + (start - end) * (1 + cos(pi * i / n)) / 2`` for ``i`` in ``[0, n)``, and
holds ``end`` afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def cosine(step: int, total: int, start: float, end: float) -> float:
    if total <= 0 or step >= total:
        return end
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * step / total))


def linear(step: int, total: int, start: float, end: float) -> float:
    """``numpy.linspace(start, end, total)[step]``; ``end`` afterwards."""
    if step >= total - 1:
        return end
    return start + (end - start) * step / (total - 1)


@dataclass(frozen=True)
class Schedules:
    """Everything that changes with the global step. ``total_steps`` = epochs x steps per epoch."""

    total_steps: int
    steps_per_epoch: int
    lr: float = 1e-3
    min_lr: float = 1e-7
    warmup_steps: int = 0
    warmup_init_lr: float = 1e-7
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    ema_momentum: float = 0.996
    ema_momentum_end: float = 1.0
    teacher_temp_init: float = 0.02
    teacher_temp: float = 0.04
    teacher_temp_warmup_epochs: int = 10
    student_temp: float = 0.1

    def learning_rate(self, step: int) -> float:
        """Linear warm-up from ``warmup_init_lr`` to ``lr``, then cosine to ``min_lr``."""
        if step < self.warmup_steps:
            return linear(step, self.warmup_steps, self.warmup_init_lr, self.lr)
        return cosine(step - self.warmup_steps, self.total_steps - self.warmup_steps, self.lr, self.min_lr)

    def weight_decay_at(self, step: int) -> float:
        return cosine(step, self.total_steps, self.weight_decay, self.weight_decay_end)

    def momentum(self, step: int) -> float:
        """EMA momentum of the teacher: cosine ``ema_momentum`` -> ``ema_momentum_end``, per step,
        over the whole run, as the reference's docstring says ("increased to 1 during training").
        Its function's default cosine spans 999 epochs, unclipped by the run's length (its other
        schedules are clipped); its gin configs were not released, so the stated intent is kept."""
        return cosine(step, self.total_steps, self.ema_momentum, self.ema_momentum_end)

    def teacher_temperature(self, step: int) -> float:
        """Per epoch, as the reference: cosine warm-up 0.02 -> 0.04 over 10 epochs, then flat."""
        epoch = step // max(1, self.steps_per_epoch)
        return cosine(epoch, self.teacher_temp_warmup_epochs, self.teacher_temp_init, self.teacher_temp)

    def at(self, step: int) -> dict[str, float]:
        return {
            "lr": self.learning_rate(step),
            "weight_decay": self.weight_decay_at(step),
            "ema_momentum": self.momentum(step),
            "teacher_temp": self.teacher_temperature(step),
            "student_temp": self.student_temp,
        }
