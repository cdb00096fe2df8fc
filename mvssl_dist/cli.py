"""The ``mvssl`` command line. Each subcommand is a small ``add_*`` + ``run_*`` pair."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

from mvssl_dist.constants import EMBED_MAX_DURATION_S

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
RAY_ADDRESS_HELP = "Ray cluster address (default: RAY_ADDRESS or a local Ray)"
TRACKING_URI_HELP = "MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlflow.db)"


def number(text: str) -> float:
    """A float option, finite: every range check lets ``nan`` through, and ``inf`` reached
    ``int()`` and JSON records (a maximum is given as a large number)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text}: not a finite number")
    return value


def error(message: str) -> None:
    """One line on stderr, printable whatever bytes a file name holds."""
    text = f"mvssl: error: {message}"
    sys.stderr.write(text.encode("utf-8", "backslashreplace").decode("utf-8") + "\n")


# --------------------------------------------------------------------------- embed-file
def add_embed_file(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed-file",
        help="embed whole audio files with a backbone (reference usage semantics)",
        description="Decode each FILE to 16 kHz mono, peak-normalise, zero-pad to a multiple of 4 s, "
        "embed non-overlapping 4 s segments and average them into one 1024-d vector per file.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files (any format the decoder reads)")
    p.add_argument("--weights", required=True, help="reference release .pt, our backbone file, or models:/ URI")
    p.add_argument("--out", help="write embeddings to X.npy or X.parquet (default: print a summary per file)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="segments per forward pass (default: %(default)s)")
    add_query_limit(p, "longer files are not embedded (each is decoded whole into memory)")
    p.set_defaults(run=run_embed_file)


def add_query_limit(p: argparse.ArgumentParser, what: str) -> None:
    """``--max-duration-s`` for commands that decode a file the user names (embed-file, neighbours)."""
    p.add_argument("--max-duration-s", type=number, default=EMBED_MAX_DURATION_S, help=f"{what} (default: %(default)s)")


def length_limit_problem(seconds: float) -> str | None:
    """``--max-duration-s`` refused as ``mvssl embed`` refuses it (``None``: it is fine)."""
    from mvssl_dist.embed.batch import EmbedError, check_max_duration

    try:
        check_max_duration(seconds)
    except EmbedError as err:
        return str(err)
    return None


def decode_error_line(err: Exception) -> str:
    """The decoder's line, with how to lift the length limit where that was the reason."""
    raised = "; --max-duration-s raises the limit" if getattr(err, "reason", "") == "too_long" else ""
    return f"{err}{raised}"


def device_problem(name: str) -> str | None:
    """Why torch cannot use device ``name`` here (``None``: it can)."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        return "not a torch device (e.g. cpu, cuda, cuda:1, mps)"
    if device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA GPU on this machine"
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        return f"this machine has {torch.cuda.device_count()} CUDA GPU(s)"
    if device.type == "mps" and not torch.backends.mps.is_available():
        return "no Apple GPU (MPS) on this machine"
    if device.type not in ("cpu", "cuda", "mps"):
        return "only cpu, cuda and mps are supported"
    return None


def run_embed_file(args: argparse.Namespace) -> int:
    from mvssl_dist.audio import AudioDecodeError, decode_with_info, display_name
    from mvssl_dist.embed import embed_track
    from mvssl_dist.models import WeightsError, load_backbone

    if args.batch_size < 1:
        error(f"--batch-size {args.batch_size}: must be >= 1")
        return EXIT_USAGE
    if problem := length_limit_problem(args.max_duration_s):
        error(problem)
        return EXIT_USAGE
    if args.out and Path(args.out).suffix not in (".npy", ".parquet"):
        error(f"--out {args.out}: must end in .npy or .parquet")
        return EXIT_USAGE
    problem = device_problem(args.device)
    if problem:
        error(f"--device {args.device}: {problem}")
        return EXIT_USAGE
    try:
        model = load_backbone(args.weights, device=args.device)
    except WeightsError as err:
        error(str(err))
        return EXIT_FAILED
    rows, failed = [], 0
    for path in args.files:
        try:
            decoded = decode_with_info(path, max_seconds=args.max_duration_s)
        except AudioDecodeError as err:
            error(decode_error_line(err))
            failed += 1
            continue
        start = time.perf_counter()
        track, segments = embed_track(model, decoded.audio, args.batch_size)
        rows.append((display_name(path), decoded.duration_s, len(segments), track))
        print(
            f"{display_name(path)}\t{decoded.duration_s:7.1f} s\t{len(segments):4d} segments"
            f"\t|e|={float((track**2).sum() ** 0.5):.3f}\t{time.perf_counter() - start:.2f} s"
        )
    if args.out and rows:
        write_embeddings(Path(args.out), rows)
        print(f"wrote {len(rows)} embeddings to {args.out}")
    print(f"embedded {len(rows)} file(s), {failed} failed")
    return EXIT_FAILED if failed else EXIT_OK


def write_embeddings(out: Path, rows: list) -> None:
    import numpy as np

    out.parent.mkdir(parents=True, exist_ok=True)
    matrix = np.stack([r[3] for r in rows]).astype(np.float32)
    if out.suffix == ".npy":
        np.save(out, matrix)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mvssl_dist.embed.batch import fixed_list

    table = pa.table(
        {
            "path": [r[0] for r in rows],
            "duration_s": [r[1] for r in rows],
            "num_segments": [r[2] for r in rows],
            "embedding": fixed_list(matrix),
        }
    )
    pq.write_table(table, out)


# --------------------------------------------------------------------------- synth-audio
def add_synth_audio(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth-audio", help="write a small synthetic music library (mixed formats)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write the tracks and labels.csv into")
    p.add_argument("--tracks", type=int, default=5, help="number of tracks (default: %(default)s)")
    p.add_argument("--seconds", type=number, default=20.0, help="length of each track (default: %(default)s)")
    p.add_argument(
        "--formats",
        default="mp3,flac,ogg,wav,m4a",
        help="comma-separated, used in turn: mp3,flac,ogg,opus,wav,m4a (default: %(default)s)",
    )
    p.add_argument("--broken", action="store_true", help="also write broken files under OUT_DIR/broken")
    p.set_defaults(run=run_synth_audio)


SYNTH_MAX_SECONDS = 3600


def run_synth_audio(args: argparse.Namespace) -> int:
    from mvssl_dist.audio.synth import ENCODERS
    from mvssl_dist.library import write_library

    if args.tracks < 1 or args.seconds <= 0:
        error(f"--tracks {args.tracks} --seconds {args.seconds:g}: need at least 1 track of more than 0 s")
        return EXIT_USAGE
    if args.seconds > SYNTH_MAX_SECONDS:  # a track is made whole in memory: 1e9 s asked for 165 TiB
        error(f"--seconds {args.seconds:g}: at most {SYNTH_MAX_SECONDS} (an hour, twice what ingest keeps by default)")
        return EXIT_USAGE
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    unknown = [f for f in formats if f not in ENCODERS]
    if unknown:
        error(f"--formats: unknown format '{unknown[0]}' (known: {', '.join(ENCODERS)})")
        return EXIT_USAGE
    tracks = write_library(args.out_dir, args.tracks, args.seconds, formats, broken=args.broken)
    for t in tracks:
        print(f"{t.path}\t{t.style}\t{t.seconds:.1f} s")
    print(f"wrote {len(tracks)} tracks to {args.out_dir}" + (" (+ broken files in broken/)" if args.broken else ""))
    return EXIT_OK


# --------------------------------------------------------------------------- ingest
def add_ingest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest",
        help="decode a catalogue into 16 kHz mono WebDataset shards + index/rejects parquet (Ray Data)",
        description="SRC: directories (recursive), glob patterns, list files (.txt, or .csv/.parquet with a "
        "'uri' column), single files; local paths or s3://. Re-running resumes and picks up new files.",
    )
    p.add_argument("sources", nargs="+", metavar="SRC", help="where the audio is (see above)")
    p.add_argument("--out", required=True, metavar="DATASET_DIR", help="shards, index and rejects go here")
    p.add_argument("--workers", type=int, help="parallel decode tasks (default: all CPUs)")
    p.add_argument("--ray-address", help=RAY_ADDRESS_HELP)
    p.add_argument(
        "--min-duration-s", type=number, default=12.0, help="shorter tracks are rejected (default: %(default)s)"
    )
    p.add_argument(
        "--max-duration-s", type=number, default=1800.0, help="longer tracks are rejected (default: %(default)s)"
    )
    p.add_argument("--shard-target-mb", type=number, default=256.0, help="size of each tar (default: %(default)s)")
    p.add_argument(
        "--codec",
        choices=["s16", "flac"],
        default="s16",
        help="how audio is stored in the shards (default: %(default)s)",
    )
    p.add_argument(
        "--silence-db",
        type=number,
        default=-60.0,
        help="tracks quieter than this RMS (dBFS) are rejected (default: %(default)s)",
    )
    add_retry(
        p,
        "read again the inputs rejected for these reasons, or `changed`: tracks whose file changed (size or "
        "modification time) or is gone since it was ingested; their shards are written again",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs, CI)")
    p.set_defaults(run=run_ingest)


def add_retry(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--retry",
        type=lambda value: tuple(r.strip() for r in value.split(",") if r.strip()),
        default=(),
        metavar="REASON[,REASON]",
        help=f"{what} (e.g. unreadable: a network or disk error since mended; truncated: a file that was "
        "still being copied)",
    )


def reason_counts(summary) -> str:
    """``too_long: 1, unreadable: 2``: an ingest's rejects or an embedding's errors, counted by reason."""
    return ", ".join(f"{k}: {v}" for k, v in sorted(summary.by_reason.items()))


def run_ingest(args: argparse.Namespace) -> int:
    from mvssl_dist.shards import DatasetError, IngestError, IngestOptions, SourceError, ingest
    from mvssl_dist.shards.ingest import NOT_READ

    options = IngestOptions(
        sources=args.sources,
        out=args.out,
        workers=args.workers,
        ray_address=args.ray_address,
        min_duration_s=args.min_duration_s,
        max_duration_s=args.max_duration_s,
        shard_target_mb=args.shard_target_mb,
        codec=args.codec,
        silence_db=args.silence_db,
        progress=not args.no_progress,
        retry=args.retry,
    )
    try:
        summary = ingest(options)
    except (IngestError, SourceError, DatasetError) as err:
        error(str(err))
        return EXIT_FAILED
    print(f"ingested {summary.tracks} tracks ({summary.hours:.2f} h) of {summary.inputs} inputs into {summary.out}")
    if summary.rejects:
        print(f"{summary.rejects} rejected ({reason_counts(summary)}); listed in {summary.out / 'rejects.parquet'}")
    if summary.not_read:
        files = "file" if summary.not_read == 1 else "files"
        print(f"{summary.not_read} {files} without an audio extension not read; listed in {summary.out / NOT_READ}")
    if summary.tracks == 0:  # a pipeline's next stage would find nothing: fail here, where the reasons are
        error(f"no input became a track; the reasons are in {summary.out / 'rejects.parquet'}")
        return EXIT_FAILED
    return EXIT_OK


# --------------------------------------------------------------------------- pretrain
def add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pre-train a backbone with an SSL method on Ray Train; tracked and registered in MLflow",
        description="Example: mvssl pretrain --config configs/contrastive.yaml data.path=/data/catalogue "
        "train.num_workers=16 train.use_gpu=true",
    )
    p.add_argument("--config", help="YAML file (see configs/); defaults apply to anything it leaves out")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="e.g. train.lr=5e-4 method.options.temperature=0.2"
    )
    p.add_argument("--run-name", help="name of the run (its folder under train.storage_path)")
    p.add_argument(
        "--resume",
        metavar="RUN",
        help="continue the stopped run RUN (same MLflow run) with its own config; --config and overrides may "
        "change how it runs (workers, time box), not what it learns",
    )
    p.add_argument("--register-as", help="registered model name (default mvssl-<method>)")
    p.add_argument("--tracking-uri", help=TRACKING_URI_HELP)
    p.add_argument("--ray-address", help=RAY_ADDRESS_HELP)
    p.set_defaults(run=run_pretrain)


def run_pretrain(args: argparse.Namespace) -> int:
    from mvssl_dist.config import ConfigError, load_config
    from mvssl_dist.tracking import TrackingError
    from mvssl_dist.train.pretrain import PretrainError, pretrain, resume_config

    overrides = list(args.overrides)
    if args.register_as is not None:
        overrides.append(f"tracking.register_as={args.register_as}")
    if args.tracking_uri:
        overrides.append(f"tracking.uri={args.tracking_uri}")
    try:
        cfg = resume_config(args.config, overrides, args.resume) if args.resume else load_config(args.config, overrides)
        result = pretrain(
            cfg, run_name=args.resume or args.run_name, resume=bool(args.resume), ray_address=args.ray_address
        )
    except (ConfigError, TrackingError, PretrainError) as err:
        error(str(err))
        return EXIT_FAILED
    print(f"run {result.run_name} (MLflow run {result.run_id}) finished at step {result.steps}")
    if result.already_finished:  # @latest may have moved on since
        print(f"registered as {result.model_name} version {result.model_version} -> {result.model_uri}")
    else:
        latest = f"models:/{result.model_name}@latest"
        print(f"registered {result.model_name} version {result.model_version} (alias: latest) -> {latest}")
    if result.collapsed:
        print("warning: the embeddings collapsed during this run (tagged collapsed=true)")
    return EXIT_OK


# --------------------------------------------------------------------------- embed
def add_embed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed",
        help="batch-embed a library (raw audio or an ingested DATASET_DIR) to parquet with Ray Data; resumable",
    )
    p.add_argument(
        "sources",
        nargs="+",
        metavar="SRC",
        help="audio as for `mvssl ingest` (folders, globs, lists), or a DATASET_DIR",
    )
    p.add_argument(
        "--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION, a checkpoint or weights file"
    )
    p.add_argument("--out", required=True, metavar="OUT_DIR", help="parquet parts go here; re-run to resume")
    p.add_argument(
        "--level",
        choices=["track", "segment", "both"],
        default="track",
        help="one row per track (mean of its segments), per segment, or both (default: %(default)s)",
    )
    p.add_argument("--segment-s", type=number, default=4.0, help="segment length in seconds (default: %(default)s)")
    p.add_argument("--hop-s", type=number, default=4.0, help="seconds between segment starts (default: %(default)s)")
    p.add_argument(
        "--max-duration-s",
        type=number,
        default=EMBED_MAX_DURATION_S,
        help="longer audio files are not embedded but listed in errors.parquet as too_long; a DATASET_DIR's "
        "tracks were limited by ingest (default: %(default)s)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="clips per forward pass (default: %(default)s)")
    p.add_argument("--workers", type=int, default=1, help="model actors (default: %(default)s)")
    p.add_argument(
        "--gpus",
        type=number,
        default=0,
        help="GPUs per model actor (1, or a fraction to share one); bf16 (default: 0, CPU)",
    )
    p.add_argument("--ray-address", help=RAY_ADDRESS_HELP)
    add_retry(
        p,
        "embed again the inputs that failed for these reasons, or `changed`: inputs whose file (or, from a "
        "DATASET_DIR, whose ingested track) changed since they were embedded; one gone is taken out",
    )
    p.set_defaults(run=run_embed)


def run_embed(args: argparse.Namespace) -> int:
    from mvssl_dist.embed.batch import EmbedError, EmbedOptions, embed_library
    from mvssl_dist.shards import SourceError

    options = EmbedOptions(
        args.sources,
        args.model,
        args.out,
        args.level,
        args.segment_s,
        args.hop_s,
        args.batch_size,
        args.workers,
        args.gpus,
        args.ray_address,
        retry=args.retry,
        max_duration_s=args.max_duration_s,
    )
    try:
        summary = embed_library(options)
    except (EmbedError, SourceError) as err:
        error(str(err))
        return EXIT_FAILED
    print(f"embedded {summary.tracks} tracks into {summary.out} ({summary.skipped} were already there)")
    if summary.errors:
        print(
            f"{summary.errors} input(s) failed ({reason_counts(summary)}); listed in {summary.out / 'errors.parquet'}"
        )
    if summary.tracks == 0:
        error(f"no input could be embedded; the reasons are in {summary.out / 'errors.parquet'}")
        return EXIT_FAILED
    return EXIT_OK


def add_neighbours(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("neighbours", help="the k tracks most similar to a file or a key (cosine similarity)")
    p.add_argument("--embeddings", required=True, metavar="OUT_DIR", help="written by `mvssl embed`")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--query", metavar="FILE", help="an audio file, embedded with the model OUT_DIR was made with")
    query.add_argument(
        "--key",
        help="a track already in OUT_DIR: its key (or a start of it no other key shares) or its source file; "
        "the track itself is not listed",
    )
    p.add_argument("-k", type=int, default=10, help="how many tracks to list (default: %(default)s)")
    add_query_limit(p, "a longer --query file is not embedded (it is decoded whole into memory)")
    p.set_defaults(run=run_neighbours)


def run_neighbours(args: argparse.Namespace) -> int:
    from mvssl_dist.embed.search import SearchError, find_track, nearest, search_index
    from mvssl_dist.shards.uris import display_uri

    if args.k < 1:
        error(f"-k {args.k}: must be >= 1")
        return EXIT_USAGE
    if "" in (args.key, args.query):  # --key "" is not a key to look up, nor a file to embed
        error(f"--{'key' if args.key == '' else 'query'}: empty")
        return EXIT_USAGE
    if problem := length_limit_problem(args.max_duration_s):
        error(problem)
        return EXIT_USAGE
    itself = None  # with --key, the track's own row: not a neighbour of itself
    try:
        keys, uris, matrix = search_index(args.embeddings)
        if args.key is not None:
            itself = find_track(keys, uris, args.key, args.embeddings)
            query = matrix[itself]
        else:
            query = embed_query(args.query, Path(args.embeddings), args.max_duration_s)
    except (SearchError, OSError) as err:
        error(str(err))
        return EXIT_FAILED
    top, scores = nearest(matrix, query, args.k + (itself is not None), unit=True)
    found = [(i, score) for i, score in zip(top, scores, strict=True) if i != itself][: args.k]
    print(f"{'key':34} {'score':>7}  source")
    for i, score in found:
        print(f"{keys[i]:34} {score:7.4f}  {display_uri(uris[i])}")  # a path to paste, not %-encoded
    return EXIT_OK


def embed_query(path: str, embeddings: Path, max_seconds: float = EMBED_MAX_DURATION_S):
    """The query file's track embedding, with the model ``mvssl embed`` used for OUT_DIR."""
    import json

    from mvssl_dist.audio import AudioDecodeError, decode_with_info
    from mvssl_dist.embed import embed_track
    from mvssl_dist.embed.batch import describe, model_facts, same_weights, weights_identity
    from mvssl_dist.embed.search import SearchError
    from mvssl_dist.models import WeightsError, load_backbone
    from mvssl_dist.tracking import quick_requests, tracking_store

    try:
        record = json.loads((embeddings / "embed.json").read_text())
        model = record["model"]
    except (OSError, ValueError, KeyError):
        raise SearchError(f"{embeddings / 'embed.json'}: missing or unreadable, so the model is unknown") from None
    if "model_version" in record:  # the version embedded, wherever its alias points now
        model = f"models:/{record['model_name']}/{record['model_version']}"
    # the registry it was embedded from, unless MLFLOW_TRACKING_URI names one
    store = None if os.environ.get("MLFLOW_TRACKING_URI") else record.get("tracking_uri")
    try:
        audio = decode_with_info(path, max_seconds=max_seconds).audio  # before the model: a bad file fails fast
        with tracking_store(store), quick_requests():
            backbone = load_backbone(model)
            now = weights_identity(model, model_facts(model) if "model_version" in record else {})
        if not same_weights(record.get("weights", now), now):
            raise SearchError(
                f"{embeddings} was embedded with {describe(record['weights'])}; {model} is now {describe(now)} "
                "(the weights file changed, or MLFLOW_TRACKING_URI names another registry)"
            )
        return embed_track(backbone, audio)[0]
    except (WeightsError, AudioDecodeError, OSError) as err:
        raise SearchError(decode_error_line(err)) from None


# --------------------------------------------------------------------------- evaluate
def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a backbone with a frozen-feature tagging probe (ROC-AUC / PR-AUC), logged to MLflow",
        description="TASK: mtat | jamendo-genre | jamendo-mood | jamendo-instrument | jamendo-top50 | csv:PATH "
        "(columns uri, split, tags). Features are cached per model version under --cache-dir.",
    )
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION, a weights file, random")
    p.add_argument("--task", required=True, help="see above")
    p.add_argument("--audio-root", required=True, metavar="DIR", help="folder the task's audio paths are relative to")
    p.add_argument("--split-dir", metavar="DIR", help="folder of the task's split files (mtat, jamendo-*)")
    p.add_argument(
        "--probe",
        choices=["mlp", "linear", "knn"],
        default="mlp",
        help="mlp (the reference's), linear, or knn (training-free weighted k-NN vote on the embeddings)",
    )
    p.add_argument("--hidden", type=int, default=512, help="hidden width of the mlp probe (default: %(default)s)")
    p.add_argument(
        "--k", type=int, default=20, help="neighbours of the knn probe; 0: chosen on validation (default: %(default)s)"
    )
    p.add_argument(
        "--train-fraction", type=number, default=1.0, help="use this fraction of the train split (default: %(default)s)"
    )
    p.add_argument("--max-epochs", type=int, default=200, help="mlp/linear probe epochs at most (default: %(default)s)")
    p.add_argument(
        "--patience",
        type=int,
        default=10,
        help="epochs without validation gain before stopping ... (default: %(default)s)",
    )
    p.add_argument(
        "--patience-steps",
        type=int,
        default=200,
        help="... and at least this many optimizer steps (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="probe initialisation and batch order (default: %(default)s)")
    p.add_argument(
        "--promote-alias",
        metavar="ALIAS",
        help="move ALIAS here if this version beats its holder, scored on the same tracks, labels and probe "
        "settings (a holder not yet scored so is evaluated first)",
    )
    p.add_argument(
        "--max-missing",
        type=number,
        default=0.05,
        help="refuse above this fraction of missing audio (default: %(default)s)",
    )
    p.add_argument(
        "--max-duration-s",
        type=number,
        default=EMBED_MAX_DURATION_S,
        help="longer audio files are not embedded but counted as missing (too_long) (default: %(default)s)",
    )
    p.add_argument(
        "--cache-dir", default="evaluations", help="where segment features are cached per model (default: %(default)s)"
    )
    p.add_argument("--tracking-uri", help=TRACKING_URI_HELP)
    p.add_argument("--workers", type=int, default=1, help="model actors embedding the audio (default: %(default)s)")
    p.add_argument(
        "--gpus", type=number, default=0, help="GPUs per model actor, as for `mvssl embed` (default: 0, CPU)"
    )
    p.add_argument("--ray-address", help=RAY_ADDRESS_HELP)
    p.set_defaults(run=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from mvssl_dist.evaluate import EvaluateError, EvaluateOptions, ProbeConfig, evaluate
    from mvssl_dist.tracking import TrackingError

    probe = ProbeConfig(
        args.probe,
        args.hidden,
        max_epochs=args.max_epochs,
        patience=args.patience,
        patience_steps=args.patience_steps,
        seed=args.seed,
        k=args.k,
    )
    options = EvaluateOptions(
        args.model,
        args.task,
        args.audio_root,
        args.split_dir,
        probe,
        args.train_fraction,
        args.promote_alias,
        args.max_missing,
        args.cache_dir,
        args.tracking_uri,
        workers=args.workers,
        gpus=args.gpus,
        ray_address=args.ray_address,
        max_duration_s=args.max_duration_s,
    )
    try:
        result = evaluate(options)
    except (EvaluateError, TrackingError) as err:
        error(str(err))
        return EXIT_FAILED
    print_evaluation(result)
    return EXIT_OK


def print_evaluation(result) -> None:
    m = result.metrics
    print(f"task {result.task}: {m['tracks']} test tracks, {m['tags_scored']} tags scored")
    print(f"  ROC-AUC macro {m['roc_auc_macro']:.4f}  micro {m['roc_auc_micro']:.4f}")
    print(f"  PR-AUC  macro {m['pr_auc_macro']:.4f}  micro {m['pr_auc_micro']:.4f}")
    if result.missing:
        print(f"  {len(result.missing)} task track(s) had no audio or failed to decode (listed in the run)")
    print(
        f"MLflow run {result.run_id}"
        + (f" (model {result.model_name} v{result.model_version})" if result.model_version else "")
    )
    if result.promotion_note:
        print(f"alias: {result.promotion_note}")


# --------------------------------------------------------------------------- quickstart
def add_quickstart(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart",
        help="the whole product on this machine: synth library -> ingest -> pretrain -> embed -> evaluate",
        description="Runs every stage on a local Ray and a local MLflow store (DIR/mlflow.db). Re-running "
        "reuses what DIR already holds.",
    )
    p.add_argument(
        "--workdir", default="mvssl-quickstart", metavar="DIR", help="everything goes here (default: %(default)s)"
    )
    p.add_argument("--tracks", type=int, default=120, help="tracks in the generated library (default: %(default)s)")
    p.add_argument(
        "--minutes", type=number, default=8.0, help="time target; pre-training gets what is left (default: %(default)s)"
    )
    p.add_argument("--seconds", type=number, default=20.0, help="length of each generated track (default: %(default)s)")
    p.add_argument("--steps", type=int, default=0, help="pre-training steps (default: sized from --minutes)")
    p.add_argument(
        "--layers",
        type=number,
        default=0.0,
        help="a harder library: untagged pad and arpeggio layers that change every section, at this level "
        "relative to the tagged music (e.g. 0.5; default 0: none)",
    )
    p.add_argument(
        "--unlabelled",
        type=int,
        default=0,
        metavar="N",
        help="N more generated tracks that are pre-trained on but left out of labels.csv, as in a catalogue "
        "with few labels (library/unlabelled; default 0)",
    )
    p.add_argument(
        "--method",
        default="contrastive",
        help="the SSL method pre-trained, with its configs/ file's settings: contrastive, byol, clustering, "
        "barlow_twins or vicreg (default: %(default)s; another method needs a --workdir of its own)",
    )
    p.add_argument("--ray-address", help=RAY_ADDRESS_HELP)
    p.set_defaults(run=run_quickstart)


def run_quickstart(args: argparse.Namespace) -> int:
    from mvssl_dist.quickstart import QuickstartError, QuickstartOptions
    from mvssl_dist.quickstart import run_quickstart as run

    options = QuickstartOptions(
        args.workdir,
        args.tracks,
        args.minutes,
        args.seconds,
        args.steps,
        ray_address=args.ray_address,
        layers=args.layers,
        unlabelled=args.unlabelled,
        method=args.method,
    )
    try:
        result = run(options)
    except QuickstartError as err:
        error(str(err))
        return EXIT_FAILED
    times = ", ".join(f"{k} {v:.0f} s" for k, v in result.stage_seconds.items())
    print(f"quickstart finished ({times})")
    return EXIT_OK


# --------------------------------------------------------------------------- main
COMMANDS = (
    add_embed_file,
    add_synth_audio,
    add_ingest,
    add_pretrain,
    add_embed,
    add_neighbours,
    add_evaluate,
    add_quickstart,
)


def build_parser() -> argparse.ArgumentParser:
    from mvssl_dist import __version__

    parser = argparse.ArgumentParser(
        prog="mvssl",
        description="Catalogue-scale multi-view self-supervised pre-training for music (Ray + MLflow).",
    )
    parser.add_argument("--version", action="version", version=f"mvssl-dist {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def pipeline_main(command: str, argv: list[str] | None = None) -> int:
    """Entry point of ``pipelines/<stage>.py``: the same arguments as ``mvssl <command>``."""
    return main([command, *(sys.argv[1:] if argv is None else argv)])


# The folders each command writes into: (argument, how the user typed it).
OUTPUT_FOLDERS = {
    "synth-audio": ("out_dir", "OUT_DIR"),
    "ingest": ("out", "--out"),
    "embed": ("out", "--out"),
    "evaluate": ("cache_dir", "--cache-dir"),
    "quickstart": ("workdir", "--workdir"),
}


# Commands whose list of positionals may continue after options, as in
# `mvssl pretrain --config c.yaml data.path=d --tracking-uri u train.lr=1e-3`.
LIST_POSITIONALS = {"embed-file": "files", "ingest": "sources", "pretrain": "overrides", "embed": "sources"}


def parse_intermixed(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parse_args``, except that a command's list of positionals may be split by its options
    (argparse's own ``parse_intermixed_args`` refuses subcommands). Anything else left over is
    the usual "unrecognized arguments" usage error."""
    args, extra = parser.parse_known_args(argv)
    name = LIST_POSITIONALS.get(getattr(args, "command", None) or "")
    if extra and name and not any(item.startswith("-") for item in extra):
        setattr(args, name, [*getattr(args, name), *extra])
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    from mvssl_dist.raytools import RayAddressError

    parser = build_parser()
    args = parse_intermixed(parser, argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return EXIT_USAGE
    if args.command in OUTPUT_FOLDERS:
        from mvssl_dist.shards.uris import local_folder

        name, flag = OUTPUT_FOLDERS[args.command]
        folder = getattr(args, name)
        try:
            local_folder(folder, flag)  # s3://bucket/x would have become a local folder s3:/bucket/x
        except ValueError as err:
            error(str(err))
            return EXIT_USAGE
        if Path(folder).exists() and not Path(folder).is_dir():
            error(f"{flag} {folder}: exists and is not a folder")
            return EXIT_USAGE
    try:
        return args.run(args)
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    except RayAddressError as err:
        error(str(err))
        return EXIT_FAILED
    except OSError as err:  # a full disk, a folder we may not write: one line (MVSSL_TRACEBACK=1 for the rest)
        if os.environ.get("MVSSL_TRACEBACK"):
            raise
        error(f"{err.filename}: {err.strerror}" if err.filename and err.strerror else f"{type(err).__name__}: {err}")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
