"""Batch embedding of a library with Ray Data: decode tasks -> an actor pool holding the model -> parquet.

Per track, exactly the reference recipe of :mod:`mvssl_dist.embed.core` (peak-normalise,
zero-pad, cut, embed, mean), so one file embedded here equals ``mvssl embed-file``.
Resumable: results are written by the driver in part files (temporary name, then rename);
a re-run skips every track already in a part or in the error list, so a run killed midway
and run again ends with exactly one row per track.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mvssl_dist.constants import EMBED_MAX_DURATION_S, EMBEDDING_DIM, SAMPLE_RATE
from mvssl_dist.embed.segments import cut_segments, peak_normalise
from mvssl_dist.folder_lock import output_folder
from mvssl_dist.shards.ingest import (
    CHANGED,
    atomic_write,
    change,
    changed_line,
    remove_temporaries,
    retry_problem,
    stamp_now,
    write_parquet,
)
from mvssl_dist.shards.uris import Sources, display_uri

PAIRED = ("segments", "tracks")  # with --level both, the two parts of one flush, in the order written
ERROR_SCHEMA = pa.schema([("source_uri", pa.string()), ("reason", pa.string()), ("detail", pa.string())])


class EmbedError(RuntimeError):
    """The embedding job cannot run; one line."""


@dataclass
class EmbedOptions:
    sources: list[str]
    model: str
    out: str
    level: str = "track"  # track | segment | both
    segment_s: float = 4.0
    hop_s: float = 4.0
    batch_size: int = 64
    workers: int = 1
    gpus: float = 0  # GPUs per model actor: 0 (CPU), 1, or a fraction to share one GPU between actors
    ray_address: str | None = None
    rows_per_part: int = int(os.environ.get("MVSSL_EMBED_ROWS_PER_PART", "256"))
    actor_cpus: float = 1.0  # CPUs per model actor when it runs on CPU (torch threads follow)
    # Two decode tasks per CPU: one task's hand-off gap (return, next task scheduled) is filled by
    # the other's work. Measured on 2 cores: +30% steady-state embedding rate over 1 task per CPU
    # (4 per CPU: no better, and a slower start).
    decode_cpus: float = 0.5
    retry: tuple[str, ...] = ()  # error reasons whose inputs this run embeds again
    # Longer audio files are listed as too_long, not embedded: a decoded hour is ~230 MB of float32,
    # copied a few times on its way to the model (a decode task peaked at ~1 GB on a 50-minute WAV).
    # A DATASET_DIR's tracks were limited by ingest's own --max-duration-s.
    max_duration_s: float = EMBED_MAX_DURATION_S


@dataclass
class EmbedSummary:
    out: Path
    tracks: int
    errors: int
    skipped: int
    seconds: float
    by_reason: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- inputs
def is_dataset_dir(path: str) -> bool:
    return "://" not in path and (Path(path) / "index.parquet").is_file() and (Path(path) / "dataset.json").is_file()


UNKNOWN = -1  # a source's bytes or modification time not known (yet): null in the parts


def input_items(
    sources: list[str], report: Callable[[str], None] = print, out: Path | None = None
) -> tuple[list[dict], Sources]:
    """Raw audio URIs (same resolution as ingest; a walk passes over OUT_DIR ``out``) or the tracks
    of one DATASET_DIR; and what the walk found (its bucket listings give sizes and times)."""
    if len(sources) == 1 and is_dataset_dir(sources[0]):
        from mvssl_dist.shards.reader import damaged_message, damaged_shards

        if damaged := damaged_shards(sources[0]):  # said once here; each lost track is an error row
            report(f"[embed] {damaged_message(damaged)}; their tracks are listed as failed")
        index = pq.read_table(Path(sources[0]) / "index.parquet").to_pylist()
        root = str(Path(sources[0]).resolve())
        return [
            {
                "uri": r["source_uri"],
                "key": r["key"],
                "shard": f"{root}/{r['shard']}",
                "source_bytes": r["source_bytes"],
                "source_mtime_ns": stamp if (stamp := r.get("source_mtime_ns")) is not None else UNKNOWN,
            }
            for r in index
        ], Sources()
    from mvssl_dist.shards.uris import find_sources, not_read_message

    found = find_sources(sources, output=out)
    if found.other_files:
        report(f"[embed] {not_read_message(found.other_files)}; name them or list them to embed them too")
    items = [
        {"uri": u, "key": "", "shard": "", "source_bytes": UNKNOWN, "source_mtime_ns": UNKNOWN} for u in found.uris
    ]
    return items, found


def load_track(item: dict, max_seconds: float) -> tuple[str, np.ndarray, tuple[int, int]]:
    """(key, float32 mono 16 kHz audio, (source bytes, mtime_ns)) from a raw URI (the stamp taken
    as it is read; ``too_long`` past ``max_seconds``) or from the ingested shard (the stamp the
    index holds)."""
    if item["shard"]:
        from mvssl_dist.shards.reader import iter_shard_members

        why = "missing"
        for member in iter_shard_members(Path(item["shard"]), {item["key"]}):
            if getattr(member, "key", None) == item["key"]:
                return item["key"], member.audio, (item["source_bytes"], item["source_mtime_ns"])
            why = member.reason if member.name.startswith(item["key"]) else why
        raise ValueError(f"track {item['key']} in {item['shard']}: {why}")
    from mvssl_dist.audio import decode_with_info
    from mvssl_dist.shards.uris import decoding_input

    with decoding_input(item["uri"]) as (source, sha, size, mtime_ns):  # a large file is decoded from disk
        audio = decode_with_info(source, SAMPLE_RATE, name=display_uri(item["uri"]), max_seconds=max_seconds).audio
    return sha[:32], audio, (size, UNKNOWN if mtime_ns is None else mtime_ns)


def prepare_tracks(batch: dict, segment_s: float, hop_s: float, max_duration_s: float) -> dict:
    """``map_batches`` (CPU tasks): decode and cut; failures become rows with an error."""
    from mvssl_dist.audio import AudioDecodeError

    segment, hop = int(segment_s * SAMPLE_RATE), int(hop_s * SAMPLE_RATE)
    fields = ("key", "duration_s", "num_segments", "segments", "rms_ratios", "reason", "detail", *STAMP)
    out = {k: [] for k in ("uri", *fields)}
    for i in range(len(batch["uri"])):
        item = {k: batch[k][i] for k in ("uri", "key", "shard", *STAMP)}
        try:
            key, audio, stamp = load_track(item, max_duration_s)
            duration_s = len(audio) / SAMPLE_RATE
            # normalised after cutting (the same values: padding is zeros), in place, and the decoded
            # array let go before serialising: a long track is hundreds of MB a copy
            segments = cut_segments(audio, segment, hop)
            ratios = rms_ratios(segments, audio)
            segments = peak_normalise(segments, in_place=True)
            del audio
            row = (key, duration_s, len(segments), segments.tobytes(), ratios.tobytes(), "", "", *stamp)
        except AudioDecodeError as err:
            row = ("", 0.0, 0, b"", b"", err.reason, str(err), UNKNOWN, UNKNOWN)
        except (OSError, ValueError) as err:
            row = ("", 0.0, 0, b"", b"", "unreadable", f"{item['uri']}: {err}", UNKNOWN, UNKNOWN)
        out["uri"].append(item["uri"])
        for name, value in zip(fields, row, strict=True):
            out[name].append(value)
    return {
        k: np.array(v, dtype=object)
        if k in ("segments", "rms_ratios", "uri", "key", "reason", "detail")
        else np.array(v)
        for k, v in out.items()
    }


def rms_ratios(segments: np.ndarray, audio: np.ndarray) -> np.ndarray:
    """``[n]`` float32: each segment's RMS over the whole track's (a padded last segment counted
    with its zeros; 0 for a silent track). The reference's silence rule,
    ``10 * ln(ratio) < -7.5``, reads it when the probe trains (:func:`mvssl_dist.evaluate.run.audible`)."""
    track = float(np.dot(audio, audio)) / max(1, len(audio))
    energy = np.einsum("ij,ij->i", segments, segments) / segments.shape[1]
    if not track > 0:
        return np.zeros(len(segments), np.float32)
    return np.sqrt(energy / track).astype(np.float32)


class EmbedActor:
    """``map_batches`` callable class: holds the backbone (GPU + bf16 when it has one)."""

    def __init__(self, model: str, batch_size: int, segment_samples: int, tracking_uri: str | None) -> None:
        import torch

        from mvssl_dist.models import load_backbone

        if tracking_uri:
            os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cpu":  # Ray sets OMP_NUM_THREADS=1; use the CPUs this actor was given
            import ray

            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
            torch.set_num_threads(max(1, int(round(cpus))))
        self.model = load_backbone(model, device=self.device)
        self.batch_size, self.segment_samples = batch_size, segment_samples

    def __call__(self, batch: dict) -> dict:
        import torch

        counts = [int(n) for n in batch["num_segments"]]
        clips = [
            np.frombuffer(b, np.float32).reshape(n, self.segment_samples)
            for b, n in zip(batch["segments"], counts, strict=True)
            if n
        ]
        embeddings = np.zeros((sum(counts), EMBEDDING_DIM), np.float32)
        done = 0
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device == "cuda"):
            for clip_batch in forward_batches(clips, self.batch_size):
                chunk = torch.from_numpy(clip_batch).to(self.device)
                embeddings[done : done + len(chunk)] = self.model(chunk).float().cpu().numpy()
                done += len(chunk)
        out = {
            k: batch[k] for k in ("uri", "key", "duration_s", "num_segments", "rms_ratios", "reason", "detail", *STAMP)
        }
        out["segment_embeddings"] = np.array(
            [b.tobytes() for b in np.split(embeddings, np.cumsum(counts)[:-1])], dtype=object
        )
        return out


def forward_batches(clips: list[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """The rows of ``clips`` (each ``[n, samples]``, read-only views of a batch's bytes), in order,
    ``size`` at a time, as writable copies: only the batch in hand is copied, not every track at
    once (eight hour-long tracks are ~1.8 GB)."""
    pending: list[np.ndarray] = []
    held = 0
    for clip in clips:
        start = 0
        while start < len(clip):
            take = min(size - held, len(clip) - start)
            pending.append(clip[start : start + take])
            held, start = held + take, start + take
            if held == size:
                yield np.concatenate(pending)
                pending, held = [], 0
    if pending:
        yield np.concatenate(pending)


# --------------------------------------------------------------------------- output
STAMP = ("source_bytes", "source_mtime_ns")  # what the source was when embedded: a later change is seen
STAMP_FIELDS = [(name, pa.int64()) for name in STAMP]


def track_schema() -> pa.Schema:
    return pa.schema(
        [
            ("key", pa.string()),
            ("source_uri", pa.string()),
            *STAMP_FIELDS,
            ("duration_s", pa.float64()),
            ("num_segments", pa.int32()),
            ("embedding", pa.list_(pa.float32(), EMBEDDING_DIM)),
        ]
    )


def segment_schema() -> pa.Schema:
    return pa.schema(
        [
            ("key", pa.string()),
            ("source_uri", pa.string()),
            *STAMP_FIELDS,
            ("start_s", pa.float64()),
            ("segment", pa.int32()),
            ("embedding", pa.list_(pa.float32(), EMBEDDING_DIM)),
            ("rms_ratio", pa.float32()),  # the segment's RMS over the track's (parts written before: absent)
        ]
    )


def committing(level: str) -> str:
    """The kind of part whose rows say a track is done: ``segments`` for ``--level segment``,
    else ``tracks`` (with ``both`` it is written after its segments part)."""
    return "segments" if level == "segment" else "tracks"


def failed_sources(out: Path) -> set[str]:
    """Inputs OUT_DIR lists in its errors parts (finished too: they are tried again on ``--retry``)."""
    failed: set[str] = set()
    for part in out.glob("errors-*.parquet"):
        failed.update(pq.read_table(part, columns=["source_uri"]).column("source_uri").to_pylist())
    return failed


def embedded_stamps(out: Path, level: str) -> dict[str, tuple]:
    """``{uri: (key, source bytes, mtime_ns)}`` of the inputs OUT_DIR has embedded (the committing
    parts; a part written before stamps were kept gives None for them)."""
    done: dict[str, tuple] = {}
    for part in sorted(out.glob(f"{committing(level)}-*.parquet")):
        names = pq.read_schema(part).names
        table = pq.read_table(part, columns=[c for c in ("source_uri", "key", *STAMP) if c in names])
        columns = [table.column(c).to_pylist() if c in names else [None] * table.num_rows for c in ("key", *STAMP)]
        done.update(zip(table.column("source_uri").to_pylist(), zip(*columns, strict=True), strict=True))
    return done


def changed_since_embedded(done: dict[str, tuple], items: list[dict], listed: Sources) -> dict[str, str]:
    """Inputs embedded earlier (``done``: :func:`embedded_stamps`) whose source changed since:
    ``{uri: how}``. A DATASET_DIR's track is another track when the index gives its source another
    key (ingested again after a change), and gone when the index no longer holds it; a raw file is
    told as ingest tells (by size or modification time, or gone: a local ``stat``, a bucket walk's
    listing ``listed``; keys named in a list file are not asked). Embedded inputs outside this
    run's sources are checked too."""
    changed = {}
    by_uri = {item["uri"]: item for item in items}
    from_dataset = any(item["shard"] for item in items)
    for uri, (key, *then) in done.items():
        item = by_uri.get(uri)
        if from_dataset:
            how = "gone from the dataset" if item is None else None
            if item is not None and key != item["key"]:
                how = f"ingested again as track {item['key']}; embedded as {key}"
        else:
            how = change(*then, stamp_now(uri, listed))
        if how:
            changed[uri] = how
    return changed


def drop_embedded(out: Path, level: str, uris: set[str]) -> None:
    """Take ``uris``' rows out of OUT_DIR's parts so that this run embeds them again. Segments parts
    go first and tracks parts, which commit them, last: a run stopped part-way finds the same
    changes on its next start and finishes the job. The caller holds OUT_DIR."""
    wanted = pa.array(sorted(uris), pa.string())
    for kind in PAIRED if level == "both" else (committing(level),):
        for part in sorted(out.glob(f"{kind}-*.parquet")):
            table = pq.read_table(part)
            kept = table.filter(pc.invert(pc.is_in(table.column("source_uri"), wanted)))
            if kept.num_rows < table.num_rows:
                write_parquet(part, kept)  # kept even when empty: a --level both pair stays a pair


def reopen_changed(out: Path, options: EmbedOptions, items: list[dict], listed: Sources, report) -> set[str]:
    """Say which embedded inputs changed since; with ``--retry changed``, embed them again. Returns
    the inputs OUT_DIR holds embedded afterwards (its committing parts, read once)."""
    done = embedded_stamps(out, options.level)
    changed = changed_since_embedded(done, items, listed)
    if changed and CHANGED in options.retry:
        drop_embedded(out, options.level, set(changed))
        report(f"[embed] --retry changed: {len(changed)} input(s) are embedded again or, if gone, taken out")
        return set(done) - set(changed)
    if changed:
        what = "embedded input(s) changed since they were embedded"
        report(changed_line("embed", changed, what, "embeds them again (one gone: its rows are taken out)"))
    return set(done)


def reopen_errors(out: Path, reasons: tuple[str, ...], uris: list[str]) -> int:
    """Take this run's inputs (``uris``) that failed for one of ``reasons`` out of the errors
    parts, so that the run embeds them again; how many. Other inputs' errors stay listed. The
    caller holds OUT_DIR."""
    dropped = 0
    for part in sorted(out.glob("errors-*.parquet")):
        table = pq.read_table(part)
        again = pc.and_(
            pc.is_in(table.column("reason"), pa.array(list(reasons), pa.string())),
            pc.is_in(table.column("source_uri"), pa.array(uris, pa.string())),
        )
        kept = table.filter(pc.invert(again))
        if kept.num_rows == table.num_rows:
            continue
        dropped += table.num_rows - kept.num_rows
        if kept.num_rows:
            write_parquet(part, kept)
        else:
            part.unlink()
    return dropped


def drop_unpaired_parts(out: Path, level: str) -> list[Path]:
    """With ``--level both`` every flush writes a segments part, then its tracks part (the commit).
    A run stopped between the two (a full disk, a kill) leaves one without the other; it is
    deleted, so that its tracks are embedded again whole. The caller holds OUT_DIR."""
    if level != "both":
        return []
    stamps = {kind: {p.name.split("-", 1)[1] for p in out.glob(f"{kind}-*.parquet")} for kind in PAIRED}
    dropped = [
        out / f"{kind}-{stamp}" for kind in PAIRED for stamp in stamps[kind] - set.intersection(*stamps.values())
    ]
    for path in dropped:
        path.unlink(missing_ok=True)
    return dropped


def known(value) -> int | None:
    return None if value is None or int(value) == UNKNOWN else int(value)


def fixed_list(matrix: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), pa.float32()), EMBEDDING_DIM)


