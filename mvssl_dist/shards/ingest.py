"""Catalogue ingest: any audio -> 16 kHz mono WebDataset shards + index.parquet + rejects.parquet.

How a run goes:
1. **Plan** (driver): resolve SRC to URIs; URIs seen by an earlier run keep their unit; new
   ones are packed into new units of about ``shard_target_mb`` of decoded audio, in an order
   scattered by a hash of the URI, so that a shard holds a sample of the catalogue rather than a
   few neighbouring folders (see :func:`plan_units`).
   The plan is saved (``plan.parquet``) before any work, so a resumed run redoes exactly the
   same units.
2. **Work** (Ray Data, one CPU task per unit): read bytes, hash, decode, check, write
   ``shards/shard-NNNNNN.tar`` (temporary name, renamed when complete), then the unit's
   manifest ``shards/shard-NNNNNN.parquet`` (every input of the unit with its outcome). The
   manifest is the commit marker: a unit without one is redone by the next run, and so is a
   unit whose tar is gone or not the size the manifest recorded (``shard_bytes``).
3. **Finalize** (driver): concatenate the manifests in listing order, turn copies of the same
   content listed after the first into ``duplicate_of:<key>`` rejects, write ``index.parquet``,
   ``rejects.parquet`` and ``dataset.json``.
Every input ends in exactly one of index or rejects; keys are the first 32 hex digits of
the source's SHA-256, so the same audio always gets the same key. Files that a folder walk
passes over (no audio extension: ``cover.jpg``, or audio stored under hash names) are not
inputs; they are counted, reported and listed in ``not_read.parquet`` (column ``uri``, so that
file can be given back as a SRC to ingest them after all).
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mvssl_dist.audio import AudioDecodeError, decode_with_info
from mvssl_dist.folder_lock import output_folder
from mvssl_dist.raytools import init_ray
from mvssl_dist.shards.format import CODECS, SAMPLE_RATE, encode_payload, write_sample
from mvssl_dist.shards.reader import shard_problem
from mvssl_dist.shards.uris import (
    Sources,
    decoding_input,
    display_uri,
    find_sources,
    input_size,
    input_stat,
    not_read_message,
)

SCHEMA_VERSION = 1
# Decoded 16 kHz int16 mono bytes per source byte, by extension: how units are sized before decoding.
DECODED_PER_SOURCE_BYTE = {"wav": 0.18, "wave": 0.18, "aif": 0.18, "aiff": 0.18, "flac": 0.35}
COMPRESSED_FACTOR = 2.0
SIZE_LOOKUPS = 32  # concurrent size requests while planning (an object store answers in ~10-50 ms)
# Options that change what a track becomes: a re-run must use the same ones.
PROCESSING_OPTIONS = ("min_duration_s", "max_duration_s", "silence_db", "codec")

INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source_uri", pa.string()),
        ("shard", pa.string()),
        ("shard_bytes", pa.int64()),  # the tar's size as written: a copy cut short is caught before use
        ("num_samples", pa.int64()),
        ("duration_s", pa.float64()),
        ("source_sample_rate", pa.int32()),
        ("source_channels", pa.int32()),
        ("source_format", pa.string()),
        ("source_bytes", pa.int64()),
        ("source_mtime_ns", pa.int64()),  # the source's modification time when read: a same-size change is seen
        ("source_sha256", pa.string()),
        ("rms_db", pa.float64()),
        ("title", pa.string()),
        ("artist", pa.string()),
        ("album", pa.string()),
    ]
)
NOT_READ = "not_read.parquet"
CHANGED = "changed"  # --retry changed: ingested inputs since changed in size or modification time, or gone
REJECT_REASONS = (
    "empty",
    "not_audio",
    "truncated",
    "too_short",
    "too_long",
    "silent",
    "unreadable",
    "zero_length",
    "not_finite",
)
# plan.parquet: each input's unit (shard), its position there, and its place in the listing order.
PLAN_SCHEMA = pa.schema([("uri", pa.string()), ("unit", pa.int64()), ("position", pa.int64()), ("order", pa.int64())])
REJECT_SCHEMA = pa.schema([("source_uri", pa.string()), ("reason", pa.string()), ("detail", pa.string())])
MANIFEST_SCHEMA = pa.schema(
    [("unit", pa.int64()), ("position", pa.int64()), ("status", pa.string()), ("detail", pa.string())]
    + [f for f in INDEX_SCHEMA if f.name != "source_uri"]
    + [("source_uri", pa.string())]
)


class IngestError(RuntimeError):
    """A real failure of the ingest job (not a rejected file); one line, exit non-zero."""


@dataclass
class IngestOptions:
    sources: list[str]
    out: str
    workers: int | None = None
    ray_address: str | None = None
    min_duration_s: float = 12.0
    max_duration_s: float = 1800.0
    shard_target_mb: float = 256.0
    codec: str = "s16"
    silence_db: float = -60.0
    progress: bool = True
    retry: tuple[str, ...] = ()  # reject reasons whose inputs this run reads again (their units are redone)


@dataclass
class IngestSummary:
    out: Path
    inputs: int
    tracks: int
    rejects: int
    hours: float
    units_run: int
    by_reason: dict[str, int] = field(default_factory=dict)
    not_read: int = 0  # files a folder walk passed over (no audio extension), in not_read.parquet


# --------------------------------------------------------------------------- atomic files
def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary name in the same folder, then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:  # pyarrow's errors name no file: say which one (a full disk, a read-only folder)
        if err.filename or not err.errno:
            raise
        raise OSError(err.errno, os.strerror(err.errno), str(path)) from err
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete what a killed run left in ``folder`` under :func:`atomic_write`'s temporary names
    (``.index.parquet.tmp-PID``; ingest's ``.shard-000003.tar.tmp-PID`` too); the deleted paths.
    Only for a folder the caller holds, so that no other writer owns them."""
    left = sorted(folder.glob(".*.tmp-*"))
    for path in left:
        path.unlink(missing_ok=True)
    return left


