"""Baseline backbones for the probes: random weights, normalised on the audio they will score.

``random:SEED`` runs un-normalised: a fresh backbone's BatchNorm buffers are identity placeholders
(see :mod:`mvssl_dist.models.calibration`), while a pre-trained backbone is normalised by its
training data's statistics. :func:`normalised_random` keeps the random weights and measures the
buffers on a set of audio files, so that "pre-trained vs random" compares weights alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def file_segments(paths: Sequence[str | Path]) -> list[np.ndarray]:
    """Each file as ``[n, samples]`` segments, cut as the embedding pipeline cuts them
    (decoded to 16 kHz mono, peak-normalised, 4 s, the last one padded)."""
    from mvssl_dist.audio.decode import decode
    from mvssl_dist.embed.segments import cut_segments, peak_normalise

    return [cut_segments(peak_normalise(decode(path))) for path in paths]


def normalised_random(paths: Sequence[str | Path], out: str | Path, seed: int = 0, batch_size: int = 64) -> Path:
    """``random:SEED``'s weights with BatchNorm statistics measured on ``paths``' segments (in a
    fixed shuffled order, batches of ``batch_size``), saved to ``out`` as a backbone weights file
    that ``--model`` accepts. Reused when ``out`` exists."""
    import torch

    from mvssl_dist.models import calibrate_batchnorm, load_backbone, save_backbone

    out = Path(out)
    if out.is_file():
        return out
    segments = np.concatenate(file_segments(paths))
    order = np.random.default_rng(0).permutation(len(segments))
    batches = (torch.from_numpy(segments[order[i : i + batch_size]]) for i in range(0, len(order), batch_size))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_backbone(calibrate_batchnorm(load_backbone(f"random:{seed}"), batches), out)
    return out
