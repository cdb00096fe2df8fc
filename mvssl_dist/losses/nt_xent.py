"""Contrastive NT-Xent over any number of views (SimCLR-style, the reference's ``NT_Xent``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mvssl_dist.losses.distributed import gather

LOG_FLOOR = -100.0  # the reference clamps log(ratio) at -100


def nt_xent(z: torch.Tensor, temperature: float = 0.1) -> tuple[torch.Tensor, dict[str, float]]:
    """NT-Xent with cosine similarity.

    Args:
        z: ``[views, batch, features]`` projections; gathered across workers along ``batch``.
        temperature: softmax temperature (0.1 in the reference).

    For every embedding (anchor) and every other view of the same track (positive):
    ``-log(exp(s_pos) / sum_{j != anchor} exp(s_j))`` with ``s = cos / temperature``; the
    denominator runs over every other embedding of the gathered batch (the reference's
    "negatives" mask excludes only the anchor itself). Computed as ``s_pos - logsumexp``,
    which equals the reference's max-subtracted ratio, with the same ``log >= -100`` clamp.
    Returns the mean over ``views * N * (views - 1)`` (anchor, positive) pairs, ``N`` the
    gathered batch. With 2 views this is exactly the reference's value.
    """
    z = gather(z.float(), dim=1)
    views, batch, _ = z.shape
    flat = F.normalize(z.reshape(views * batch, -1), dim=-1)
    sim = flat @ flat.T / temperature  # [VN, VN]
    self_mask = torch.eye(views * batch, dtype=torch.bool, device=z.device)
    log_denominator = torch.logsumexp(sim.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)
    track = torch.arange(views * batch, device=z.device) % batch
    positive = (track[:, None] == track[None, :]) & ~self_mask
    log_ratio = (sim - log_denominator).clamp(min=LOG_FLOOR)
    loss = -log_ratio[positive].mean()
    return loss, {"nt_xent": loss.item()}
