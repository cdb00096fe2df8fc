"""BatchNorm statistics measured on data, for a backbone whose weights stay as they are.

A freshly initialised backbone's BatchNorm buffers are placeholders (running mean 0, variance 1),
so in eval mode every BatchNorm layer is the identity and the network runs un-normalised. A
pre-trained backbone's buffers hold its training data's statistics. :func:`calibrate_batchnorm`
gives random weights the second kind of buffers (nothing else changes), which separates what
pre-training learned in the weights from what normalisation alone does to the features.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Reset every BatchNorm layer's running statistics and re-measure them on ``batches``.

    Each batch runs forward in train mode; the buffers become the plain average of the batch
    statistics (``momentum=None``), so the order of the batches does not matter. Parameters are
    not touched. Returns ``model`` in eval mode, each layer's momentum restored.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    model.train()
    try:
        for batch in batches:
            model(batch)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return model.eval()