def retry_problem(reasons: tuple[str, ...], extra: tuple[str, ...] = ()) -> str | None:
    """``--retry``'s one-line error when one of ``reasons`` is not a reason inputs are rejected
    for (or one of ``extra``, such as ingest's ``changed``)."""
    known = REJECT_REASONS + extra
    if unknown := [r for r in reasons if r not in known]:
        return f"--retry {unknown[0]}: not a reason inputs are read again for ({', '.join(known)})"
    return None


def write_parquet(path: Path, table: pa.Table) -> None:
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


# --------------------------------------------------------------------------- planning
def source_size(uri: str) -> int:
    """An input's bytes for planning; 0 when it cannot be read (it becomes a reject later)."""
    try:
        return input_size(uri)
    except (OSError, TypeError):
        return 0


def estimated_decoded_bytes(uri: str, size: int) -> float:
    ext = uri.rsplit(".", 1)[-1].lower() if "." in uri.rsplit("/", 1)[-1] else ""
    return size * DECODED_PER_SOURCE_BYTE.get(ext, COMPRESSED_FACTOR)


def input_sizes(uris: list[str], known: dict[str, int]) -> dict[str, int]:
    """Each input's size in bytes (0 when it cannot be read): from a bucket listing where it gave
    them, the rest asked ``SIZE_LOOKUPS`` at a time. One at a time, a million keys named in a
    list file cost a million round trips to the object store before any work began."""
    missing = [u for u in uris if u not in known]
    with ThreadPoolExecutor(SIZE_LOOKUPS) as pool:
        return {**known, **dict(zip(missing, pool.map(source_size, missing), strict=True))}


def plan_units(
    uris: list[str], previous: dict[str, tuple[int, int, int]], target_bytes: float, sizes: dict[str, int]
) -> pa.Table:
    """Keep earlier URIs' (unit, position, order); pack new ones into new units of ~``target_bytes``
    (``sizes``: the new ones' bytes, see :func:`input_sizes`).

    New inputs are packed in a scattered order (:func:`scatter_key`), not as listed: a folder walk
    lists an album, an artist, a label together, and units packed in that order held a few artists
    each. Training reads a unit's tracks together (one views task per shard, a small shuffle
    buffer after it), so its batches were drawn from a few artists: hard negatives that no
    catalogue-wide draw would give. ``order`` keeps the listing order (run after run): within a
    unit the positions follow it, and of two copies of the same audio the one listed first is kept.
    """
    rows = [(u, *previous[u]) for u in previous]
    fresh = [u for u in uris if u not in previous]
    unit = max((r[1] for r in rows), default=-1) + 1
    first = max((r[3] for r in rows), default=-1) + 1
    order = {u: first + i for i, u in enumerate(fresh)}
    groups: list[list[str]] = [[]]
    filled = 0.0
    for uri in sorted(fresh, key=scatter_key):
        if groups[-1] and filled >= target_bytes:
            groups.append([])
            filled = 0.0
        groups[-1].append(uri)
        filled += estimated_decoded_bytes(uri, sizes[uri])
    for offset, group in enumerate(g for g in groups if g):
        rows += [(u, unit + offset, position, order[u]) for position, u in enumerate(sorted(group, key=order.get))]
    rows.sort(key=lambda r: (r[1], r[2]))
    return pa.table(
        {name: [r[i] for r in rows] for i, name in enumerate(PLAN_SCHEMA.names)},
        schema=PLAN_SCHEMA,
    )