def embedding_matrix(column: pa.ChunkedArray) -> np.ndarray:
    """The inverse of :func:`fixed_list`: an ``embedding`` column read back as ``[rows, 1024]`` float32."""
    return column.combine_chunks().values.to_numpy(zero_copy_only=False).reshape(-1, EMBEDDING_DIM)


class PartWriter:
    """Collects finished tracks and writes them in atomic part files."""

    def __init__(self, out: Path, options: EmbedOptions) -> None:
        self.out, self.options = out, options
        self.tracks: list = []
        self.errors: list = []
        self.seq = len(
            list(out.glob("tracks-*.parquet"))
            + list(out.glob("segments-*.parquet"))
            + list(out.glob("errors-*.parquet"))
        )

    def add(self, row: dict) -> None:
        (self.errors if row["reason"] else self.tracks).append(row)
        if len(self.tracks) >= self.options.rows_per_part:
            self.flush()

    def write(self, path: Path, table: pa.Table) -> None:
        try:
            write_parquet(path, table)
        except OSError as err:  # a full disk: the parts written before stay
            if not (err.filename and err.strerror):
                raise
            goes_on = "the tracks written before it are kept, and the same command goes on from there"
            raise OSError(err.errno, f"{err.strerror}; {goes_on}", err.filename) from err

    def flush(self) -> None:
        stamp = f"{time.time_ns()}-{self.seq:06d}"
        self.seq += 1
        if self.tracks:
            rows, self.tracks = self.tracks, []
            segs = [np.frombuffer(r["segment_embeddings"], np.float32).reshape(-1, EMBEDDING_DIM) for r in rows]
            if self.options.level in ("segment", "both"):
                hop = self.options.hop_s
                table = pa.table(
                    {
                        "key": [r["key"] for r, s in zip(rows, segs, strict=True) for _ in s],
                        "source_uri": [r["uri"] for r, s in zip(rows, segs, strict=True) for _ in s],
                        **{k: [known(r[k]) for r, s in zip(rows, segs, strict=True) for _ in s] for k in STAMP},
                        "start_s": [i * hop for s in segs for i in range(len(s))],
                        "segment": [i for s in segs for i in range(len(s))],
                        "embedding": fixed_list(np.concatenate(segs)),
                        "rms_ratio": np.concatenate([np.frombuffer(r["rms_ratios"], np.float32) for r in rows]),
                    },
                    schema=segment_schema(),
                )
                self.write(self.out / f"segments-{stamp}.parquet", table)
            if self.options.level in ("track", "both"):
                table = pa.table(
                    {
                        "key": [r["key"] for r in rows],
                        "source_uri": [r["uri"] for r in rows],
                        **{k: [known(r[k]) for r in rows] for k in STAMP},
                        "duration_s": [float(r["duration_s"]) for r in rows],
                        "num_segments": [int(r["num_segments"]) for r in rows],
                        "embedding": fixed_list(np.stack([s.mean(axis=0) for s in segs])),
                    },
                    schema=track_schema(),
                )
                self.write(self.out / f"tracks-{stamp}.parquet", table)  # last: it commits the flush
        if self.errors:
            rows, self.errors = self.errors, []
            table = pa.table(
                {
                    "source_uri": [r["uri"] for r in rows],
                    "reason": [r["reason"] for r in rows],
                    "detail": [r["detail"] for r in rows],
                },
                schema=ERROR_SCHEMA,
            )
            self.write(self.out / f"errors-{stamp}.parquet", table)


