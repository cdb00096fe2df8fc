"""mvssl-dist: catalogue-scale multi-view self-supervised pre-training for music audio."""

__version__ = "0.1.0"
