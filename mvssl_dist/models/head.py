"""Projection heads: ``[batch, in_dim]`` -> ``[batch, widths[-1]]``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Head(nn.Module):
    """Linear (no bias) + BatchNorm1d + ReLU per hidden width, then a final Linear (no bias).

    ``Head(1024, [1024, 1024, 2048])`` has the release's key layout ``ops.0``, ``ops.1``,
    ``ops.3``, ``ops.4``, ``ops.6``.
    """

    def __init__(self, in_dim: int, widths: Sequence[int]) -> None:
        super().__init__()
        if not widths:
            raise ValueError("Head needs at least one output width")
        ops: list[nn.Module] = []
        prev = in_dim
        for width in widths[:-1]:
            ops += [nn.Linear(prev, width, bias=False), nn.BatchNorm1d(width), nn.ReLU()]
            prev = width
        ops.append(nn.Linear(prev, widths[-1], bias=False))
        self.ops = nn.Sequential(*ops)
        self.in_dim = in_dim
        self.out_dim = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops(x)