def model_facts(model: str) -> dict:
    facts = {"model": model}
    if model.startswith("models:/"):
        import mlflow

        from mvssl_dist.tracking import registry_version, without_password

        version = registry_version(model)
        facts.update(
            model_name=version.name,
            model_version=version.version,
            model_source=version.source,  # what was registered: unique across registries, unlike NAME/VERSION
            model_tags=dict(version.tags),
            run_id=version.run_id,
        )
        facts["tracking_uri"] = without_password(mlflow.get_tracking_uri())  # where `neighbours --query` finds it
    return facts


def weights_identity(model: str, facts: dict) -> dict:
    """What makes two runs' embeddings the same model's: the registry version (an alias is pinned
    to the version it names now) and what it was registered from (another registry's version of
    the same name and number is another model), a random backbone's seed, or a weights file's
    bytes (a checkpoint folder: its ``state.pt``, which training rewrites in place)."""
    if "model_version" in facts:
        identity = {"model_name": facts["model_name"], "model_version": str(facts["model_version"])}
        if facts.get("model_source"):
            identity["model_source"] = facts["model_source"]
        return identity
    from mvssl_dist.models import names_random

    if names_random(model):
        return {"random_seed": int(model.partition(":")[2] or 0)}
    path = Path(model)
    path = path / "state.pt" if path.is_dir() else path
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"weights_sha256": digest.hexdigest()}


