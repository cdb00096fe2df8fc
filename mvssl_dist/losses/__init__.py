"""Pure loss functions for the five multi-view SSL methods. Views arrive as ``[views, batch, features]``.

Each loss gathers across workers itself (gradient-preserving) and is a plain function of
tensors in a single process, so each runs in a unit test and in a 2-process gloo test alike.
Each returns ``(loss, metrics)``; the metrics are detached 0-dim tensors, so a training step
never waits for the GPU to read them: the caller converts them when it logs.
"""

from mvssl_dist.losses.barlow_twins import barlow_twins_loss
from mvssl_dist.losses.byol import byol_loss
from mvssl_dist.losses.clustering import clustering_loss, updated_center
from mvssl_dist.losses.collapse import effective_rank, embedding_std
from mvssl_dist.losses.nt_xent import nt_xent
from mvssl_dist.losses.vicreg import vicreg_loss

__all__ = [
    "barlow_twins_loss",
    "byol_loss",
    "clustering_loss",
    "effective_rank",
    "embedding_std",
    "nt_xent",
    "updated_center",
    "vicreg_loss",
]
