"""Barlow Twins (the reference's ``DiagonalLoss``): cross-correlation towards the identity."""

from __future__ import annotations

import torch

from mvssl_dist.losses.distributed import gather

BN_EPS = 1e-5  # BatchNorm1d's default


def batch_standardise(x: torch.Tensor) -> torch.Tensor:
    """``BatchNorm1d(affine=False)`` in training mode: ``[N, D]`` standardised per feature."""
    mean = x.mean(dim=0, keepdim=True)
    var = x.var(dim=0, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + BN_EPS)


def correlation_terms(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[D, D]`` matrix -> (mean of ``(1 - c_ii)^2``, mean of off-diagonal ``c_ij^2``).

    Computed without boolean masks (a masked select of D^2 entries costs more than the
    matrix product itself at D = 2048).
    """
    dim = c.shape[0]
    diagonal = torch.diagonal(c)
    on = (1 - diagonal).pow(2).mean()
    off = (c.pow(2).sum() - diagonal.pow(2).sum()) / (dim * (dim - 1))
    return on, off


def barlow_twins_loss(z: torch.Tensor, off_coef: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Barlow Twins over every unordered view pair ``i < j``.

    Args:
        z: ``[views, batch, features]``; gathered along ``batch``, N = gathered size.
        off_coef: weight of the off-diagonal term (1.0 in the reference).

    ``c = bn(z_i).T @ bn(z_j) / (N - 1)``; loss = mean over pairs and diagonal entries of
    ``(1 - c_ii)^2`` + off_coef x mean over pairs and off-diagonal entries of ``c_ij^2``
    (means, not sums, exactly as the reference code reduced them). Note that biased
    standardisation divided by ``N - 1`` puts ``c_ii`` at ``N / (N - 1)`` for identical
    views, as in the reference; the loss is zero exactly when ``c`` is the identity.
    """
    z = gather(z.float(), dim=1)
    views, n, _ = z.shape
    normed = [batch_standardise(v) for v in z]
    pairs = [correlation_terms(normed[i].T @ normed[j] / (n - 1)) for i in range(views) for j in range(i + 1, views)]
    # every pair has as many entries, so the mean over all entries is the mean of pair means
    on = torch.stack([p[0] for p in pairs]).mean()
    off = torch.stack([p[1] for p in pairs]).mean()
    loss = on + off_coef * off
    return loss, {"on_diag": on.detach(), "off_diag": (off_coef * off).detach()}
