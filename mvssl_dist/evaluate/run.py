"""Driver of one evaluation: task -> audio check -> cached segment features -> probe -> metrics -> MLflow.

Features come from the batch-embedding pipeline (``mvssl embed --level segment``) and are kept
in ``<cache_dir>/<model>-v<version>-<run>/features``: a second probe on the same model version (other
task, other probe, other train fraction) embeds only the tracks it has not seen.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from mvssl_dist.constants import EMBED_MAX_DURATION_S, EMBEDDING_DIM, SEGMENT_SECONDS
from mvssl_dist.evaluate.metrics import Margin, TagScore, roc_auc_margin, tagging_metrics
from mvssl_dist.evaluate.probe import (
    PROBE_REVISION,
    TRAIN_SEGMENTS_PER_TRACK,
    ProbeConfig,
    SplitFeatures,
    check_config,
    epoch_size,
    track_scores,
    train_probe,
)
from mvssl_dist.evaluate.tasks import SPLITS, Task, limit_train, load_task
from mvssl_dist.shards.uris import local_folder

EXPERIMENT = "mvssl-evaluate"


class EvaluateError(RuntimeError):
    """The evaluation cannot run; one line."""


@dataclass
class EvaluateOptions:
    model: str
    task: str
    audio_root: str
    split_dir: str | None = None
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    train_fraction: float = 1.0
    promote_alias: str | None = None
    max_missing: float = 0.05  # refuse when a larger fraction of the task's audio is missing/undecodable
    cache_dir: str = "evaluations"
    tracking_uri: str | None = None
    experiment: str = EXPERIMENT
    workers: int = 1
    gpus: float = 0
    ray_address: str | None = None
    features_dir: str | None = None  # segment embeddings already written by `mvssl embed --level segment|both`
    max_duration_s: float = EMBED_MAX_DURATION_S  # longer audio files are listed as too_long (mvssl embed's limit)


@dataclass
class EvaluateResult:
    task: str
    metrics: dict
    per_tag: list[TagScore]
    missing: list[tuple[str, str]]
    features_dir: Path
    run_id: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    # the tracks, labels and probe settings the score was measured with (``scoring_fingerprint``)
    fingerprint: str = ""
    promoted: bool | None = None
    promotion_note: str = ""
    seconds: float = 0.0
    # the test split's tracks (task paths), labels and track scores: two results on the same
    # task can be compared track by track (``metrics.roc_auc_margin``)
    test_tracks: list[str] = field(default_factory=list)
    test_labels: np.ndarray | None = None
    test_scores: np.ndarray | None = None


# --------------------------------------------------------------------------- model identity
def model_identity(model: str) -> tuple[str, str, dict]:
    """``(pinned model URI, cache folder name, registry facts)``; an alias is pinned to its version."""
    from mvssl_dist.embed.batch import model_facts, weights_identity
    from mvssl_dist.models import WeightsError, load_backbone, names_random
    from mvssl_dist.tracking import quick_requests

    # A registry version's weights are loaded (a bad one said in one line) by embed_library, in the
    # driver; a file or seed is loaded below too, so that it is said before the audio is looked for.
    try:
        with quick_requests():  # a registry that does not answer is said in seconds
            facts = model_facts(model)
    except Exception as err:  # the registry answered but the alias/version does not exist
        raise EvaluateError(f"--model {model}: {str(err).splitlines()[0]}") from None
    if "model_version" in facts:
        name, version = facts["model_name"], facts["model_version"]
        return f"models:/{name}/{version}", f"{name}-v{version}-{registration_id(facts)}", facts
    try:  # loaded again by embed_library (11 MB, under a second): the cost of saying it first
        load_backbone(model)
    except WeightsError as err:
        raise EvaluateError(str(err)) from None
    if names_random(model):
        return model, model.replace(":", "-"), facts
    # a weights file by its content; a checkpoint folder by its state.pt's (rewritten in place by training)
    try:
        digest = weights_identity(model, facts)["weights_sha256"][:12]
    except OSError:
        raise EvaluateError(f"--model {model}: no such weights file or checkpoint folder") from None
    return model, f"{Path(model).resolve().stem}-{digest}", facts


def registration_id(facts: dict) -> str:
    """8 characters telling a registry version from another registry's of the same name and number
    (its training run's ID, else a digest of its source), so cached features are never another's."""
    if facts.get("run_id"):
        return facts["run_id"][:8]
    return hashlib.sha256(str(facts.get("model_source")).encode()).hexdigest()[:8]


# --------------------------------------------------------------------------- audio
def track_uri(audio_root: str, path: str) -> str:
    from mvssl_dist.shards.uris import path_to_uri

    if "://" in path:
        return path
    if "://" in audio_root:
        return audio_root.rstrip("/") + "/" + path
    return path_to_uri(path if os.path.isabs(path) else os.path.join(audio_root, path))


def find_missing(task: Task, audio_root: str) -> tuple[dict[int, str], list[tuple[str, str]]]:
    """``({track index: uri} of present tracks, [(path, reason)] of missing ones)``; remote URIs are
    trusted. A local track is found under any of ``task.local_names`` (MTG-Jamendo's ``.low.mp3``)."""
    from mvssl_dist.shards.uris import uri_to_path

    present, missing = {}, []
    for i, track in enumerate(task.tracks):
        uris = [track_uri(audio_root, name) for name in task.local_names(track.path)]
        found = next((u for u in uris if not u.startswith("file://") or os.path.isfile(uri_to_path(u))), None)
        if found is None:
            missing.append((track.path, "not_found"))
        else:
            present[i] = found
    return present, missing


def check_missing(missing: list, total: int, limit: float, listing: Path, audio_root: str) -> None:
    write_missing(listing, missing)
    if total and len(missing) / total > limit:
        raise EvaluateError(
            f"{len(missing)} of {total} task tracks are missing or undecodable under {audio_root} "
            f"(first: {missing[0][0]}: {missing[0][1]}); more than --max-missing {limit:g}; listed in {listing}"
        )


def write_missing(path: Path, missing: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "reason"])
        writer.writerows(missing)


# --------------------------------------------------------------------------- features
def parts_without_levels(out: Path) -> list[Path]:
    """Segments parts written before ``rms_ratio`` was kept (the probe's silence rule needs it)."""
    import pyarrow.parquet as pq

    return [p for p in sorted(out.glob("segments-*.parquet")) if "rms_ratio" not in pq.read_schema(p).names]


def embed_features(
    uris: list[str], model_uri: str, out: Path, listing: Path, options: EvaluateOptions, report, own_cache: bool
) -> None:
    """Embed what ``out`` lacks of ``uris``. In the evaluation's ``own_cache`` (not a
    ``--features-dir``), parts written before segment levels were kept are embedded again."""
    from mvssl_dist.embed.batch import EmbedError, EmbedOptions, embed_library
    from mvssl_dist.folder_lock import exclusive

    opts = EmbedOptions(
        [str(listing)],
        model_uri,
        str(out),
        level="segment",
        workers=options.workers,
        gpus=options.gpus,
        ray_address=options.ray_address,
        # a read that failed (network, disk) is tried again, a file changed since its features were
        # cached is embedded again, and so is one too long for an earlier --max-duration-s (its
        # declared length is read again, no more); a file that does not decode is not
        retry=("unreadable", "changed", "too_long"),
        max_duration_s=options.max_duration_s,
    )
    # Two evaluations of one model share its features: the second waits for the first's, then reuses them.
    with exclusive(out, "mvssl evaluate", wait=True, report=report):
        if own_cache and (stale := parts_without_levels(out)):
            report(
                f"[evaluate] {len(stale)} cached features part(s) predate segment levels; embedding their tracks again"
            )
            for part in stale:
                part.unlink()
        listing.write_text("".join(u + "\n" for u in uris))
        try:
            embed_library(opts, report=report)
        except EmbedError as err:
            raise EvaluateError(str(err)) from None


@dataclass
class SegmentIndex:
    """Where each wanted track's segment embeddings lie in a features folder, read from the
    ``source_uri``, ``segment``, ``start_s`` and ``rms_ratio`` columns alone: the embeddings
    themselves are read once, by :func:`split_features`, straight into the split matrices (a copy
    per row, never more; a whole-track MTG-Jamendo split is gigabytes)."""

    parts: list[Path]
    kept: list[np.ndarray]  # per part: the rows that belong to a wanted track
    first: np.ndarray  # per part: its first kept row's number among all parts' kept rows
    order: np.ndarray  # kept-row numbers sorted by track, then segment
    start: dict[str, int]  # track uri -> its rows' start in ``order``
    count: dict[str, int]  # track uri -> its number of segments (only tracks with features)
    ratio: np.ndarray  # per kept-row number: its segment's RMS over its track's (NaN: not recorded)
    failed: dict[str, str] = field(default_factory=dict)  # wanted uri without features -> the embed error


# The reference reads only a track's first 10 minutes (its loader's max_dur_in_minutes), to train
# the probe and to score the track: segments that end later are left out.
READ_SECONDS = 600.0


def read_features(out: Path, wanted: set[str]) -> SegmentIndex:
    """The :class:`SegmentIndex` of the wanted URIs in ``out``'s segments parts (their segments
    inside the first :data:`READ_SECONDS`), and the failure reason of those its errors list."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    names = sorted(wanted)
    value_set = pa.array(names, pa.string())
    parts, kept, codes, segments, ratios = [], [], [], [], []
    for part in sorted(out.glob("segments-*.parquet")):
        parquet = pq.ParquetFile(part)
        levels = "rms_ratio" in parquet.schema_arrow.names  # parts written before levels were kept: NaN
        table = parquet.read(columns=["source_uri", "segment", "start_s"] + ["rms_ratio"] * levels)
        code = pc.index_in(table["source_uri"], value_set=value_set).combine_chunks()
        read = table["start_s"].to_numpy() + SEGMENT_SECONDS <= READ_SECONDS + 1e-6
        rows = np.flatnonzero(code.is_valid().to_numpy(zero_copy_only=False) & read)
        if not len(rows):
            continue
        parts.append(part)
        kept.append(rows)
        codes.append(code.fill_null(0).to_numpy()[rows])
        segments.append(table["segment"].to_numpy()[rows])
        ratios.append(table["rms_ratio"].to_numpy()[rows] if levels else np.full(len(rows), np.nan, np.float32))
    code_all = np.concatenate(codes) if codes else np.zeros(0, np.int64)
    order = np.lexsort((np.concatenate(segments) if segments else code_all, code_all))  # stable
    counts = np.bincount(code_all, minlength=len(names))
    starts = np.cumsum(counts) - counts
    present = np.flatnonzero(counts)
    index = SegmentIndex(
        parts,
        kept,
        np.cumsum([0] + [len(k) for k in kept])[:-1],
        order,
        {names[c]: int(starts[c]) for c in present},
        {names[c]: int(counts[c]) for c in present},
        np.concatenate(ratios) if ratios else np.zeros(0, np.float32),
    )
    errors = out / "errors.parquet"
    if errors.is_file():
        for row in pq.read_table(errors).to_pylist():
            if row["source_uri"] in wanted and row["source_uri"] not in index.count:
                index.failed[row["source_uri"]] = row["reason"]
    return index


def split_rows(task: Task, present: dict[int, str], index: SegmentIndex, split: str) -> tuple[list, np.ndarray]:
    """One split's tracks with features, in task order, as ``(task index, uri)``, and the kept-row
    numbers (:class:`SegmentIndex`) of their segments, track by track in segment order."""
    chosen = [(i, present[i]) for i, t in enumerate(task.tracks) if t.split == split and present.get(i) in index.count]
    if not chosen:
        raise EvaluateError(f"task {task.name}: no {split} track has audio features")
    rows = [index.order[index.start[uri] : index.start[uri] + index.count[uri]] for _, uri in chosen]
    return chosen, np.concatenate(rows)


def gather_embeddings(index: SegmentIndex, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{split: [len(rows[split]), 1024]}``: the embeddings of those kept rows, each part's read
    once for every split and copied straight into place."""
    import pyarrow.parquet as pq

    from mvssl_dist.embed.batch import embedding_matrix

    matrices = {s: np.empty((len(r), EMBEDDING_DIM), np.float32) for s, r in rows.items()}
    ends = np.append(index.first, np.iinfo(np.int64).max)
    places = {}
    for split, wanted in rows.items():
        slots = np.argsort(wanted, kind="stable")  # kept-row numbers rise part by part
        places[split] = (slots, wanted[slots], np.searchsorted(wanted[slots], ends))
    for p, part in enumerate(index.parts):
        embeddings = embedding_matrix(pq.read_table(part, columns=["embedding"]).column("embedding"))
        for split, (slots, wanted, bounds) in places.items():
            mine = slice(bounds[p], bounds[p + 1])
            matrices[split][slots[mine]] = embeddings[index.kept[p][wanted[mine] - index.first[p]]]
    return matrices


def split_features(task: Task, present: dict[int, str], index: SegmentIndex) -> dict[str, SplitFeatures]:
    """Every split's :class:`SplitFeatures`: its tracks with features in task order, each track's
    segments in segment order."""
    layout = {s: split_rows(task, present, index, s) for s in SPLITS}
    matrices = gather_embeddings(index, {s: rows for s, (_, rows) in layout.items()})
    splits = {}
    for split, (chosen, _) in layout.items():
        owner = np.repeat(np.arange(len(chosen)), [index.count[uri] for _, uri in chosen])
        labels = np.stack([task.tracks[i].labels for i, _ in chosen])
        paths = [task.tracks[i].path for i, _ in chosen]
        splits[split] = SplitFeatures(matrices[split], owner, labels, paths, audible(index.ratio[layout[split][1]]))
    return splits


def audible(ratios: np.ndarray) -> np.ndarray | None:
    """Which segments pass the reference's silence rule (``10 * ln(ratio) >= -7.5``); None when
    a segment's level was not recorded (features embedded before levels were kept)."""
    from mvssl_dist.views.sampling import SILENCE_THRESHOLD

    if np.isnan(ratios).any():
        return None
    return ratios >= np.exp(SILENCE_THRESHOLD / 10)


def compare(a: EvaluateResult, b: EvaluateResult, tags: Sequence[str] | None = None, **bootstrap) -> Margin:
    """Macro ROC-AUC of ``a`` minus ``b`` on the test tracks both scored, with a paired bootstrap
    interval; over ``tags`` only when given (e.g. one family of tags, to see where a gap lies)."""
    if a.test_scores is None or b.test_scores is None:
        raise EvaluateError("compare: both results need their test predictions")
    rows_b = {track: j for j, track in enumerate(b.test_tracks)}
    both = [(i, rows_b[track]) for i, track in enumerate(a.test_tracks) if track in rows_b]
    if not both:
        raise EvaluateError("compare: the two evaluations share no test track")
    ia, ib = (np.array(x) for x in zip(*both, strict=True))
    columns = tag_columns(a, tags)
    return roc_auc_margin(
        a.test_labels[ia][:, columns], a.test_scores[ia][:, columns], b.test_scores[ib][:, columns], **bootstrap
    )


def tag_columns(result: EvaluateResult, tags: Sequence[str] | None) -> np.ndarray:
    """Column indices of ``tags`` in the result's test arrays (all columns when ``tags`` is None)."""
    names = [t.tag for t in result.per_tag]
    if tags is None:
        return np.arange(len(names))
    if not tags:
        raise EvaluateError("compare: tags is empty; give at least one tag, or None for all")
    unknown = [t for t in tags if t not in names]
    if unknown:
        raise EvaluateError(f"compare: tag {unknown[0]!r} is not in task {result.task}")
    return np.array([names.index(t) for t in tags])


def scoring_fingerprint(splits: dict[str, SplitFeatures], vocabulary: Sequence[str], probe: ProbeConfig) -> str:
    """16 hex digits naming what a score was measured with: every split's tracks and labels (after
    missing audio and ``--train-fraction``), the vocabulary, the probe settings, how much of a
    track is read and, for a trained probe, its code's revision and whether the silence rule could
    be applied. Two scores are compared, for an alias, only when their fingerprints are equal."""
    settings = {"tags": list(vocabulary), "probe": asdict(probe), "read_seconds": READ_SECONDS}
    if probe.kind != "knn":  # the trained probes' code changed (the k-NN vote's did not)
        settings["probe_revision"] = PROBE_REVISION
        if splits["train"].audible is None:  # trained on every segment: no silence rule applied
            settings["train_levels"] = "unknown"
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for name in SPLITS:
        split = splits[name]
        rows = sorted(zip(split.tracks, (row.astype(int).tolist() for row in split.labels), strict=True))
        digest.update(json.dumps([name, rows]).encode())
    return digest.hexdigest()[:16]


def promote_version(result: EvaluateResult, options: EvaluateOptions, report: Callable[[str], None]) -> None:
    """Move ``--promote-alias`` to the evaluated version if it beats the holder, scoring the holder
    first (same task, data and probe settings) when its tags hold no score comparable to this one."""
    from mvssl_dist.evaluate.report import holder_to_score, promote, tag_prefix

    name, version, alias = result.model_name, str(result.model_version), options.promote_alias
    prefix = tag_prefix(result.task, options.probe.kind, options.train_fraction)
    holder = holder_to_score(name, version, alias, prefix, result.fingerprint)
    if holder is not None:
        report(
            f"[evaluate] {alias} is on v{holder}, which has no {result.task} score measured on the same tracks, "
            "labels and probe settings; scoring it first"
        )
        try:
            evaluate(replace(options, model=f"models:/{name}/{holder}", promote_alias=None, features_dir=None), report)
        except EvaluateError as err:
            result.promoted = False
            result.promotion_note = f"{alias} stays on v{holder}: it could not be scored ({err})"
            return
    score = float(f"{result.metrics['roc_auc_macro']:.6f}")  # the value the version's tag holds
    result.promoted, result.promotion_note = promote(name, version, alias, prefix, score, result.fingerprint)


# --------------------------------------------------------------------------- driver
def one_sided_tags(labels: np.ndarray, vocabulary: Sequence[str]) -> list[str]:
    """The tags that ``labels`` ``[tracks, tags]`` give to every track or to none."""
    positives = labels.sum(axis=0)
    return [tag for tag, n in zip(vocabulary, positives, strict=True) if n == 0 or n == len(labels)]


def check_alias(alias: str) -> None:
    """MLflow's rules for an alias, said before any work (MLflow says them after, in a traceback)."""
    if not re.fullmatch(r"[\w-]{1,255}", alias):
        raise EvaluateError(f"--promote-alias {alias!r}: letters, digits, _ and - only, 1 to 255 of them")
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise EvaluateError(
            f"--promote-alias {alias}: MLflow reserves 'latest' and v<number> for versions; choose another (champion)"
        )


def checked_task(options: EvaluateOptions) -> Task:
    """The task's splits (train cut to ``--train-fraction``) once every option has been checked; one line if not."""
    from mvssl_dist.embed.batch import EmbedError, check_counts, check_max_duration
    from mvssl_dist.evaluate.tasks import TaskError, checked_labels

    if not 0 <= options.max_missing <= 1:
        raise EvaluateError(f"--max-missing {options.max_missing}: must be in [0, 1]")
    if options.promote_alias is not None:
        check_alias(options.promote_alias)
    try:
        check_config(options.probe)
        check_counts(options.workers, options.gpus)
        check_max_duration(options.max_duration_s)
    except (ValueError, EmbedError) as err:
        raise EvaluateError(str(err)) from None
    try:
        task = limit_train(checked_labels(load_task(options.task, options.split_dir)), options.train_fraction)
    except TaskError as err:
        raise EvaluateError(str(err)) from None
    if "://" not in options.audio_root and not os.path.isdir(options.audio_root):
        raise EvaluateError(f"--audio-root {options.audio_root}: no such directory")
    return task


def task_features(task: Task, options: EvaluateOptions, model_uri: str, base: Path, report):
    """Each split's segment features, embedded where the cache lacks them: (splits, missing, its listing, folder).

    Tracks missing from ``--audio-root`` or failing to decode are listed; past ``--max-missing`` the
    evaluation stops."""
    present, missing = find_missing(task, options.audio_root)
    listing = base / f"missing-{task.slug()}.csv"
    check_missing(missing, len(task.tracks), options.max_missing, listing, options.audio_root)
    features_dir = Path(options.features_dir).resolve() if options.features_dir else base / "features"
    report(f"[evaluate] features of {model_uri} in {features_dir}")
    own_cache = not options.features_dir
    embed_features(
        sorted(set(present.values())), model_uri, features_dir, base / "inputs.txt", options, report, own_cache
    )
    index = read_features(features_dir, set(present.values()))
    if np.isnan(index.ratio).any():
        report(
            f"[evaluate] {features_dir} holds segments embedded before their levels were kept: the probe trains on "
            "every segment, near-silent ones too (embed again into a new --features-dir for the reference's rule)"
        )
    for i, uri in list(present.items()):
        if uri not in index.count:
            missing.append((task.tracks[i].path, index.failed.get(uri, "no_features")))
    check_missing(missing, len(task.tracks), options.max_missing, listing, options.audio_root)
    if missing:
        report(f"[evaluate] {len(missing)} task track(s) missing or undecodable, listed in {listing}")
    return split_features(task, present, index), missing, listing, features_dir


def warn_unlearnable(splits: dict, vocabulary: Sequence[str], report) -> None:
    """One line naming the scored tags the train split cannot teach (on all its tracks, or on none)."""
    unscored = set(one_sided_tags(splits["test"].labels, vocabulary))
    scored = [t for t in vocabulary if t not in unscored]
    if unlearnable := [t for t in one_sided_tags(splits["train"].labels, vocabulary) if t in scored]:
        report(
            f"[evaluate] {len(unlearnable)} of the {len(scored)} tags scored are on every train track or on none "
            f"({', '.join(unlearnable[:8])}{', …' if len(unlearnable) > 8 else ''}): the probe cannot learn "
            "them, so their test scores are at chance (a larger --train-fraction gives it both kinds)"
        )


def epoch_note(train: SplitFeatures, probe: ProbeConfig) -> str:
    """What a trained probe's epoch leaves out of the train segments, if anything, for its line."""
    if probe.kind == "knn":
        return ""
    silent = 0 if train.audible is None else int((~train.audible).sum())
    notes = [f"{silent} near-silent left out"] if silent else []
    if (per_epoch := epoch_size(train)) < len(train.segments) - silent:
        notes.append(f"at most {TRAIN_SEGMENTS_PER_TRACK} of a track's, drawn afresh")
    return f" ({per_epoch} an epoch: {'; '.join(notes)})" if notes else ""


def evaluate(options: EvaluateOptions, report: Callable[[str], None] = print) -> EvaluateResult:
    from mvssl_dist.evaluate.report import log_evaluation
    from mvssl_dist.tracking import default_tracking_uri

    start = time.perf_counter()
    tracking_uri = options.tracking_uri or default_tracking_uri()
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    task = checked_task(options)
    model_uri, cache_name, facts = model_identity(options.model)
    if options.promote_alias and "model_version" not in facts:
        raise EvaluateError(f"--promote-alias needs a registered model (models:/NAME@ALIAS), not {options.model}")
    try:
        base = local_folder(options.cache_dir, "--cache-dir") / cache_name
    except ValueError as err:
        raise EvaluateError(str(err)) from None
    counts = ", ".join(f"{s} {len(task.split(s))}" for s in SPLITS)
    report(f"[evaluate] task {task.name}: {len(task.vocabulary)} tags, {counts}")
    splits, missing, listing, features_dir = task_features(task, options, model_uri, base, report)
    warn_unlearnable(splits, task.vocabulary, report)
    verb = "fitting" if options.probe.kind == "knn" else "training"  # k-NN: no training, a vote
    segments = len(splits["train"].segments)
    report(
        f"[evaluate] {verb} a {options.probe.kind} probe on {segments} segments{epoch_note(splits['train'], options.probe)}"
    )
    try:
        probe = train_probe(splits["train"], splits["validation"], options.probe, report)
    except ValueError as err:  # e.g. nothing to train on
        raise EvaluateError(f"task {task.name}: {err}") from None
    test = splits["test"]
    test_scores = track_scores(probe.model, test)
    try:
        metrics, per_tag = tagging_metrics(test.labels, test_scores, task.vocabulary)
    except ValueError as err:
        raise EvaluateError(f"task {task.name}, test split: {err}") from None
    metrics.update(probe_epochs=probe.epochs, probe_best_epoch=probe.best_epoch, **probe.facts)
    result = EvaluateResult(
        task.slug(),
        metrics,
        per_tag,
        missing,
        features_dir,
        test_tracks=test.tracks,
        test_labels=test.labels,
        test_scores=test_scores,
        fingerprint=scoring_fingerprint(splits, task.vocabulary, options.probe),
    )
    result.model_name, result.model_version = facts.get("model_name"), facts.get("model_version")
    result.seconds = time.perf_counter() - start
    log_evaluation(result, options, task, facts, probe.history, listing, tracking_uri)
    if options.promote_alias:
        promote_version(result, options, report)
    return result
