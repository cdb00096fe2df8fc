"""The synthetic library's optional untagged layers: they change the audio section by section,
never the tags."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mvssl_dist.audio.synth import _layers, _sections, random_style, render, style_tags
from mvssl_dist.library import write_library

SR = 16000


def section_spectrum(audio: np.ndarray) -> np.ndarray:
    magnitude = np.abs(np.fft.rfft(audio))
    return magnitude / np.linalg.norm(magnitude)


def test_layers_leave_the_tags_and_the_tagged_music_alone():
    plain, layered = random_style(np.random.default_rng(3)), random_style(np.random.default_rng(3), layers=0.5)
    assert style_tags(plain) == style_tags(layered) and layered.sections_s > 0
    music = render(plain, 20.0, SR, seed=5)
    assert np.array_equal(music, render(dataclasses.replace(layered, layers=0.0), 20.0, SR, seed=5))
    with_layers = render(layered, 20.0, SR, seed=5)
    assert with_layers.shape == music.shape and np.abs(with_layers).max() == pytest.approx(0.8, abs=1e-6)
    assert np.abs(with_layers - music).max() > 0.05


def test_layers_are_new_in_every_section():
    style = random_style(np.random.default_rng(4), layers=0.5)
    keys, _ = _sections(style, 30.0, 11)
    extra = _layers(style, int(30.0 * SR), SR, 11, keys)
    span = int(style.sections_s * SR)
    sections = [extra[i * span : (i + 1) * span] for i in range(3)]
    assert all(np.abs(s).max() > 0.05 for s in sections)  # this seed draws a layer in each of them
    spectra = [section_spectrum(s) for s in sections]
    for i in range(2):
        assert float(spectra[i] @ spectra[i + 1]) < 0.8  # other notes, timbre and rate
    assert np.array_equal(extra, _layers(style, int(30.0 * SR), SR, 11, keys))  # and reproducible


def test_layers_need_varied_styles(tmp_path):
    with pytest.raises(ValueError, match="layers 0.5"):
        write_library(tmp_path, tracks=2, layers=0.5)
    with pytest.raises(ValueError, match="layers -1"):
        write_library(tmp_path, tracks=2, varied=True, layers=-1)
    assert not list(tmp_path.iterdir())


def test_unlabelled_tracks_are_pre_training_music_the_labels_leave_out(tmp_path):
    """The quickstart's --unlabelled: tracks apart in unlabelled/, not in labels.csv, and the same
    tracks (style, seed) as the larger library's; the labelled ones as without them."""
    short = {"seconds": 1.0, "formats": ("wav",), "varied": True, "sample_rate": 8000}
    small = write_library(tmp_path / "small", tracks=5, unlabelled=3, **short)
    plain = write_library(tmp_path / "plain", tracks=5, **short)
    large = write_library(tmp_path / "large", tracks=8, **short)
    assert [(t.path.name, t.style, t.split) for t in small[:5]] == [(t.path.name, t.style, t.split) for t in plain]
    extra = small[5:]
    assert [t.split for t in extra] == ["unlabelled"] * 3
    assert [t.path.relative_to(tmp_path / "small").as_posix() for t in extra] == [
        f"unlabelled/{t.path.name}" for t in large[5:]
    ]
    for ours, theirs in zip(extra, large[5:], strict=True):
        assert ours.path.read_bytes() == theirs.path.read_bytes()
    labels = (tmp_path / "small" / "labels.csv").read_text()
    assert labels == (tmp_path / "plain" / "labels.csv").read_text()
    assert not any(t.path.name in labels for t in extra)
    with pytest.raises(ValueError, match="unlabelled -1"):
        write_library(tmp_path / "bad", tracks=2, unlabelled=-1)
