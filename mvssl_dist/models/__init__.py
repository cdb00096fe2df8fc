"""Model library: the reference-compatible backbone, projection heads and weight loading."""

from mvssl_dist.models.backbone import EMBEDDING_DIM, SAMPLE_RATE, SEGMENT_SAMPLES, Backbone
from mvssl_dist.models.calibration import calibrate_batchnorm
from mvssl_dist.models.head import Head
from mvssl_dist.models.loading import WeightsError, absolute_source, load_backbone, names_random, save_backbone

__all__ = [
    "EMBEDDING_DIM",
    "SAMPLE_RATE",
    "SEGMENT_SAMPLES",
    "Backbone",
    "Head",
    "WeightsError",
    "absolute_source",
    "calibrate_batchnorm",
    "load_backbone",
    "names_random",
    "save_backbone",
]
