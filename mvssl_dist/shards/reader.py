"""Reading a DATASET_DIR written by ingest: index-driven, so only committed tracks are seen."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from mvssl_dist.shards.format import Malformed, Member, read_shard

log = logging.getLogger(__name__)


class DatasetError(ValueError):
    """A DATASET_DIR that cannot be read; the message names the path."""


@dataclass
class Track:
    key: str
    audio: np.ndarray  # float32 mono 16 kHz
    meta: dict


def load_index(dataset_dir: str | Path, columns: list[str] | None = None):
    path = Path(dataset_dir) / "index.parquet"
    if not path.is_file():
        raise DatasetError(f"{dataset_dir}: not an ingested dataset (no index.parquet)")
    return pq.read_table(path, columns=columns)


def shard_keys(dataset_dir: str | Path) -> dict[str, set[str]]:
    """``{shard relative path: keys the index says it holds}`` in index order."""
    index = load_index(dataset_dir)
    keys: dict[str, set[str]] = {}
    for shard, key in zip(index.column("shard").to_pylist(), index.column("key").to_pylist(), strict=True):
        keys.setdefault(shard, set()).add(key)
    return keys


def shard_problem(path: Path, written: int | None) -> str | None:
    """What is wrong with one shard file, if anything: missing, or not the size ingest wrote
    (``written`` is None for a dataset ingested before sizes were kept: existence only)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "is missing"
    if written is not None and size != written:
        return f"is {size:,} bytes, but ingest wrote {written:,}"
    return None


def damaged_shards(dataset_dir: str | Path) -> list[str]:
    """``"<shard> <problem>"`` for each shard the index names that is missing or cut short
    (a copy that stopped part-way): one ``stat`` per shard, no data read."""
    root = Path(dataset_dir)
    path = root / "index.parquet"
    columns = [c for c in ("shard", "shard_bytes") if c in pq.read_schema(path).names]
    index = pq.read_table(path, columns=columns)
    written = index.column("shard_bytes").to_pylist() if "shard_bytes" in columns else [None] * index.num_rows
    sizes = dict(zip(index.column("shard").to_pylist(), written, strict=True))
    return [f"{shard} {problem}" for shard, size in sizes.items() if (problem := shard_problem(root / shard, size))]


def damaged_message(problems: list[str]) -> str:
    more = f" (and {len(problems) - 1} more shard(s))" if len(problems) > 1 else ""
    return f"{problems[0]}{more}; copy the shards again, or run the same `mvssl ingest` to write them again"


def iter_shard_members(path: Path, wanted: set[str] | None = None) -> Iterator[Member | Malformed]:
    """Members of one shard file (only ``wanted`` keys when given), malformed ones included."""
    with open(path, "rb") as handle:
        yield from read_shard(handle, path.name, wanted)


def read_tracks(dataset_dir: str | Path) -> Iterator[Track]:
    """Every indexed track as float32 audio, shard by shard. Malformed members are logged and skipped."""
    root = Path(dataset_dir)
    for shard, keys in shard_keys(root).items():
        for item in iter_shard_members(root / shard, keys):
            if isinstance(item, Malformed):
                log.warning("skipping malformed member %s in %s: %s", item.name, item.shard, item.reason)
                continue
            yield Track(item.key, item.audio, item.meta)
