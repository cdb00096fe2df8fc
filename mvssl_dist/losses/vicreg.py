"""VICReg (the reference's ``FeatureStatsLoss``): invariance, variance and covariance terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mvssl_dist.losses.barlow_twins import batch_standardise, correlation_terms
from mvssl_dist.losses.distributed import gather

STD_EPS = 1e-5


def vicreg_loss(
    z: torch.Tensor,
    inv_coeff: float = 1.0,
    var_coeff: float = 1.0,
    cov_coeff: float = 1.0,
    gamma: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """VICReg over every unordered view pair ``i < j``, on the gathered batch.

    Args:
        z: ``[views, batch, features]``.

    - invariance: mean of ``(z_i - z_j)^2``;
    - variance: mean of ``relu(gamma - sqrt(var(z) + 1e-5))`` per feature (unbiased var),
      for both views of each pair;
    - covariance: mean of the squared off-diagonal entries of ``bn(z).T @ bn(z) / (N - 1)``
      (the reference standardises before the product and averages over the D(D-1) entries).
    Each term is scaled by its coefficient (1, 1, 1 by default) and the three are summed.
    """
    z = gather(z.float(), dim=1)
    views, n, _ = z.shape
    inv, var, cov = [], [], []
    for i in range(views):
        for j in range(i + 1, views):
            inv.append((z[i] - z[j]).pow(2).mean())
            for x in (z[i], z[j]):
                var.append(F.relu(gamma - torch.sqrt(x.var(dim=0) + STD_EPS)).mean())
                normed = batch_standardise(x)
                cov.append(correlation_terms(normed.T @ normed / (n - 1))[1])
    # equal-sized terms: the mean of per-pair means is the reference's mean over all entries
    inv_loss = torch.stack(inv).mean() * inv_coeff
    var_loss = torch.stack(var).mean() * var_coeff
    cov_loss = torch.stack(cov).mean() * cov_coeff
    loss = inv_loss + var_loss + cov_loss
    return loss, {"inv": inv_loss.detach(), "var": var_loss.detach(), "cov": cov_loss.detach()}