def same_weights(before: dict, now: dict) -> bool:
    """Whether two ``weights_identity`` records name the same model. A registry version recorded
    before its source was (mvssl before this check) is compared by name and number alone."""
    if "model_version" in before and "model_source" not in before:
        now = {k: v for k, v in now.items() if k != "model_source"}
    return before == now


def describe(identity: dict) -> str:
    if "model_version" in identity:
        source = f" (registered from {identity['model_source']})" if "model_source" in identity else ""
        return f"models:/{identity['model_name']}/{identity['model_version']}{source}"
    if "random_seed" in identity:
        return f"random:{identity['random_seed']}"
    return f"weights sha256 {identity['weights_sha256'][:12]}"


def check_out_dir(out: Path, options: EmbedOptions, weights: dict) -> EmbedOptions:
    """Refuse to add to an OUT_DIR holding embeddings of other weights or another cut; returns the
    options to run with (an OUT_DIR made with ``--level both`` keeps both)."""
    record_file = out / "embed.json"
    if not record_file.exists() or not any(out.glob("*-*.parquet")):
        return options  # nothing embedded there yet
    try:
        record = json.loads(record_file.read_text())
    except ValueError:
        raise EmbedError(f"{record_file}: unreadable, so what OUT_DIR holds is unknown; use another --out") from None
    before = record.get("weights")
    if before is not None and not same_weights(before, weights):
        raise EmbedError(
            f"--out {out}: embedded with {describe(before)}, not {describe(weights)} ({options.model}); "
            "use another --out, or remove it to start again"
        )
    done = record.get("options", {})
    for key in ("segment_s", "hop_s"):
        if key in done and float(done[key]) != float(getattr(options, key)):
            flag = "--" + key.replace("_", "-")
            raise EmbedError(f"--out {out}: embedded with {flag} {done[key]:g}, not {getattr(options, key):g}")
    level = done.get("level", options.level)
    if level == "both" or level == options.level:
        return replace(options, level=level)
    raise EmbedError(f"--out {out}: embedded with --level {level}, not {options.level}; use another --out")


