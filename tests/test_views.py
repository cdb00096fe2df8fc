from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
import threading

import numpy as np
import pytest
import torch
from catalogue import ingested_catalogue
from distributed_helpers import ensure_ray
from ray.data.collate_fn import is_tensor_batch_type
from scipy import stats

from mvssl_dist.shards import read_tracks
from mvssl_dist.views import (
    ViewSpec,
    collate_views,
    draw_starts,
    draw_track_views,
    draw_views,
    is_silent,
    iter_view_batches,
    view_stats,
    views_dataset,
)
from mvssl_dist.views.augment import (
    apply_chain,
    filter_,
    gain,
    mask,
    mix,
    noise,
    polarity,
    speed,
    validate_chain,
)
from mvssl_dist.views.dataset import track_ids

SPEC = ViewSpec()


# ----------------------------------------------------------------- pure sampling
def test_starts_respect_the_gap_and_are_uniform():
    rng = np.random.default_rng(0)
    length = 400_000
    one = ViewSpec(n_views=1)
    starts = np.array([draw_starts(length, one, rng)[0] for _ in range(4000)])
    slack = length - 64000
    assert stats.kstest(starts / slack, "uniform").pvalue > 0.01
    pairs = np.array([draw_starts(length, SPEC, rng) for _ in range(4000)])
    assert (np.diff(pairs, axis=1) >= 128000).all() and (pairs[:, -1] + 64000 <= length).all()
    slack2 = length - SPEC.min_track_samples()
    first = pairs[:, 0] / slack2  # min of two uniforms: CDF 1 - (1 - x)^2
    assert stats.kstest(first, lambda x: 1 - (1 - np.clip(x, 0, 1)) ** 2).pvalue > 0.01
    assert draw_starts(SPEC.min_track_samples() - 1, SPEC, rng) is None
    three = ViewSpec(n_views=3, gap_samples=16000)
    triples = np.array([draw_starts(300_000, three, rng) for _ in range(500)])
    assert (np.diff(triples, axis=1) >= 80000).all()


def test_silence_rule_is_the_reference_natural_log():
    seg = np.full(100, 1000, np.int16)
    track_rms = 1000 * np.exp(7.5 / 10)  # 10 ln(1000 / track) = -7.5 exactly: not below -> not silent
    assert not is_silent(seg, track_rms * 0.999)
    assert is_silent(seg, track_rms * 1.001)
    assert is_silent(np.zeros(100, np.int16), 1.0)


def test_draw_views_redraws_then_gives_up_on_silence():
    rng = np.random.default_rng(1)
    pcm = np.zeros(400_000, np.int16)
    pcm[:100_000] = 3000  # loud only at the start: two segments 8 s apart cannot both be loud
    views, status = draw_views(pcm, 3000.0, SPEC, rng)
    assert views is None and status == "silent"
    pcm[:] = 3000
    views, status = draw_views(pcm, 3000.0, SPEC, rng)
    assert status == "ok" and views.shape == (2, 64000) and views.dtype == np.int16


@pytest.mark.parametrize("draws", [1, 40])  # 1: each segment summed on its own; 40: prefix sums
def test_vectorised_draws_apply_the_same_silence_rule(draws):
    rng = np.random.default_rng(3)
    loudness = np.repeat(rng.choice([0.0, 0.05, 1.0], size=40), 16000)  # 1 s blocks: silent, quiet, loud
    pcm = np.round(rng.standard_normal(len(loudness)) * loudness * 3000).astype(np.int16)
    track_rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))
    kept = 0
    for _ in range(30):
        starts, status = draw_track_views(pcm, track_rms, SPEC, rng, draws)
        assert status in ("ok", "silent") and (status == "ok") == (len(starts) == draws)
        for row in starts:
            assert not any(is_silent(pcm[s : s + 64000], track_rms) for s in row)
            assert abs(row[0] - row[1]) >= 128000
        kept += len(starts)
    assert kept > 0
    starts, status = draw_track_views(pcm[:100], track_rms, SPEC, rng, draws)
    assert status == "too_short" and starts.shape == (0, 2)


