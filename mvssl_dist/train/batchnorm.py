"""Batch normalisation over the whole global batch on CPU workers (SimCLR's "global BN").

With one BatchNorm batch per worker, the two views of a row are normalised with statistics of
the same few tracks, while half the negatives (the other workers' rows) are normalised with
statistics of other tracks. A contrastive network could tell positives from those negatives by
that batch signature instead of by the music (Chen et al., SimCLR, 2020, 2.2 "Global BN"). On GPUs
``torch.nn.SyncBatchNorm`` removes it (the reference trained that way); it refuses CPU tensors, so
``train.cpu_sync_batchnorm=true`` gives CPU workers :class:`CrossRankBatchNorm`: the same
statistics, through gloo. Off by default: about 220 small collectives a step took 2.0-2.3x the step
time on 2 cores (``benchmarks/batchnorm.py``) and did not improve the probe scores (README, Evaluating).
"""

from __future__ import annotations

import torch
from torch import nn

from mvssl_dist.losses.distributed import gather, world_size


class CrossRankBatchNorm(nn.modules.batchnorm._BatchNorm):
    """``BatchNorm1d``/``2d`` whose training statistics are those of the rows of every rank.

    Input ``[N, C]`` or ``[N, C, *]``. In eval mode, or in a single process, it is exactly the
    plain BatchNorm. Parameter and buffer names are BatchNorm's, so state dicts are unchanged.
    Every rank must call it the same number of times, in the same order (as DDP already needs).
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"CrossRankBatchNorm expects [N, C, ...] input, got {list(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        rows = x.numel() / x.shape[1]
        local_mean = x.mean(dims)
        local_m2 = (x - local_mean.view(shape)).pow(2).sum(dims)
        # One message per call: each rank's row count, mean and sum of squared deviations, combined
        # as Chan et al.'s parallel variance (what SyncBatchNorm does): no cancellation on large means.
        parts = gather(torch.cat([x.new_full((1,), rows), local_mean, local_m2])[None])  # [world, 1 + 2C]
        counts, means, m2s = parts[:, :1], parts[:, 1 : 1 + x.shape[1]], parts[:, 1 + x.shape[1] :]
        count = counts.sum().detach()
        mean = (counts * means).sum(0) / count
        var = (m2s.sum(0) + (counts * (means - mean).pow(2)).sum(0)) / count
        centred = x - mean.view(shape)
        self._update_running(mean.detach(), var.detach(), float(count))
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, count: float) -> None:
        if not self.track_running_stats:
            return
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * count / max(count - 1.0, 1.0)
        self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)


def convert_cross_rank_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm1d``/``2d`` in ``module`` by :class:`CrossRankBatchNorm`, sharing its
    parameters and buffers (an optimizer built before the call keeps working)."""
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        new = CrossRankBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        for name, param in module.named_parameters(recurse=False):
            setattr(new, name, param)
        for name, buffer in module.named_buffers(recurse=False):
            new.register_buffer(name, buffer)
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_cross_rank_batchnorm(child))
    return module
