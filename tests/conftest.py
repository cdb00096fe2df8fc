"""Shared fixtures: generated music in real encoded formats, and the shared reference fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from distributed_helpers import ensure_ray

from mvssl_dist.audio.synth import STYLES, encode, render

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SEED_COMPAT = SHARED / "fixtures" / "seed_compat"


@pytest.fixture(scope="session")
def seed_compat() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"../shared is absent ({SHARED}): the reference-weight fixtures live there")
    assert SEED_COMPAT.is_dir(), f"{SEED_COMPAT} missing although ../shared is present"
    return SEED_COMPAT


@pytest.fixture(scope="session")
def music_44k() -> np.ndarray:
    """12 s of synthesised multi-instrument music at 44.1 kHz, mono float32."""
    return render(STYLES[2], 12.0, 44100, seed=3)


@pytest.fixture(scope="session")
def encoded_dir(tmp_path_factory, music_44k) -> Path:
    """The same music encoded in every supported format."""
    out = tmp_path_factory.mktemp("encoded")
    for kind in ("mp3", "flac", "ogg", "opus", "wav", "m4a"):
        encode(out / f"music.{kind}", music_44k, 44100, kind)
    encode(out / "music24.wav", music_44k, 44100, "wav24")
    return out


@pytest.fixture
def ray_local():
    """A local 2-CPU Ray (started on first use; tests that need another cluster shut it down)."""
    return ensure_ray()


@pytest.fixture(scope="session", autouse=True)
def _shutdown_ray_at_exit():
    yield
    import ray

    ray.shutdown()