# ----------------------------------------------------------------- the Ray Data dataset
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    ensure_ray()
    src, out = tmp_path_factory.mktemp("views_src"), tmp_path_factory.mktemp("views_ds")
    return ingested_catalogue(src, out, 20.0, shard_target_mb=1)


def _collect(ds):
    return list(iter_view_batches(ds, batch_size=4))


def _locate(pcm: np.ndarray, clip: np.ndarray) -> int:
    candidates = np.flatnonzero(pcm[: len(pcm) - len(clip) + 1] == clip[0])
    hits = [int(c) for c in candidates if np.array_equal(pcm[c : c + len(clip)], clip)]
    assert hits, "view is not a slice of its track"
    return hits[0]


@pytest.mark.slow
def test_views_are_exact_slices_of_their_own_track(dataset):
    tracks = {t.key: t for t in read_tracks(dataset)}
    pcm = {k: np.round(t.audio * 32768).astype(np.int16) for k, t in tracks.items()}
    rows = 0
    for batch in _collect(views_dataset(dataset, pairs_per_track=2, seed=3, preserve_order=True)):
        assert batch["views"].dtype == np.int16 and batch["views"].shape[1:] == (2, 64000)
        for key, views in zip(batch["key"], batch["views"], strict=True):
            starts = sorted(_locate(pcm[key], v) for v in views)
            assert starts[1] - starts[0] >= 128000  # 4 s segment + 4 s gap: never overlapping
            rms = np.sqrt(np.mean(tracks[key].audio.astype(np.float64) ** 2)) * 32768
            assert not any(is_silent(v, rms) for v in views)
            rows += 1
    assert rows == 2 * len(tracks)
    counts = view_stats()
    assert counts["rows"] >= rows and counts["malformed"] == 0


@pytest.mark.slow
def test_a_long_run_reads_several_shards_a_task_and_the_same_views(dataset, monkeypatch):
    """Epochs streamed back to back are numbered items, not one item (with its shard's keys) per
    shard and epoch: a million-track catalogue planned 22,728 items an epoch at 27 s an epoch.
    Past MAX_VIEW_TASKS a task reads several items in turn, and the views are the same."""
    from mvssl_dist.views import dataset as views_module

    items = views_module.shard_table(dataset).num_rows * 3
    one_each = _collect(views_dataset(dataset, seed=2, num_epochs=3, preserve_order=True, stats_name=None))
    monkeypatch.setattr(views_module, "MAX_VIEW_TASKS", 2)
    two_tasks = views_dataset(dataset, seed=2, num_epochs=3, preserve_order=True, stats_name=None)
    assert items > 2  # so a task reads at least two items in turn
    shared = _collect(two_tasks)
    assert [list(b["key"]) for b in shared] == [list(b["key"]) for b in one_each]
    assert all(np.array_equal(a["views"], b["views"]) for a, b in zip(shared, one_each, strict=True))
    keys = [k for b in one_each for k in b["key"]]
    assert sorted(set(keys)) == sorted(
        k for ks in views_module.shard_table(dataset).column("keys").to_pylist() for k in ks
    )
    assert len(keys) == 3 * len(set(keys))  # every track once an epoch (1 pair per track), 3 epochs


@pytest.mark.slow
def test_same_seed_same_batches_new_epoch_new_draws(dataset):
    first = _collect(views_dataset(dataset, seed=5, preserve_order=True))
    again = _collect(views_dataset(dataset, seed=5, preserve_order=True))
    other = _collect(views_dataset(dataset, seed=5, epoch=1, preserve_order=True))
    assert all(
        np.array_equal(a["views"], b["views"]) and list(a["key"]) == list(b["key"])
        for a, b in zip(first, again, strict=True)
    )
    by_key = {k: v for b in first for k, v in zip(b["key"], b["views"], strict=True)}
    by_key_next = {k: v for b in other for k, v in zip(b["key"], b["views"], strict=True)}
    assert by_key.keys() == by_key_next.keys()
    assert sum(not np.array_equal(by_key[k], by_key_next[k]) for k in by_key) >= len(by_key) - 1


