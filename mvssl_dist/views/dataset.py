"""``views_dataset``: a lazy, streaming Ray Data dataset of multi-view training rows.

One Ray task per shard and epoch (several in turn past ``MAX_VIEW_TASKS``) reads the tar
(int16 PCM, no decoding), draws ``pairs_per_track``
sets of views per indexed track, drops silent draws with the reference's rule, and emits
one block ``{"key": [N], "views": int16 [N, n_views, samples]}``. Rows leave as int16 (half
the bytes of float32); :func:`to_float` or ``views_dataset(dtype="float32")`` scales them
by 1/32768. Workers are CPU-only and scale out separately from the training workers.

Counts of what was skipped (too short, silent after redraws, malformed members) go to a
small named Ray actor: read them with :func:`view_stats`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from mvssl_dist.constants import SAMPLE_RATE
from mvssl_dist.shards.format import INT16_SCALE, Malformed
from mvssl_dist.shards.reader import iter_shard_members, load_index
from mvssl_dist.views.sampling import SILENCE_THRESHOLD, ViewSpec, draw_track_views, track_rng

log = logging.getLogger(__name__)
STATS_ACTOR = "mvssl-view-stats"


def _stats_actor_class():
    import ray

    @ray.remote(num_cpus=0)
    class ViewStats:
        def __init__(self) -> None:
            self.counts: dict[str, int] = {}
            self.malformed: list[str] = []
            self.silent: dict[str, None] = {}  # a track silent every epoch is named once

        def add(self, counts: dict, malformed: list[str], silent: Sequence[str] = ()) -> None:
            for k, v in counts.items():
                self.counts[k] = self.counts.get(k, 0) + v
            self.malformed += malformed
            self.silent.update(dict.fromkeys(silent))

        def snapshot(self) -> dict:
            return {**self.counts, "malformed_keys": list(self.malformed), "silent_keys": list(self.silent)}

    return ViewStats


_HANDLES: dict[str, object] = {}  # keeps the driver's actor handles alive


def stats_actor(name: str = STATS_ACTOR):
    """The named counter actor; created (owned by the driver) by :func:`views_dataset`."""
    if name not in _HANDLES:
        _HANDLES[name] = _stats_actor_class().options(name=name, get_if_exists=True).remote()
    return _HANDLES[name]


def release_stats_actor(name: str) -> None:
    """Kill the named counter actor (a long-lived driver would otherwise keep one per run)."""
    import ray

    handle = _HANDLES.pop(name, None)
    if handle is not None:
        ray.kill(handle)


def view_stats(name: str = STATS_ACTOR, timeout_s: float | None = None) -> dict:
    """Counts so far: ``tracks``, ``rows``, ``too_short``, ``silent``, ``malformed``; ``malformed_keys``
    (``shard:member (why)``, each time read) and ``silent_keys`` (``shard:key`` of the tracks that
    gave no views in a pass because every draw stayed near-silent, each named once)."""
    import ray

    return ray.get(ray.get_actor(name).snapshot.remote(), timeout=timeout_s)


def _record_stats(name: str, counts: dict, malformed: list[str], silent: list[str]) -> None:
    import ray

    try:
        ray.get(ray.get_actor(name).add.remote(counts, malformed, silent))  # recorded before the block leaves
    except ValueError:  # no stats actor (the driver did not ask for one): counts go to the log only
        log.info("views: %s", counts)


def shard_picks(item: Mapping, spec: ViewSpec) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], dict, dict]:
    """Draw the views of every wanted track of one shard: (shuffled picks, counts, named).

    A pick is ``(key, pcm, starts)``: no audio is copied yet, so a shard drawn 25 times costs
    the shard's memory, not 25 copies of it. ``named``: ``{"malformed": ["shard:member (why)"],
    "silent": ["shard:key"]}``, the tracks that gave no views here and why.
    """
    seed, epoch, draws = int(item["seed"]), int(item["epoch"]), int(item["pairs_per_track"])
    rms = dict(zip(item["keys"], item["rms"], strict=True))
    picks: list[tuple[str, np.ndarray, np.ndarray]] = []
    counts = {"tracks": 0, "rows": 0, "too_short": 0, "silent": 0, "malformed": 0}
    named: dict[str, list[str]] = {"malformed": [], "silent": []}
    for member in iter_shard_members(Path(item["path"]), set(item["keys"])):
        if isinstance(member, Malformed):
            counts["malformed"] += 1
            named["malformed"].append(f"{member.shard}:{member.name} ({member.reason})")
            log.warning("views: skipping malformed member %s in %s: %s", member.name, member.shard, member.reason)
            continue
        counts["tracks"] += 1
        rows, status = draw_track_views(member.pcm, rms[member.key], spec, track_rng(seed, epoch, member.key), draws)
        if status != "ok":
            counts[status] += 1  # a track that cannot give views now will not on the next draw either
        if status == "silent" and not len(rows):
            named["silent"].append(f"{Path(item['path']).name}:{member.key}")
        picks += [(member.key, member.pcm, starts) for starts in rows]
    counts["rows"] = len(picks)
    order = np.random.default_rng([seed, epoch, int(item["shard_index"])]).permutation(len(picks))
    return [picks[i] for i in order], counts, named


def cut_views(picks: Sequence[tuple[str, np.ndarray, np.ndarray]], spec: ViewSpec) -> dict:
    """``{"key": [rows], "views": int16 [rows, n_views, samples]}``: one copy of each slice."""
    views = np.empty((len(picks), spec.n_views, spec.segment_samples), np.int16)
    keys = np.empty(len(picks), dtype=object)
    for row, (key, pcm, starts) in enumerate(picks):
        keys[row] = key
        for v, start in enumerate(starts):
            views[row, v] = pcm[start : start + spec.segment_samples]
    return {"key": keys, "views": views}


def shard_views(item: Mapping, spec: ViewSpec) -> tuple[dict, dict, dict]:
    """All views of one shard in one block: (block, counts, named tracks as :func:`shard_picks`)."""
    picks, counts, named = shard_picks(item, spec)
    return cut_views(picks, spec), counts, named


def views_block(item: Mapping, spec: ViewSpec, chains: list, dtype: str, stats_name: str | None, rows_per_block: int):
    """One shard's views (``item`` as :func:`shard_item` gives it) as Arrow blocks of at most
    ``rows_per_block`` rows.

    Rows are cut block by block (the first block leaves as soon as the shard is drawn, and a
    task holds one block of views at a time). The views column is a fixed-size binary column
    over the numpy buffer (zero copy; Ray's tensor extension type costs ~100 us per clip to build).
    """
    picks, counts, named = shard_picks(item, spec)
    for chunk, start in enumerate(range(0, len(picks), rows_per_block)):
        block = cut_views(picks[start : start + rows_per_block], spec)
        yield views_table(block["key"], finish_views(block["views"], item, chains, dtype, chunk))
    if stats_name:
        _record_stats(stats_name, counts, named["malformed"], named["silent"])


def views_table(keys: np.ndarray, views: np.ndarray) -> pa.Table:
    """``{"key": string, "views": fixed_size_binary}`` plus the shape/dtype in the schema metadata."""
    views = np.ascontiguousarray(views)
    row_bytes = int(np.prod(views.shape[1:])) * views.itemsize
    column = pa.FixedSizeBinaryArray.from_buffers(pa.binary(row_bytes), len(views), [None, pa.py_buffer(views)])
    meta = {b"views_shape": json.dumps(list(views.shape[1:])).encode(), b"views_dtype": views.dtype.str.encode()}
    return pa.table({"key": pa.array(list(keys), pa.string()), "views": column}).replace_schema_metadata(meta)


def table_views(table: pa.Table, writable: bool = False) -> tuple[list[str], np.ndarray]:
    """Inverse of :func:`views_table`: (keys, ``[rows, n_views, samples]`` array).

    Zero copy when the column is one chunk and ``writable`` is false; otherwise the chunks are
    copied once, straight into one new array (never combined first and then copied again).
    """
    meta = table.schema.metadata or {}
    shape = json.loads(meta.get(b"views_shape", b"[2, 64000]"))
    dtype = np.dtype(meta.get(b"views_dtype", b"<i2").decode())
    chunks = [_chunk_array(c, dtype, shape) for c in table.column("views").chunks]
    if len(chunks) == 1 and not writable:
        return table.column("key").to_pylist(), chunks[0]
    views = np.empty((table.num_rows, *shape), dtype)
    if chunks:
        np.concatenate(chunks, out=views)
    return table.column("key").to_pylist(), views


def _chunk_array(chunk: pa.FixedSizeBinaryArray, dtype: np.dtype, shape: list[int]) -> np.ndarray:
    width = chunk.type.byte_width
    flat = np.frombuffer(chunk.buffers()[1], np.uint8, count=len(chunk) * width, offset=chunk.offset * width)
    return flat.view(dtype).reshape(len(chunk), *shape)


def finish_views(views: np.ndarray, item: Mapping, chains: list, dtype: str, chunk: int = 0) -> np.ndarray:
    """Augment on this CPU worker when a chain is configured, and cast to the requested dtype.

    The augmentation generator is seeded by (seed, epoch, shard, chunk): reproducible, and
    each block of a shard gets its own draws."""
    if not any(chains) and dtype == "int16":
        return views
    floats = views.astype(np.float32) / INT16_SCALE
    if any(chains) and len(floats):
        import torch

        from mvssl_dist.views.augment import augment_views

        seed = np.random.SeedSequence([int(item[k]) for k in ("seed", "epoch", "shard_index")] + [chunk])
        state = int(seed.generate_state(1, np.uint64)[0])  # a Python int: NumPy 1 refuses uint64 >> int
        generator = torch.Generator().manual_seed(state >> 1)
        floats = augment_views(torch.from_numpy(floats), chains, generator).numpy()
    return floats if dtype == "float32" else np.round(np.clip(floats, -1, 1) * 32767).astype(np.int16)


# Above this many shard-epochs, a views task reads several in turn: Ray Data plans each block
# (about 1 ms each here), and one task per shard and epoch of a million-track catalogue (22,728
# shards x 100 epochs) took 27 s an epoch to plan with the keys in every item, and GBs of memory.
MAX_VIEW_TASKS = 20_000


def shard_table(dataset_dir: str | Path) -> pa.Table:
    """One row per shard, in path order: ``path`` (relative), the ``keys`` the index holds there and
    their ``rms`` (int16 scale). Built once per dataset, not once per epoch."""
    index = load_index(dataset_dir, columns=["shard", "key", "rms_db"])
    by_shard: dict[str, tuple[list, list]] = {}
    for shard, key, level in zip(*(index.column(c).to_pylist() for c in ("shard", "key", "rms_db")), strict=True):
        keys, rms = by_shard.setdefault(shard, ([], []))
        keys.append(key)
        rms.append(float(10 ** (level / 20)) * INT16_SCALE)
    paths = sorted(by_shard)
    return pa.table(
        {
            "path": pa.array(paths, pa.string()),
            "keys": pa.array([by_shard[p][0] for p in paths], pa.list_(pa.string())),
            "rms": pa.array([by_shard[p][1] for p in paths], pa.list_(pa.float64())),
        }
    )


@functools.lru_cache(maxsize=4)
def epoch_order(shards: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which an epoch reads the shards: seeded by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(shards)


def shard_item(table: pa.Table, root: str | Path, i: int, seed: int, epoch: int, pairs_per_track: int) -> dict:
    row = table.slice(i, 1).to_pylist()[0]
    return {
        "path": str(Path(root) / row["path"]),
        "keys": row["keys"],
        "rms": row["rms"],
        "seed": seed,
        "epoch": epoch,
        "pairs_per_track": pairs_per_track,
        "shard_index": int(i),
    }


def shard_items(dataset_dir: str | Path, seed: int, epoch: int, pairs_per_track: int) -> list[dict]:
    """One item per shard, in a seeded per-epoch order, with the keys the index holds there."""
    table = shard_table(dataset_dir)
    order = epoch_order(table.num_rows, seed, epoch)
    return [shard_item(table, dataset_dir, int(i), seed, epoch, pairs_per_track) for i in order]


_SHARED: dict[str, pa.Table] = {}


def shared_table(ref) -> pa.Table:
    """The shard table put in the object store by the driver, fetched once per worker process."""
    import ray

    if (name := ref.hex()) not in _SHARED:
        while len(_SHARED) >= 2:  # a worker process may serve several datasets: keep the newest
            _SHARED.pop(next(iter(_SHARED)))
        _SHARED[name] = ray.get(ref)
    return _SHARED[name]


def views_of_items(batch: dict, shards, root: str, seed: int, first_epoch: int, pairs_per_track: int, **views):
    """``map_batches`` generator over item numbers: item ``n`` is the ``n % shards``-th shard that
    epoch ``first_epoch + n // shards`` reads (:func:`epoch_order`); see :func:`views_block`."""
    table = shared_table(shards)
    for number in batch["id"]:
        epoch, place = divmod(int(number), table.num_rows)
        epoch += first_epoch
        i = int(epoch_order(table.num_rows, seed, epoch)[place])
        item = shard_item(table, root, i, seed, epoch, pairs_per_track)
        yield from views_block(item, **views)


def views_dataset(
    dataset_dir: str | Path,
    n_views: int = 2,
    segment_s: float = 4.0,
    min_gap_s: float = 4.0,
    pairs_per_track: int = 1,
    seed: int = 0,
    epoch: int = 0,
    augment: Sequence | Mapping | None = None,
    dtype: str = "int16",
    max_redraws: int = 10,
    silence_threshold: float = SILENCE_THRESHOLD,
    num_cpus_per_task: float = 1.0,
    concurrency: int | None = None,
    stats_name: str | None = STATS_ACTOR,
    preserve_order: bool = False,
    rows_per_block: int = 64,
    num_epochs: int = 1,
):
    """A lazy Ray Data dataset of ``{"key": str, "views": [n_views, samples]}`` rows; see the module doc.

    ``epoch`` changes every draw (and the shard order) reproducibly; each call covers every
    indexed track ``pairs_per_track`` times. ``dtype``: ``"int16"`` (scale 1/32768) or ``"float32"``.
    ``num_epochs`` > 1 streams epochs ``epoch .. epoch + num_epochs - 1`` back to back (one pass
    of a training run). The draws themselves never depend on scheduling; ``preserve_order=True`` also fixes the
    order in which rows arrive (same seed -> identical batches), at some cost in throughput.
    """
    import ray

    from mvssl_dist.ray_idle import with_idle_backoff
    from mvssl_dist.views.augment import per_view_chains

    if dtype not in ("int16", "float32"):
        raise ValueError(f"dtype must be 'int16' or 'float32', got {dtype!r}")
    if pairs_per_track < 1:
        raise ValueError("pairs_per_track must be >= 1")
    spec = ViewSpec(
        n_views,
        int(round(segment_s * SAMPLE_RATE)),
        int(round(min_gap_s * SAMPLE_RATE)),
        max_redraws,
        silence_threshold,
    )
    chains = per_view_chains(augment, n_views)
    table = shard_table(dataset_dir)
    if not table.num_rows:
        raise ValueError(f"{dataset_dir}: the dataset has no tracks")
    if stats_name:
        stats_actor(stats_name)
    items = table.num_rows * num_epochs  # one per shard and epoch, numbered; the table travels once
    per_task = -(-items // MAX_VIEW_TASKS)
    ds = ray.data.range(items, override_num_blocks=-(-items // per_task))
    ds.context.execution_options.preserve_order = preserve_order  # exact batch order for reproducibility
    ds = ds.map_batches(
        views_of_items,
        fn_kwargs={
            "shards": ray.put(table),
            "root": str(dataset_dir),
            "seed": seed,
            "first_epoch": epoch,
            "pairs_per_track": pairs_per_track,
            "spec": spec,
            "chains": chains,
            "dtype": dtype,
            "stats_name": stats_name,
            "rows_per_block": rows_per_block,
        },
        batch_size=1,
        num_cpus=num_cpus_per_task,
        compute=ray.data.TaskPoolStrategy(size=concurrency),
        batch_format="numpy",
        zero_copy_batch=True,
    )
    return with_idle_backoff(ds)  # a views dataset mostly waits on training: no spinning meanwhile


def track_ids(keys: Sequence[str]) -> np.ndarray:
    """``[rows]`` int64: a stable 64-bit id per track key, equal in every process (unlike ``hash``)."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little", signed=True) for k in keys],
        np.int64,
    )


def collate_views():
    """A collate function for ``iter_torch_batches``: ``{"views", "track": [rows] int64}``.

    Tensors only: Ray then pins the batch (``pin_memory=True``) and moves it to the training GPU
    in its fetch thread. A list in the dict (the keys, which the loop does not need) made Ray hand
    it over untouched, and the loop copied it from pageable memory on the training thread.
    """
    import torch
    from ray.data.collate_fn import ArrowBatchCollateFn

    class CollateViews(ArrowBatchCollateFn):
        def __call__(self, batch: pa.Table) -> dict:
            keys, views = table_views(batch, writable=True)  # torch wants a writable buffer: one copy
            return {"views": torch.from_numpy(views), "track": torch.from_numpy(track_ids(keys))}

    return CollateViews()


def iter_view_batches(ds, batch_size: int = 256, **kwargs):
    """Numpy batches ``{"key": list, "views": array}`` from a views dataset (zero copy per batch)."""
    for table in ds.iter_batches(batch_size=batch_size, batch_format="pyarrow", **kwargs):
        keys, views = table_views(table)
        yield {"key": keys, "views": views}


def to_float(views) -> object:
    """int16 views (numpy or torch) -> float32 in [-1, 1)."""
    return views.float() / INT16_SCALE if hasattr(views, "float") else views.astype(np.float32) / INT16_SCALE
