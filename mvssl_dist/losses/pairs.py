"""Ordered view pairs, as Python indices: static for torch.compile, unlike a boolean mask."""

from __future__ import annotations


def view_pairs(views: int) -> tuple[tuple[int, int], ...]:
    """Every ordered pair ``(i, j)``, ``i != j``, in row-major order (as ``x[~eye(views)]`` lists them)."""
    return tuple((i, j) for i in range(views) for j in range(views) if i != j)