@pytest.mark.slow
def test_float_dtype_and_torch_batches(dataset):
    ds = views_dataset(dataset, n_views=3, min_gap_s=0.5, dtype="float32", preserve_order=True)
    batch = next(iter(ds.iter_torch_batches(batch_size=2, collate_fn=collate_views())))
    assert batch["views"].dtype == torch.float32 and batch["views"].shape == (2, 3, 64000)
    assert batch["views"].abs().max() <= 1.0
    keys = next(iter_view_batches(ds, batch_size=2))["key"]  # the same draws: same seed, same order
    assert batch["track"].tolist() == track_ids(keys).tolist()
    # tensors only, so that Ray pins the batch and moves it to the GPU in its fetch thread
    assert is_tensor_batch_type(batch) and set(batch) == {"views", "track"}


def test_track_ids_are_stable_64_bit_and_equal_for_equal_keys():
    ids = track_ids(["a/b.flac", "c.mp3", "a/b.flac"])
    assert ids.dtype == np.int64 and ids[0] == ids[2] != ids[1]
    # blake2b, not Python's per-process salted hash(): every Ray Train worker agrees
    assert ids[1] == int.from_bytes(hashlib.blake2b(b"c.mp3", digest_size=8).digest(), "little", signed=True)


@pytest.mark.slow
def test_two_consumers_see_disjoint_tracks_covering_the_epoch(dataset):
    tracks = {t.key for t in read_tracks(dataset)}
    splits = views_dataset(dataset, seed=2).streaming_split(2, equal=False)
    seen: list[list[str]] = [[], []]

    def consume(i):
        for batch in iter_view_batches(splits[i], batch_size=2):
            seen[i] += list(batch["key"])

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(tracks)