def scatter_key(uri: str) -> bytes:
    """A fixed pseudo-random place for ``uri`` among the inputs (its BLAKE2b hash): the same in
    every run and on every machine, and unrelated to the folder it is in."""
    return hashlib.blake2b(uri.encode("utf-8", "surrogateescape"), digest_size=8).digest()


def shard_name(unit: int) -> str:
    return f"shard-{unit:06d}"


# --------------------------------------------------------------------------- one unit (a Ray task)
def rms_db(audio: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    return 20 * np.log10(rms) if rms > 0 else -float("inf")


def inspect_input(uri: str, options: dict) -> tuple[dict, np.ndarray | None]:
    """Read, hash and decode one input; returns (manifest row, audio or None when rejected)."""
    row: dict = {"source_uri": uri, "status": "ok", "detail": None}
    name = display_uri(uri)
    try:
        with decoding_input(uri) as (source, sha, size, mtime_ns):
            if not size:
                return {**row, "status": "empty", "detail": f"{name}: empty file (0 bytes)"}, None
            row.update(source_sha256=sha, key=sha[:32], source_bytes=size, source_mtime_ns=mtime_ns)
            decoded = decode_with_info(source, SAMPLE_RATE, name=name, max_seconds=options["max_duration_s"])
    except AudioDecodeError as err:
        return {**row, "status": err.reason, "detail": str(err)}, None
    except OSError as err:  # unreadable, or a streamed input that stopped being readable part-way
        return {**row, "status": "unreadable", "detail": f"{name}: {err.strerror or err}"}, None
    duration = decoded.duration_s
    level = rms_db(decoded.audio)
    row.update(
        num_samples=len(decoded.audio),
        duration_s=duration,
        source_sample_rate=decoded.source_sample_rate,
        source_channels=decoded.source_channels,
        source_format=decoded.source_format,
        rms_db=level if np.isfinite(level) else -200.0,
        **{k: decoded.tags.get(k) for k in ("title", "artist", "album")},
    )
    if duration < options["min_duration_s"]:
        return {
            **row,
            "status": "too_short",
            "detail": f"{name}: {duration:.2f} s < {options['min_duration_s']} s",
        }, None
    if duration > options["max_duration_s"]:
        return {
            **row,
            "status": "too_long",
            "detail": f"{name}: {duration:.0f} s > {options['max_duration_s']} s",
        }, None
    if level < options["silence_db"]:
        return {
            **row,
            "status": "silent",
            "detail": f"{name}: RMS {level:.1f} dBFS < {options['silence_db']} dBFS",
        }, None
    return row, within_full_scale(decoded.audio, row)


def within_full_scale(audio: np.ndarray, row: dict) -> np.ndarray:
    """``audio`` scaled down to full scale when it peaks above it (a floating-point file can hold
    any level), the gain kept in ``row["gain_db"]``: storing it as int16 would otherwise clip it
    into a square wave. ``rms_db`` stays the source's level."""
    from mvssl_dist.embed.segments import peak_magnitude

    peak = peak_magnitude(audio)
    if peak <= 1.0:
        return audio
    row["gain_db"] = round(-20 * np.log10(peak), 2)
    return np.divide(audio, peak, out=audio)  # the decoder's array is this track's only copy


def process_unit(item: dict) -> dict:
    """Ray Data ``map`` function: one unit's inputs -> its shard tar and manifest.

    Inputs that cannot be read are rejects; an error writing the output (a full disk, a folder
    gone read-only) comes back as the row's ``error``, because Ray Data hands the driver only a
    traceback's text for an exception raised here."""
    unit, uris, out, options = item["unit"], list(item["uris"]), Path(item["out"]), json.loads(item["options"])
    if delay := float(os.environ.get("MVSSL_FAULT_UNIT_DELAY_S", "0")):  # fault injection for kill/resume tests
        time.sleep(delay)
    try:
        return {**write_unit(unit, uris, out, options), "error": ""}
    except OSError as err:
        where = err.filename or out / "shards" / f"{shard_name(unit)}.tar"
        failed = f"writing {where}: {err.strerror or err}"
        return {"unit": unit, "tracks": 0, "inputs": len(uris), "scaled": 0, "error": failed}


def write_unit(unit: int, uris: list[str], out: Path, options: dict) -> dict:
    """One unit's shard tar (under a temporary name until complete) and then its manifest."""
    shards = out / "shards"
    name = shard_name(unit)
    ext = CODECS[options["codec"]]
    rows, seen = [], {}
    tar_tmp = shards / f".{name}.tar.tmp-{os.getpid()}"
    try:
        with tarfile.open(tar_tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for position, uri in enumerate(uris):
                row, audio = inspect_input(uri, options)
                row.update(unit=unit, position=position)
                if audio is not None and row["key"] in seen:
                    row.update(
                        status=f"duplicate_of:{row['key']}", detail=f"same content as {display_uri(seen[row['key']])}"
                    )
                elif audio is not None:
                    seen[row["key"]] = uri
                    row["shard"] = f"shards/{name}.tar"
                    meta = {k: row[k] for k in ("num_samples", "duration_s", "source_sha256")}
                    meta.update(key=row["key"], sample_rate=SAMPLE_RATE, dtype="int16", codec=options["codec"])
                    if "gain_db" in row:  # scaled down to full scale: the stored level is not the source's
                        meta["gain_db"] = row["gain_db"]
                    write_sample(tar, row["key"], meta, encode_payload(audio, options["codec"]), ext)
                rows.append(row)
        if seen:
            os.replace(tar_tmp, shards / f"{name}.tar")
            size = (shards / f"{name}.tar").stat().st_size
            for row in rows:
                row["shard_bytes"] = size if row.get("shard") else None
        else:  # no track: no tar (nor one left from an earlier pass over this unit, see reopen_units)
            (shards / f"{name}.tar").unlink(missing_ok=True)
    finally:
        tar_tmp.unlink(missing_ok=True)  # a unit without tracks, or one that failed part-way
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    write_parquet(shards / f"{name}.parquet", table)
    scaled = sum(1 for row in rows if row.get("shard") and "gain_db" in row)
    return {"unit": unit, "tracks": len(seen), "inputs": len(rows), "scaled": scaled}


# --------------------------------------------------------------------------- finalize
def table_hash(table: pa.Table) -> str:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def finalize(out: Path, plan: pa.Table, options: IngestOptions, units_run: int, not_read: int = 0) -> IngestSummary:
    units = sorted(set(plan.column("unit").to_pylist()))
    manifests = [pq.read_table(out / "shards" / f"{shard_name(u)}.parquet", schema=MANIFEST_SCHEMA) for u in units]
    columns = (plan.column(c).to_pylist() for c in ("unit", "position", "order"))
    listed = {(n, p): o for n, p, o in zip(*columns, strict=True)}
    rows = sorted(pa.concat_tables(manifests).to_pylist(), key=lambda r: listed[r["unit"], r["position"]])
    first_uri: dict[str, str] = {}
    index_rows, reject_rows = [], []
    for row in rows:
        if row["status"] == "ok" and row["key"] in first_uri:
            row.update(
                status=f"duplicate_of:{row['key']}", detail=f"same content as {display_uri(first_uri[row['key']])}"
            )
        if row["status"] == "ok":
            first_uri[row["key"]] = row["source_uri"]
            index_rows.append({k: row[k] for k in INDEX_SCHEMA.names})
        else:
            reject_rows.append({"source_uri": row["source_uri"], "reason": row["status"], "detail": row["detail"]})
    index = pa.Table.from_pylist(index_rows, schema=INDEX_SCHEMA)
    rejects = pa.Table.from_pylist(reject_rows, schema=REJECT_SCHEMA)
    write_parquet(out / "index.parquet", index)
    write_parquet(out / "rejects.parquet", rejects)
    by_reason: dict[str, int] = {}
    for r in reject_rows:
        code = r["reason"].split(":", 1)[0]
        by_reason[code] = by_reason.get(code, 0) + 1
    hours = float(sum(index.column("duration_s").to_pylist())) / 3600
    summary = IngestSummary(out, len(rows), index.num_rows, rejects.num_rows, hours, units_run, by_reason, not_read)
    write_dataset_json(out, options, summary, table_hash(index))
    return summary


def write_dataset_json(out: Path, options: IngestOptions, summary: IngestSummary, index_sha: str) -> None:
    record = {
        "schema_version": SCHEMA_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sample_rate": SAMPLE_RATE,
        "options": {k: v for k, v in asdict(options).items() if k not in ("out", "progress")},
        "counts": {
            "inputs": summary.inputs,
            "tracks": summary.tracks,
            "rejects": summary.rejects,
            **summary.by_reason,
            "not_read": summary.not_read,
        },
        "total_hours": round(summary.hours, 6),
        "index_sha256": index_sha,
    }
    atomic_write(out / "dataset.json", lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))


# --------------------------------------------------------------------------- driver
def check_options_compatible(out: Path, options: IngestOptions) -> None:
    existing = out / "dataset.json"
    if not existing.exists():
        return
    before = json.loads(existing.read_text())["options"]
    for name in PROCESSING_OPTIONS:
        if name in before and before[name] != getattr(options, name):
            raise IngestError(
                f"{out}: was written with {name}={before[name]!r}, this run asks for {getattr(options, name)!r}; "
                "use a new --out or the same options"
            )


def load_plan(out: Path) -> dict[str, tuple[int, int, int]]:
    """uri -> (unit, position, order). A plan written before ``order`` was kept was packed as
    listed, so its (unit, position) order is its listing order."""
    path = out / "plan.parquet"
    if not path.exists():
        return {}
    table = pq.read_table(path).sort_by([("unit", "ascending"), ("position", "ascending")])
    columns = [table.column(c).to_pylist() for c in ("uri", "unit", "position")]
    orders = table.column("order").to_pylist() if "order" in table.column_names else range(table.num_rows)
    return {u: (n, p, o) for u, n, p, o in zip(*columns, orders, strict=True)}


def record_not_read(out: Path, other_files: list[str], plan: pa.Table) -> list[str]:
    """Keep ``not_read.parquet`` up to date: what earlier runs and this one passed over, less what
    has since become an input (e.g. that very file given back as a SRC)."""
    path = out / NOT_READ
    before = pq.read_table(path).column("uri").to_pylist() if path.exists() else []
    planned = set(plan.column("uri").to_pylist())
    uris = [u for u in dict.fromkeys(before + other_files) if u not in planned]
    if uris or path.exists():
        write_parquet(path, pa.table({"uri": pa.array(uris, pa.string())}))
    return uris


def reopen_units(out: Path, reasons: tuple[str, ...]) -> tuple[int, int]:
    """Units holding inputs rejected for one of ``reasons`` lose their manifest, the mark that
    they are done, so this run processes them again (a read that failed for a while, a file that
    was still being copied): (units, such inputs). A run stopped after this resumes them as any
    unfinished unit; the folder is held by this run."""
    units = inputs = 0
    for manifest in sorted((out / "shards").glob("shard-*.parquet")):
        hits = sum(
            status in reasons for status in pq.read_table(manifest, columns=["status"]).column("status").to_pylist()
        )
        if hits:
            manifest.unlink()
            units, inputs = units + 1, inputs + hits
    return units, inputs


def reopen_damaged(out: Path) -> list[str]:
    """Units whose tar is missing or not the size it was written at (a disk that failed since, a
    copy put back cut short) lose their manifest, so this run writes them again: what was wrong."""
    problems = []
    for manifest in sorted((out / "shards").glob("shard-*.parquet")):
        rows = pq.read_table(manifest, schema=MANIFEST_SCHEMA, columns=["shard", "shard_bytes"]).to_pylist()
        held = [r for r in rows if r["shard"]]
        if held and (problem := shard_problem(out / held[0]["shard"], held[0]["shard_bytes"])):
            manifest.unlink()
            problems.append(f"{held[0]['shard']} {problem}")
    return problems


GONE = "gone"  # a source known to be no longer there (a local file not found, a key a full listing lacks)


def changed_inputs(out: Path, found: Sources) -> dict[str, str]:
    """Ingested tracks whose source changed since it was read: ``{uri: how}``. Another size or,
    at the same size, another modification time (rsync's quick check; a WAV remastered in place
    keeps its size), or gone (a track withdrawn from the catalogue). Checked where it costs nothing
    more: a local file's ``stat``, or a bucket walk's listing (keys named in a list file are not
    asked). A dataset ingested before modification times were kept is checked by size alone."""
    path = out / "index.parquet"
    if not path.exists():
        return {}
    columns = [c for c in ("source_uri", "source_bytes", "source_mtime_ns") if c in pq.read_schema(path).names]
    changed = {}
    for row in pq.read_table(path, columns=columns).to_pylist():
        uri = row["source_uri"]
        if how := change(row["source_bytes"], row.get("source_mtime_ns"), stamp_now(uri, found)):
            changed[uri] = how
    return changed


def stamp_now(uri: str, found: Sources) -> tuple[int, int | None] | str | None:
    """``(bytes, mtime_ns)`` of a source now, :data:`GONE`, or None when not known without asking."""
    if uri in found.sizes:
        return found.sizes[uri], found.mtimes.get(uri)
    if found.listed_gone(uri):
        return GONE
    return local_stat(uri)


def local_stat(uri: str) -> tuple[int, int | None] | str | None:
    """A ``file://`` source's ``(bytes, mtime_ns)``, :data:`GONE`, or None (not local: a remote
    source is never asked here; or it cannot be stat-ed now, and the read will say why)."""
    if not uri.startswith("file://"):
        return None
    try:
        return input_stat(uri)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):  # a folder now: the file is gone
        return GONE
    except OSError:
        return None