def claim_out_dir(out: Path, options: EmbedOptions, facts: dict) -> None:
    """Before the first part is written: ``embed.json`` says whose embeddings OUT_DIR holds, so a
    run killed before its end is checked like a finished one."""
    write_record(out, {**facts, "options": public_options(options), "counts": None, "finished_at": None})


def public_options(options: EmbedOptions) -> dict:
    return {k: v for k, v in asdict(options).items() if k != "out"}


def write_record(out: Path, record: dict) -> None:
    atomic_write(out / "embed.json", lambda tmp: tmp.write_text(json.dumps(record, indent=2, default=str) + "\n"))


# --------------------------------------------------------------------------- driver
def check_counts(workers: int, gpus: float, batch_size: int = 1) -> None:
    """The model actors' counts (``mvssl embed``, and ``mvssl evaluate`` which embeds through it)."""
    if batch_size < 1:
        raise EmbedError(f"--batch-size {batch_size}: must be >= 1")
    if workers < 1:
        raise EmbedError(f"--workers {workers}: must be >= 1")
    if not 0 <= gpus <= 1:
        raise EmbedError(f"--gpus {gpus:g}: GPUs per model actor, 0 to 1 (more GPUs: raise --workers)")


def check_max_duration(seconds: float) -> None:
    """The length limit (``mvssl embed``, and ``mvssl evaluate`` which embeds through it)."""
    if not seconds > 0:
        raise EmbedError(f"--max-duration-s {seconds:g}: must be > 0")


