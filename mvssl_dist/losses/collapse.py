"""Collapse signals of a batch of embeddings, as 0-dim tensors (no GPU sync until read).

The training loop computes them on logged steps only: the rank needs a singular value
decomposition of the ``[views * batch, 1024]`` embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the per-dimension std of L2-normalised ``[N, D]`` embeddings.

    About ``1/sqrt(D)`` for well-spread embeddings; tends to 0 under collapse.
    """
    return F.normalize(z.float(), dim=-1).std(dim=0).mean()


@torch.no_grad()
def effective_rank(z: torch.Tensor) -> torch.Tensor:
    """``exp(entropy)`` of the normalised singular values of the ``[N, D]`` matrix (RankMe).

    Not centred, so a batch collapsed onto one vector (plus noise) scores about 1; up to
    ``min(N, D)`` for well-spread embeddings (Roy & Vetterli, 2007; Garrido et al., 2023).
    """
    s = torch.linalg.svdvals(z.float())
    p = s / s.sum().clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return torch.exp(entropy)