def change(size_then: int | None, mtime_then: int | None, now: tuple[int, int | None] | str | None) -> str | None:
    """How a source differs from when it was read (``now`` from :func:`stamp_now`), in words, or None."""
    if now == GONE:
        return "gone since it was read"
    if now is None:
        return None
    size_now, mtime_now = now
    if size_then is not None and size_now != size_then:
        return f"{size_then:,} bytes then, {size_now:,} now"
    if None not in (mtime_then, mtime_now) and mtime_now != mtime_then:
        fine = mtime_now // 10**9 == mtime_then // 10**9  # within one second: show the fraction
        return f"the same size, modified {utc_time(mtime_then, fine)} then, {utc_time(mtime_now, fine)} now"
    return None


def utc_time(ns: int, fine: bool = False) -> str:
    when = datetime.fromtimestamp(ns // 10**9, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return f"{when}.{ns % 10**9:09d} UTC" if fine else f"{when} UTC"


def changed_line(stage: str, changed: dict[str, str], what: str, redo: str) -> str:
    """One line: how many inputs changed (``what``: "ingested input(s) changed since they were
    read"), the first with how, and what ``--retry changed`` does (``redo``)."""
    uri, how = next(iter(changed.items()))
    gone = sum(how.startswith(GONE) for how in changed.values())  # "gone since it was read", "gone from the dataset"
    among = f" ({gone:,} of them gone)" if gone and gone < len(changed) else ""
    return f"[{stage}] {len(changed):,} {what}{among}, e.g. {display_uri(uri)} ({how}); `--retry changed` {redo}"


def reopen_changed(out: Path, plan: pa.Table, changed: dict[str, str], retry: tuple[str, ...], report):
    """Say which ingested inputs changed; with ``--retry changed``, their units are done again."""
    if not changed:
        return
    if CHANGED not in retry:
        what = "ingested input(s) changed since they were read"
        report(changed_line("ingest", changed, what, "reads them again (one gone becomes a reject)"))
        return
    uris, units_of = plan.column("uri").to_pylist(), plan.column("unit").to_pylist()
    units = {unit for uri, unit in zip(uris, units_of, strict=True) if uri in changed}
    for unit in units:
        (out / "shards" / f"{shard_name(unit)}.parquet").unlink(missing_ok=True)
    report(f"[ingest] --retry changed: {len(changed)} input(s) in {len(units)} unit(s) are read again")


def pending_units(out: Path, plan: pa.Table) -> dict[int, list[str]]:
    units: dict[int, list[str]] = {}
    for uri, unit in zip(plan.column("uri").to_pylist(), plan.column("unit").to_pylist(), strict=True):
        units.setdefault(unit, []).append(uri)
    return {u: uris for u, uris in units.items() if not (out / "shards" / f"{shard_name(u)}.parquet").exists()}


def run_units(out: Path, todo: dict[int, list[str]], options: IngestOptions, report: Callable[[str], None]) -> None:
    import ray

    processing = json.dumps({k: getattr(options, k) for k in PROCESSING_OPTIONS})
    items = [{"unit": u, "uris": uris, "out": str(out), "options": processing} for u, uris in sorted(todo.items())]
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = options.progress
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map(process_unit, num_cpus=1, compute=ray.data.TaskPoolStrategy(size=options.workers or None))
    done = 0
    for result in ds.iter_rows():
        if result["error"]:
            raise IngestError(
                f"{result['error']}; the {done} unit(s) finished are kept, so the same command continues from there"
            )
        done += 1
        scaled = f", {result['scaled']} scaled down to full scale (gain_db in their json)" if result["scaled"] else ""
        report(
            f"[ingest] {shard_name(result['unit'])}: {result['tracks']}/{result['inputs']} tracks{scaled} "
            f"({done}/{len(items)})"
        )


def ingest(options: IngestOptions, report: Callable[[str], None] = print) -> IngestSummary:
    """Run (or resume) an ingest; see the module docstring."""
    if options.codec not in CODECS:
        raise IngestError(f"--codec {options.codec}: unknown (known: {', '.join(CODECS)})")
    if options.workers is not None and options.workers < 1:
        raise IngestError(f"--workers {options.workers}: must be >= 1 (leave it out to use every CPU)")
    if options.shard_target_mb <= 0:
        raise IngestError(f"--shard-target-mb {options.shard_target_mb:g}: must be > 0")
    if options.min_duration_s < 0:
        raise IngestError(f"--min-duration-s {options.min_duration_s:g}: must be >= 0")
    if options.min_duration_s > options.max_duration_s:
        raise IngestError(
            f"--min-duration-s {options.min_duration_s:g} must not exceed --max-duration-s {options.max_duration_s:g}"
        )
    if problem := retry_problem(options.retry, (CHANGED,)):
        raise IngestError(problem)
    if options.silence_db > 0:
        # RMS in dBFS is never above 0 for audio in [-1, 1]: every track would be rejected as silent
        raise IngestError(f"--silence-db {options.silence_db:g}: must be <= 0 (dBFS; full scale is 0)")
    with output_folder(options.out, "--out", "mvssl ingest", IngestError) as out:
        return ingest_into(out, options, report)


def ingest_into(out: Path, options: IngestOptions, report: Callable[[str], None]) -> IngestSummary:
    """The ingest proper, with DATASET_DIR held (see :func:`ingest`)."""
    (out / "shards").mkdir(parents=True, exist_ok=True)
    for folder in (out, out / "shards"):  # a unit left unfinished is written again from the start
        remove_temporaries(folder)
    check_options_compatible(out, options)
    found = find_sources(options.sources, output=out)
    uris = found.uris
    if not uris:
        hint = f"; {not_read_message(found.other_files)}: name them or list them" if found.other_files else ""
        raise IngestError(f"no audio inputs found in {', '.join(options.sources)}{hint}")
    previous = load_plan(out)
    sizes = input_sizes([u for u in uris if u not in previous], found.sizes)
    plan = plan_units(uris, previous, options.shard_target_mb * 1e6, sizes)
    if plan.num_rows != len(previous):
        write_parquet(out / "plan.parquet", plan)
    not_read = record_not_read(out, found.other_files, plan)
    if reasons := tuple(r for r in options.retry if r != CHANGED):
        units, inputs = reopen_units(out, reasons)
        report(f"[ingest] --retry {','.join(reasons)}: {inputs} input(s) in {units} unit(s) are read again")
    reopen_changed(out, plan, changed_inputs(out, found), options.retry, report)
    if damaged := reopen_damaged(out):
        more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
        report(f"[ingest] {damaged[0]}{more}: written again from the inputs")
    todo = pending_units(out, plan)
    report(f"[ingest] {len(uris)} inputs, {plan.num_rows - len(previous)} new; {len(todo)} unit(s) to process")
    kept = set(not_read)  # once: a hash-named bucket can pass over 100,000s of files
    if passed_over := [u for u in found.other_files if u in kept]:
        report(f"[ingest] {not_read_line(passed_over, out)}")
    if todo:
        init_ray(options.ray_address, max(options.workers or 0, os.cpu_count() or 1))
        run_units(out, todo, options, report)
    return finalize(out, plan, options, len(todo), len(not_read))


def not_read_line(uris: list[str], out: Path) -> str:
    return f"{not_read_message(uris)}; listed in {out / NOT_READ}, which can be passed as a SRC to ingest them"