@pytest.mark.slow
def test_a_broken_member_is_survived_and_counted(dataset, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    shard = sorted((broken / "shards").glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    victim = members[1][0].name.split(".")[0]
    with tarfile.open(shard, "w") as tar:
        for info, data in members:
            if info.name == f"{victim}.s16":
                data = data[: len(data) // 2]  # wrong length
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    total = len(list(read_tracks(dataset)))
    rows = _collect(views_dataset(broken, stats_name="broken-stats", preserve_order=True))
    assert sum(len(b["key"]) for b in rows) == total - 1
    counts = view_stats("broken-stats")
    assert counts["malformed"] == 1 and victim in counts["malformed_keys"][0]


# ----------------------------------------------------------------- augmentations
@pytest.fixture
def audio():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(8, 16000, generator=gen) * 0.1


def test_augmentations_are_identity_at_zero_strength(audio):
    gen = torch.Generator().manual_seed(1)
    torch.testing.assert_close(gain(audio, gen, max_db=0.0), audio)
    torch.testing.assert_close(polarity(audio, gen, p=0.0), audio)
    torch.testing.assert_close(noise(audio, gen, p=0.0), audio)
    torch.testing.assert_close(filter_(audio, gen, p=0.0), audio, atol=1e-6, rtol=0)
    torch.testing.assert_close(mix(audio, gen, p=0.0), audio)
    torch.testing.assert_close(speed(audio, gen, max_change=0.0), audio, atol=1e-5, rtol=0)
    torch.testing.assert_close(mask(audio, gen, max_time_frac=0.0, max_freq_frac=0.0), audio)


def test_gain_polarity_and_mix_do_what_they_claim(audio):
    gen = torch.Generator().manual_seed(2)
    torch.testing.assert_close(gain(audio, gen, min_db=6.0, max_db=6.0), audio * 10 ** (6 / 20))
    out = gain(audio, gen, max_db=6.0)
    db = 20 * torch.log10(out.norm(dim=1) / audio.norm(dim=1))
    assert (db.abs() <= 6.0 + 1e-4).all() and db.std() > 0.5
    torch.testing.assert_close(polarity(audio, gen, p=1.0), -audio)
    mixed = mix(audio, gen, min_db=-20.0, max_db=-20.0)
    residual = mixed - audio
    ratios = residual.norm(dim=1) / audio.norm(dim=1)
    assert torch.allclose(ratios, torch.full_like(ratios, 0.1), rtol=0.2)


def test_noise_snr_within_tolerance(audio):
    out = noise(audio, torch.Generator().manual_seed(3), min_snr_db=20.0, max_snr_db=20.0)
    snr = 10 * torch.log10(audio.pow(2).mean(1) / (out - audio).pow(2).mean(1))
    assert (snr - 20.0).abs().max() < 0.5


def test_filter_cutoff_is_visible_in_the_spectrum(audio):
    gen = torch.Generator().manual_seed(4)
    freqs = torch.fft.rfftfreq(16000, 1 / 16000)

    def band_db(x, lo, hi):
        power = torch.fft.rfft(x, dim=1).abs().pow(2)
        return 10 * torch.log10(power[:, (freqs >= lo) & (freqs < hi)].mean())

    low = filter_(audio, gen, min_cutoff_hz=1000, max_cutoff_hz=1000, kind="low")
    assert band_db(audio, 100, 500) - band_db(low, 100, 500) < 0.5
    assert band_db(audio, 3000, 8000) - band_db(low, 3000, 8000) > 30
    high = filter_(audio, gen, min_cutoff_hz=1000, max_cutoff_hz=1000, kind="high")
    assert band_db(audio, 50, 300) - band_db(high, 50, 300) > 30
    assert band_db(audio, 3000, 8000) - band_db(high, 3000, 8000) < 0.5


def test_speed_and_mask_change_the_signal(audio):
    tone = torch.sin(2 * torch.pi * 440 * torch.arange(16000) / 16000)[None].repeat(2, 1)
    fast = speed(tone, torch.Generator().manual_seed(5), max_change=0.05)
    peak = torch.fft.rfft(fast[:, :8000], dim=1).abs().argmax(dim=1).float() * 2  # 2 Hz bins
    assert ((peak - 440).abs() > 5).all() and ((peak - 440).abs() < 25).all()
    masked = mask(audio, torch.Generator().manual_seed(6), max_time_frac=0.2, max_freq_frac=0.0, p=1.0)
    assert (masked == 0).sum() > 0


def test_chain_validation_names_the_bad_entry():
    with pytest.raises(ValueError, match=r"augment\[1\]: unknown augmentation 'reverb'"):
        validate_chain([{"name": "gain"}, {"name": "reverb"}])
    with pytest.raises(ValueError, match=r"augment\[0\]\.db: not an option of gain \(options: max_db, min_db, p\)"):
        validate_chain([{"name": "gain", "db": 3}])
    with pytest.raises(ValueError, match=r"augment\[0\]\.max_db must be a number, got 'abc'"):
        validate_chain([{"name": "gain", "max_db": "abc"}])
    with pytest.raises(ValueError, match=r"augment\[0\]: must be a mapping"):
        validate_chain(["gain"])
    assert validate_chain([{"name": "gain", "max_db": 3, "min_db": None}]) == [
        {"name": "gain", "max_db": 3.0, "min_db": None}
    ]
    chain = validate_chain([{"name": "gain", "max_db": 3}, {"name": "polarity", "p": 1.0}])
    x = torch.ones(2, 100)
    assert (apply_chain(x, chain, torch.Generator().manual_seed(0)) < 0).all()


@pytest.mark.slow
def test_augmentation_runs_on_the_view_workers(dataset):
    plain = _collect(views_dataset(dataset, seed=9, dtype="float32", preserve_order=True))
    flipped = _collect(
        views_dataset(
            dataset, seed=9, dtype="float32", augment={1: [{"name": "polarity", "p": 1.0}]}, preserve_order=True
        )
    )
    for a, b in zip(plain, flipped, strict=True):
        assert list(a["key"]) == list(b["key"])
        np.testing.assert_array_equal(a["views"][:, 0], b["views"][:, 0])
        np.testing.assert_array_equal(a["views"][:, 1], -b["views"][:, 1])


def test_a_track_without_level_gives_no_views():
    pcm = np.full(400_000, 3000, np.int16)
    for draws in (1, 40):  # both energy paths
        starts, status = draw_track_views(pcm, 0.0, SPEC, np.random.default_rng(0), draws)
        assert status == "silent" and len(starts) == 0
        assert is_silent(pcm[:64000], 0.0)  # the rule it follows


def test_a_track_whose_every_draw_is_near_silent_is_named(tmp_path):
    """One loud second in 12 s: two views 4 s apart cannot both hold it, so every draw is silent."""
    from mvssl_dist.shards.format import encode_payload, write_sample
    from mvssl_dist.views.dataset import shard_picks

    rng = np.random.default_rng(0)
    music = (0.3 * rng.standard_normal(12 * 16000)).astype(np.float32)
    burst = np.full(12 * 16000, 1e-4, np.float32)
    burst[:16000] = 0.5 * np.sign(rng.standard_normal(16000))
    shard = tmp_path / "shard-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for key, audio in (("a" * 32, music), ("b" * 32, burst)):
            write_sample(tar, key, {"num_samples": len(audio)}, encode_payload(audio, "s16"), "s16")
    rms = [float(np.sqrt(np.mean(np.square(a * 32768.0)))) for a in (music, burst)]
    item = {"path": str(shard), "keys": ["a" * 32, "b" * 32], "rms": rms, "seed": 0, "epoch": 0}
    picks, counts, named = shard_picks({**item, "pairs_per_track": 3, "shard_index": 0}, SPEC)
    assert {key for key, _, _ in picks} == {"a" * 32} and len(picks) == 3
    assert counts["silent"] == 1 and named == {"malformed": [], "silent": [f"shard-000000.tar:{'b' * 32}"]}


def test_idle_backoff_sleeps_only_after_a_pass_where_nothing_moved(monkeypatch):
    from types import SimpleNamespace

    from mvssl_dist import ray_idle

    slept = []
    monkeypatch.setattr(ray_idle.time, "sleep", slept.append)

    class Op:
        def __init__(self) -> None:
            self.metrics = SimpleNamespace(num_outputs_taken=0)

        def num_active_tasks(self) -> int:
            return 1

    class State:
        def __init__(self) -> None:
            self.inputs = self.outputs = 3

        def total_enqueued_input_blocks(self) -> int:
            return self.inputs

        def total_enqueued_output_blocks(self) -> int:
            return self.outputs

    op, state = Op(), State()
    executor = SimpleNamespace(_topology={op: state})
    backoff = ray_idle.IdleBackoff()
    backoff.on_execution_step(executor)  # first pass: nothing to compare with
    assert slept == []
    backoff.on_execution_step(executor)  # nothing moved: back off
    assert slept == [ray_idle.IDLE_SLEEP_S]
    op.metrics.num_outputs_taken += 1  # the consumer took a block: no sleep
    backoff.on_execution_step(executor)
    state.outputs -= 1
    backoff.on_execution_step(executor)
    assert slept == [ray_idle.IDLE_SLEEP_S]
    backoff.on_execution_step(SimpleNamespace())  # unknown internals: never sleeps, never raises
    assert slept == [ray_idle.IDLE_SLEEP_S]


def test_idle_backoff_joins_the_dataset_context_only(dataset, monkeypatch):
    import ray.data

    from mvssl_dist.ray_idle import IdleBackoff

    ds = views_dataset(str(dataset), seed=0)
    assert ds.context.custom_execution_callback_classes.count(IdleBackoff) == 1
    assert IdleBackoff not in ray.data.DataContext.get_current().custom_execution_callback_classes
    monkeypatch.setenv("MVSSL_IDLE_BACKOFF", "0")
    assert IdleBackoff not in views_dataset(str(dataset), seed=0).context.custom_execution_callback_classes