def check_gpus(options: EmbedOptions, report: Callable[[str], None]) -> None:
    """This machine's Ray without the GPUs would wait for ever: refuse. A cluster may be adding GPU
    nodes (autoscaling): say what the job waits for."""
    from mvssl_dist.raytools import gpus_short, joins_cluster

    have = gpus_short(options.gpus, options.ray_address)
    if have is None:
        return
    if not joins_cluster(options.ray_address):
        raise EmbedError(f"--gpus {options.gpus:g}: this machine has {have:g} GPUs (run on CPU with --gpus 0)")
    report(f"[embed] the cluster has {have:g} GPUs now; waiting for one (an autoscaler must add GPU nodes)")


def embed_library(options: EmbedOptions, report: Callable[[str], None] = print) -> EmbedSummary:
    """Embed ``options.sources`` into ``options.out``, resuming what is there; the folder is held
    for the run, so a second run into it is refused (:mod:`mvssl_dist.folder_lock`)."""
    from mvssl_dist.models import WeightsError, absolute_source, load_backbone
    from mvssl_dist.tracking import default_tracking_uri, quick_requests

    options = replace(options, model=absolute_source(options.model))  # the model actors' folder is Ray's
    if options.level not in ("track", "segment", "both"):
        raise EmbedError(f"--level {options.level}: must be track, segment or both")
    if options.segment_s != 4.0:
        raise EmbedError("--segment-s: the backbone's attention pooling is fixed to 4 s segments")
    if options.hop_s <= 0:
        raise EmbedError("--hop-s must be > 0")
    check_max_duration(options.max_duration_s)
    check_counts(options.workers, options.gpus, options.batch_size)
    if problem := retry_problem(options.retry, (CHANGED,)):
        raise EmbedError(problem)
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or (
        default_tracking_uri() if options.model.startswith("models:/") else None
    )
    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    try:
        with quick_requests():  # a registry that does not answer is said in seconds, not minutes
            load_backbone(options.model)  # fail fast, in the driver, with the loader's one-line error
            facts = model_facts(options.model)
    except WeightsError as err:
        raise EmbedError(str(err)) from None
    facts["weights"] = weights_identity(options.model, facts)
    with output_folder(options.out, "--out", "mvssl embed", EmbedError) as out:
        return embed_into(out, options, facts, tracking_uri, report)


