"""Contrastive NT-Xent over any number of views (SimCLR-style, the reference's ``NT_Xent``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mvssl_dist.losses.distributed import gather, gather_no_grad

LOG_FLOOR = -100.0  # the reference clamps log(ratio) at -100


def nt_xent(
    z: torch.Tensor, temperature: float = 0.1, tracks: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """NT-Xent with cosine similarity.

    Args:
        z: ``[views, batch, features]`` projections; gathered across workers along ``batch``.
        temperature: softmax temperature (0.1 in the reference).
        tracks: optional ``[batch]`` int64 track ids, gathered like ``z``. Rows of the same
            track are not negatives of each other: they are left out of each other's
            denominators (they are not positives either). ``None``: every row is its own track.

    For every embedding (anchor) and every other view of the same row (positive):
    ``-log(exp(s_pos) / sum_{j != anchor} exp(s_j))`` with ``s = cos / temperature``; the
    denominator runs over every other embedding of the gathered batch (the reference's
    "negatives" mask excludes only the anchor itself), less other rows of the anchor's track.
    Computed as ``s_pos - logsumexp``, which equals the reference's max-subtracted ratio, with
    the same ``log >= -100`` clamp. Returns the mean over ``views * N * (views - 1)`` (anchor,
    positive) pairs, ``N`` the gathered batch. With 2 views and distinct tracks (the
    reference's setting: a catalogue far larger than a batch) this is exactly the reference's
    value. A small library puts several rows of one track in a batch; as negatives they would
    teach the model to tell apart two parts of the same track.
    """
    z = gather(z.float(), dim=1)
    views, batch, _ = z.shape
    flat = F.normalize(z.reshape(views * batch, -1), dim=-1)
    sim = flat @ flat.T / temperature  # [VN, VN]
    self_mask = torch.eye(views * batch, dtype=torch.bool, device=z.device)
    row = torch.arange(views * batch, device=z.device) % batch
    positive = (row[:, None] == row[None, :]) & ~self_mask
    left_out = self_mask
    if tracks is not None:
        track = gather_no_grad(tracks.to(z.device), dim=0)[row]
        left_out = self_mask | ((track[:, None] == track[None, :]) & (row[:, None] != row[None, :]))
    log_denominator = torch.logsumexp(sim.masked_fill(left_out, float("-inf")), dim=1, keepdim=True)
    log_ratio = (sim - log_denominator).clamp(min=LOG_FLOOR)
    # the mean over the positives, without boolean indexing (data-dependent shapes break torch.compile)
    loss = -log_ratio.masked_fill(~positive, 0.0).sum() / (views * batch * (views - 1))
    return loss, {"nt_xent": loss.detach()}
