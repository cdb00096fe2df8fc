"""BYOL regression loss between online predictions and (stop-gradient) teacher projections."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mvssl_dist.losses.distributed import gather
from mvssl_dist.losses.pairs import view_pairs


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean over ordered view pairs ``i != j`` and tracks of ``2 - 2 cos(prediction_i, target_j)``.

    Args:
        prediction: ``[views, batch, features]`` online predictor outputs.
        target: ``[views, batch, features]`` teacher projections (detached here).

    Per-track terms are gathered across workers before the mean. (The reference's code
    summed the normalised product over the batch axis, ``dim=-0``; we follow the BYOL
    definition, the cosine per track, as the method's description states.)
    """
    p = F.normalize(prediction.float(), dim=-1)
    t = F.normalize(target.detach().float(), dim=-1)
    cos = torch.einsum("ibd,jbd->ijb", p, t)  # [V, V, B]
    per_pair = 2 - 2 * torch.stack([cos[i, j] for i, j in view_pairs(cos.shape[0])])  # [V*(V-1), B]
    loss = gather(per_pair, dim=1).mean()
    return loss, {"byol": loss.detach()}
