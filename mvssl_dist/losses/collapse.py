"""Collapse signals, cheap enough to compute every step."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def embedding_std(z: torch.Tensor) -> float:
    """Mean over dimensions of the per-dimension std of L2-normalised ``[N, D]`` embeddings.

    About ``1/sqrt(D)`` for well-spread embeddings; tends to 0 under collapse.
    """
    return F.normalize(z.float(), dim=-1).std(dim=0).mean().item()


@torch.no_grad()
def effective_rank(z: torch.Tensor) -> float:
    """``exp(entropy)`` of the normalised singular values of the ``[N, D]`` matrix (RankMe).

    Not centred, so a batch collapsed onto one vector (plus noise) scores about 1; up to
    ``min(N, D)`` for well-spread embeddings (Roy & Vetterli, 2007; Garrido et al., 2023).
    """
    s = torch.linalg.svdvals(z.float())
    p = s / s.sum().clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return float(torch.exp(entropy))