def embed_into(
    out: Path, options: EmbedOptions, facts: dict, tracking_uri: str | None, report: Callable[[str], None]
) -> EmbedSummary:
    """The embedding run proper, with OUT_DIR held (see :func:`embed_library`)."""
    import ray

    from mvssl_dist.raytools import init_ray

    options = check_out_dir(out, options, facts["weights"])
    remove_temporaries(out)
    if dropped := [p.name for p in drop_unpaired_parts(out, options.level)]:
        report(f"[embed] {', '.join(dropped)}: left by a run stopped part-way; its tracks are embedded again")
    items, listed = input_items(options.sources, report, out)
    reasons = tuple(r for r in options.retry if r != CHANGED)
    if reasons and (again := reopen_errors(out, reasons, [it["uri"] for it in items])):
        report(f"[embed] --retry {','.join(reasons)}: {again} input(s) that failed are embedded again")
    done = reopen_changed(out, options, items, listed, report) | failed_sources(out)
    todo = [it for it in items if it["uri"] not in done]
    report(f"[embed] {len(items)} tracks, {len(items) - len(todo)} already embedded, {len(todo)} to do")
    start = time.perf_counter()
    writer = PartWriter(out, options)
    if todo:
        check_gpus(options, report)
        claim_out_dir(out, options, facts)
        init_ray(options.ray_address)
        # leave at least one CPU for the decode tasks, whatever --workers asks for
        total = float(ray.cluster_resources().get("CPU", 1))
        actor_cpus = min(options.actor_cpus, max(0.25, (total - 1) / max(1, options.workers)))
        ds = ray.data.from_items(todo, override_num_blocks=max(1, min(len(todo), 200)))
        # The memory hint (a worker with torch loaded, plus a decoded hour of audio) also makes the remote args differ from
        # the actors', which keeps Ray Data from fusing decoding into the model actors (decode and
        # forward would then run one after the other in one process).
        ds = ds.map_batches(
            prepare_tracks,
            fn_kwargs={
                "segment_s": options.segment_s,
                "hop_s": options.hop_s,
                "max_duration_s": options.max_duration_s,
            },
            batch_size=1,
            num_cpus=options.decode_cpus,
            memory=512 * 1024**2,
        )
        ds = ds.map_batches(
            EmbedActor,
            fn_constructor_args=(options.model, options.batch_size, int(options.segment_s * SAMPLE_RATE), tracking_uri),
            batch_size=8,
            compute=ray.data.ActorPoolStrategy(size=max(1, options.workers)),
            num_gpus=options.gpus,
            num_cpus=0 if options.gpus > 0 else actor_cpus,
        )
        progress = Progress(len(todo), start, report)
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for i in range(len(batch["uri"])):
                    writer.add({k: batch[k][i] for k in batch})
                progress.add(len(batch["uri"]))
        finally:  # Ctrl-C, or SIGTERM (Ray's driver handler exits): keep what is done for the re-run
            writer.flush()
    return finalize(out, options, facts, len(items) - len(todo), time.perf_counter() - start)


