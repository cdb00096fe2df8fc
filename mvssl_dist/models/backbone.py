"""The reference-compatible audio backbone: log-mel front end + CLIP-style modified ResNet.

The module tree (and therefore every state-dict key) mirrors the weights released with
Meseguer-Brocal et al., ICASSP 2024, so those files load with ``strict=True`` once their
``module.backbone.`` / ``student.module.backbone.`` prefix is removed.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from mvssl_dist.constants import EMBEDDING_DIM, SAMPLE_RATE, SEGMENT_SAMPLES, SEGMENT_SECONDS

__all__ = ["EMBEDDING_DIM", "SAMPLE_RATE", "SEGMENT_SAMPLES", "SEGMENT_SECONDS", "Backbone", "SpecFrontEnd"]


class SpecFrontEnd(nn.Module):
    """Waveform ``[batch, samples]`` -> log-mel ``[batch, 1, n_mels, frames]`` in dB.

    The parameters are the reference's, f_max above Nyquist included (kept for weight
    compatibility: torchaudio clips the filterbank at Nyquist). The attribute names
    (``spec.spectrogram.window``, ``spec.mel_scale.fb``) are the release's.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, n_fft: int = 1024, n_mels: int = 128) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.hop_length = n_fft // 2
        with warnings.catch_warnings():
            # f_max above Nyquist leaves the top filters empty; torchaudio warns, the reference did too.
            warnings.filterwarnings("ignore", message="At least one mel filterbank has all zero values")
            self.spec = torchaudio.transforms.MelSpectrogram(
                sample_rate=sample_rate,
                n_fft=n_fft,
                hop_length=self.hop_length,
                f_min=0.0,
                f_max=11025.0,
                n_mels=n_mels,
                normalized=True,
                mel_scale="slaney",
            )
        self.amplitude_to_db = torchaudio.transforms.AmplitudeToDB(top_db=100)

    def frames(self, samples: int) -> int:
        return samples // self.hop_length + 1

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        # The STFT runs in float32 even under autocast: half-precision FFTs lose quiet bins.
        with torch.autocast(device_type=wave.device.type, enabled=False):
            mel = self.spec.mel_scale(self.power(wave.float()))
            return self.amplitude_to_db(mel.unsqueeze(1))

    def power(self, wave: torch.Tensor) -> torch.Tensor:
        """``[batch, samples]`` -> ``[batch, n_fft // 2 + 1, frames]``: what ``self.spec.spectrogram``
        computes (window-normalised power), without its type checks, which torch.compile cannot
        trace: each split the compiled training step into several graphs."""
        s = self.spec.spectrogram
        stft = torch.stft(
            wave,
            s.n_fft,
            s.hop_length,
            s.win_length,
            s.window,
            center=s.center,
            pad_mode=s.pad_mode,
            onesided=s.onesided,
            return_complex=True,
        )
        return torch.view_as_real(stft).pow(2).sum(-1) / s.window.pow(2).sum()


class AttentionPool(nn.Module):
    """Multi-head attention pooling over the flattened feature map (CLIP style).

    ``[batch, C, H, W]`` -> ``[batch, out_dim]``; the query is the mean token.
    """

    def __init__(self, tokens: int, dim: int, heads: int, out_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(tokens, dim) / dim**0.5)
        self.k_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.c_proj = nn.Linear(dim, out_dim)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).permute(0, 2, 1)  # [B, HW, C]
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        tokens = tokens + self.positional_embedding.to(tokens.dtype)
        batch, length, dim = tokens.shape
        head_dim = dim // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, -1, self.heads, head_dim).transpose(1, 2)

        query = split(self.q_proj(tokens[:, :1]))
        key = split(self.k_proj(tokens))
        value = split(self.v_proj(tokens))
        pooled = F.scaled_dot_product_attention(query, key, value)  # [B, heads, 1, head_dim]
        pooled = pooled.transpose(1, 2).reshape(batch, dim)
        return self.c_proj(pooled)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> (avg-pool when strided) -> 1x1 x4, with an avg-pool + 1x1 shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != out:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, out, 1, bias=False)),
                        ("1", nn.BatchNorm2d(out)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ModifiedResNet(nn.Module):
    """3-conv stem, anti-aliased bottleneck stages, attention pooling: ``[B,1,F,T]`` -> ``[B,D]``."""

    def __init__(
        self,
        n_mels: int,
        n_frames: int,
        out_dim: int = EMBEDDING_DIM,
        layers: tuple[int, int, int, int] = (3, 4, 6, 3),
        width: int = 16,
        heads: int = 8,
    ) -> None:
        super().__init__()
        half = width // 2
        self.conv1 = nn.Conv2d(1, half, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self.relu = nn.ReLU(inplace=True)
        self._inplanes = width
        self.layer1 = self._stage(width, layers[0], stride=1)
        self.layer2 = self._stage(width * 2, layers[1], stride=2)
        self.layer3 = self._stage(width * 4, layers[2], stride=2)
        self.layer4 = self._stage(width * 8, layers[3], stride=2)
        tokens = (n_mels // 32) * (n_frames // 32) + 1
        self.attnpool = AttentionPool(tokens, width * 32, heads, out_dim)

    def _stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        stage = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        stage += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.conv1.weight.dtype)
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = self.relu(bn(conv(x)))
        x = self.avgpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


class Backbone(nn.Module):
    """Mono 16 kHz waveform -> 1024-d embedding (2,800,392 parameters).

    Input: ``[batch, samples]`` float32, or the reference layout ``[batch, samples, 1]``.
    The attention pooling has fixed positional embeddings, so ``samples`` must give the
    same number of frames as 4 s (63,488..63,999 samples all do; use exactly 64,000).
    Output: ``[batch, 1024]``.
    """

    def __init__(self, segment_samples: int = SEGMENT_SAMPLES) -> None:
        super().__init__()
        self.segment_samples = segment_samples
        self.spec = SpecFrontEnd()
        self.embedding = ModifiedResNet(self.spec.n_mels, self.spec.frames(segment_samples))
        self.output_dim = EMBEDDING_DIM

    @staticmethod
    def as_mono_batch(wave: torch.Tensor) -> torch.Tensor:
        """Accept ``[B, S]`` or ``[B, S, 1]``; anything else is a clear error."""
        if wave.dim() == 3 and wave.shape[-1] == 1:
            return wave[..., 0]
        if wave.dim() == 2:
            return wave
        raise ValueError(f"Backbone input must be [batch, samples] or [batch, samples, 1], got {list(wave.shape)}")

    def melspec(self, wave: torch.Tensor) -> torch.Tensor:
        return self.spec(self.as_mono_batch(wave))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.melspec(wave))
