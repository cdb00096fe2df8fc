"""Cross-worker gathering that keeps gradients, and is a no-op in a single process.

Convention for every loss in this package: each rank returns the loss of the *whole*
gathered batch. The backward of the gather sums the ranks' gradients into each rank's
local inputs (``world_size`` x the whole-batch gradient), and DDP's gradient averaging
divides by ``world_size`` again: the parameters see exactly the whole-batch gradient.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def gather(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Concatenate ``x`` from every rank along ``dim`` (rank order), with gradients."""
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=dim)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=dim)