class Progress:
    """One line when the first results arrive, then one per tenth of the work."""

    def __init__(self, total: int, start: float, report: Callable[[str], None]) -> None:
        self.total, self.start, self.report, self.done, self.next_tenth = total, start, report, 0, 1

    def add(self, tracks: int) -> None:
        elapsed = time.perf_counter() - self.start
        if self.done == 0:
            self.report(f"[embed] first results after {elapsed:.1f} s")
        self.done += tracks
        if self.done * 10 >= self.next_tenth * self.total:
            self.next_tenth = self.done * 10 // self.total + 1
            self.report(f"[embed] {self.done}/{self.total} tracks, {elapsed:.1f} s")


def finalize(out: Path, options: EmbedOptions, facts: dict, skipped: int, seconds: float) -> EmbedSummary:
    errors = [pq.read_table(p) for p in sorted(out.glob("errors-*.parquet"))]
    table = pa.concat_tables(errors) if errors else ERROR_SCHEMA.empty_table()
    write_parquet(out / "errors.parquet", table)
    tracks = sum(pq.read_metadata(p).num_rows for p in out.glob("tracks-*.parquet"))
    if options.level == "segment":
        tracks = len(
            set().union(
                *[
                    set(pq.read_table(p, columns=["key"]).column("key").to_pylist())
                    for p in out.glob("segments-*.parquet")
                ]
                or [set()]
            )
        )
    by_reason: dict[str, int] = {}
    for reason in table.column("reason").to_pylist():
        by_reason[reason] = by_reason.get(reason, 0) + 1
    record = {
        **facts,
        "options": public_options(options),
        "counts": {"tracks": tracks, "errors": table.num_rows, **by_reason},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(seconds, 3),
    }
    write_record(out, record)
    return EmbedSummary(out, tracks, table.num_rows, skipped, seconds, by_reason)
