"""Batched waveform augmentations, each a torch function of ``[batch, samples]`` float audio.

They run wherever the tensors are: on the CPU view workers (``views_dataset(augment=...)``)
or on the training device inside the step (:func:`apply_chain` on the batch). Every one is
the identity at zero strength. Per-example random parameters come from a ``torch.Generator``.

Config (YAML / dict), per view or for all views::

    augment:
      - {name: gain, max_db: 6}
      - {name: polarity, p: 0.5}
      - {name: noise, min_snr_db: 10, max_snr_db: 30, p: 0.5}
      - {name: filter, p: 0.5}           # random low-pass or high-pass
      - {name: mix, min_db: -20, max_db: -10, p: 0.3}
      - {name: speed, max_change: 0.05, p: 0.3}
      - {name: mask, max_time_frac: 0.1, max_freq_frac: 0.1, p: 0.5}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from mvssl_dist.constants import SAMPLE_RATE


def _uniform(batch: int, low: float, high: float, gen: torch.Generator | None, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(batch, generator=gen, device=device)


def _chosen(batch: int, p: float, gen: torch.Generator | None, device) -> torch.Tensor:
    return torch.rand(batch, generator=gen, device=device) < p


def gain(x: torch.Tensor, gen=None, max_db: float = 6.0, min_db: float | None = None, p: float = 1.0) -> torch.Tensor:
    """Multiply each example by a gain drawn uniformly in ``[min_db, max_db]`` dB."""
    low = -max_db if min_db is None else min_db
    db = _uniform(len(x), low, max_db, gen, x.device) * _chosen(len(x), p, gen, x.device)
    return x * (10 ** (db / 20))[:, None]


def polarity(x: torch.Tensor, gen=None, p: float = 0.5) -> torch.Tensor:
    """Invert the sign of each example with probability ``p``."""
    flip = _chosen(len(x), p, gen, x.device)
    return torch.where(flip[:, None], -x, x)


def noise(
    x: torch.Tensor, gen=None, min_snr_db: float = 10.0, max_snr_db: float = 30.0, p: float = 1.0
) -> torch.Tensor:
    """Add white noise at a signal-to-noise ratio drawn in ``[min_snr_db, max_snr_db]``."""
    snr = _uniform(len(x), min_snr_db, max_snr_db, gen, x.device)
    signal_power = x.pow(2).mean(dim=1).clamp_min(1e-12)
    noise_power = signal_power / (10 ** (snr / 10))
    white = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    scale = noise_power.sqrt() * _chosen(len(x), p, gen, x.device)
    return x + white * scale[:, None]


def _spectral_gain(x: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    spectrum = torch.fft.rfft(x, dim=1)
    return torch.fft.irfft(spectrum * gains, n=x.shape[1], dim=1)


def filter_(
    x: torch.Tensor,
    gen=None,
    min_cutoff_hz: float = 300.0,
    max_cutoff_hz: float = 4000.0,
    p: float = 1.0,
    kind: str = "random",
    order: int = 4,
) -> torch.Tensor:
    """Low-pass or high-pass (Butterworth magnitude of ``order``) at a per-example cut-off.

    ``kind``: ``"low"``, ``"high"`` or ``"random"`` (each example picks one).
    """
    batch, n = x.shape
    freqs = torch.fft.rfftfreq(n, d=1 / SAMPLE_RATE).to(x.device)
    log_cut = _uniform(batch, math.log(min_cutoff_hz), math.log(max_cutoff_hz), gen, x.device)
    ratio = (freqs[None, :] / log_cut.exp()[:, None]).clamp_min(1e-6)
    lowpass = 1 / torch.sqrt(1 + ratio ** (2 * order))
    highpass = 1 / torch.sqrt(1 + ratio ** (-2 * order))
    high = {
        "low": torch.zeros(batch, dtype=torch.bool, device=x.device),
        "high": torch.ones(batch, dtype=torch.bool, device=x.device),
    }.get(kind)
    if high is None:
        high = _chosen(batch, 0.5, gen, x.device)
    gains = torch.where(high[:, None], highpass, lowpass)
    gains = torch.where(_chosen(batch, p, gen, x.device)[:, None], gains, torch.ones_like(gains))
    return _spectral_gain(x, gains.to(x.dtype))


def mix(x: torch.Tensor, gen=None, min_db: float = -20.0, max_db: float = -10.0, p: float = 1.0) -> torch.Tensor:
    """Add another example of the batch (a random other track) at ``[min_db, max_db]`` dB below."""
    if len(x) < 2:
        return x
    shift = int(torch.randint(1, len(x), (1,), generator=gen, device=x.device).item()) if len(x) > 1 else 0
    other = torch.roll(x, shifts=shift, dims=0)
    level = 10 ** (_uniform(len(x), min_db, max_db, gen, x.device) / 20) * _chosen(len(x), p, gen, x.device)
    return x + other * level[:, None]


def speed(x: torch.Tensor, gen=None, max_change: float = 0.05, p: float = 1.0) -> torch.Tensor:
    """Small pitch + tempo change: resample by a factor in ``[1 - max_change, 1 + max_change]``,
    keeping the length (reads ``factor`` x as fast from the start; pads with zeros if it runs out)."""
    batch, n = x.shape
    factor = 1 + _uniform(batch, -max_change, max_change, gen, x.device) * _chosen(batch, p, gen, x.device)
    positions = torch.arange(n, device=x.device, dtype=x.dtype)[None, :] * factor[:, None].to(x.dtype)
    grid_x = positions / max(n - 1, 1) * 2 - 1  # to [-1, 1]
    grid = torch.stack([grid_x, torch.zeros_like(grid_x)], dim=-1)[:, None]  # [B, 1, n, 2]
    out = F.grid_sample(x[:, None, None, :], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return torch.where((factor == 1)[:, None], x, out[:, 0, 0, :])  # exact identity where unchanged


def mask(
    x: torch.Tensor, gen=None, max_time_frac: float = 0.1, max_freq_frac: float = 0.1, p: float = 1.0
) -> torch.Tensor:
    """Spectrogram-style masking done on the waveform: zero one random time span and one random
    frequency band per example (widths up to the given fractions)."""
    batch, n = x.shape
    chosen = _chosen(batch, p, gen, x.device)
    t_width = (_uniform(batch, 0, max_time_frac, gen, x.device) * n).long() * chosen
    t_start = (_uniform(batch, 0, 1, gen, x.device) * (n - t_width)).long()
    idx = torch.arange(n, device=x.device)[None, :]
    time_mask = (idx >= t_start[:, None]) & (idx < (t_start + t_width)[:, None])
    x = x.masked_fill(time_mask, 0.0)
    bins = n // 2 + 1
    f_width = (_uniform(batch, 0, max_freq_frac, gen, x.device) * bins).long() * chosen
    f_start = (_uniform(batch, 0, 1, gen, x.device) * (bins - f_width)).long()
    fidx = torch.arange(bins, device=x.device)[None, :]
    band = (fidx >= f_start[:, None]) & (fidx < (f_start + f_width)[:, None])
    if not band.any():
        return x
    return _spectral_gain(x, (~band).to(x.dtype))


AUGMENTATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "gain": gain,
    "polarity": polarity,
    "noise": noise,
    "filter": filter_,
    "mix": mix,
    "speed": speed,
    "mask": mask,
}


def validate_chain(chain: Sequence[Mapping], where: str = "augment") -> list[dict]:
    """Check names, option names and option types up front; returns plain dicts. Errors (a
    ``ValueError``) name the bad entry: ``augment[1]: unknown augmentation 'reverb'``."""
    from mvssl_dist.config import typed_options

    if not isinstance(chain, (list, tuple)):
        raise ValueError(f"{where}: must be a list of {{name: ..., options}} entries, got {chain!r}")
    checked = []
    for i, step in enumerate(chain):
        if not isinstance(step, Mapping):
            raise ValueError(f"{where}[{i}]: must be a mapping such as {{name: gain, max_db: 6}}, got {step!r}")
        step = dict(step)
        name = step.pop("name", None)
        if name not in AUGMENTATIONS:
            raise ValueError(f"{where}[{i}]: unknown augmentation '{name}' (known: {', '.join(AUGMENTATIONS)})")
        options = typed_options(f"{where}[{i}]", name, step, AUGMENTATIONS[name], skip=("x", "gen"))
        checked.append({"name": name, **options})
    return checked


def apply_chain(x: torch.Tensor, chain: Sequence[Mapping], gen: torch.Generator | None = None) -> torch.Tensor:
    """Apply a validated chain to ``[batch, samples]`` float audio."""
    for step in chain:
        options = {k: v for k, v in step.items() if k != "name"}
        x = AUGMENTATIONS[step["name"]](x, gen, **options)
    return x


def per_view_chains(augment, n_views: int) -> list[list[dict]]:
    """``augment`` as a list (every view) or a mapping ``{view index: list}`` -> one chain per view."""
    if not augment:
        return [[] for _ in range(n_views)]
    if isinstance(augment, Mapping):
        views = {str(i) for i in range(n_views)}
        stray = [k for k in augment if str(k) not in views]
        if stray:
            raise ValueError(f"augment: view {stray[0]!r} is not one of the {n_views} views (0 to {n_views - 1})")
        return [
            validate_chain(augment.get(i, augment.get(str(i), [])), where=f"augment[view {i}]") for i in range(n_views)
        ]
    chain = validate_chain(augment)
    return [chain for _ in range(n_views)]


def augment_views(views: torch.Tensor, chains: list[list[dict]], gen: torch.Generator | None = None) -> torch.Tensor:
    """``[batch, n_views, samples]`` float -> augmented, each view with its own chain."""
    if not any(chains):
        return views
    return torch.stack([apply_chain(views[:, v], chains[v], gen) for v in range(views.shape[1])], dim=1)
