"""Driver of a pre-training run: validate, open the MLflow run, fit with Ray Train, register the backbone.

Everything that can be checked is checked before a worker starts (config, dataset, batch
size, method, tracking server). A run that fails registers nothing.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from mvssl_dist import __version__
from mvssl_dist.config import DEFAULTS, ConfigError, config_hash, flatten, load_config, recorded_config
from mvssl_dist.constants import SAMPLE_RATE
from mvssl_dist.folder_lock import FolderBusy, exclusive
from mvssl_dist.methods import build_method, canonical_name, check_options
from mvssl_dist.shards.reader import damaged_message, damaged_shards, load_index
from mvssl_dist.shards.uris import display_uri, local_dir, local_folder
from mvssl_dist.tracking import connect, default_tracking_uri, first_line, without_password
from mvssl_dist.train.checkpoints import (
    latest_checkpoint,
    newest_checkpoint,
    remove_partial_checkpoints,
    removed_partial_line,
    set_aside_unusable_ray_record,
    tidy_checkpoints,
    trained_to_the_end,
)

RUN_RECORD = "mvssl_run.json"
# What a resumed run may change: how it runs, not what it learns. data.path may move; the dataset
# is then checked by its index's SHA-256.
RESUME_MAY_CHANGE = {("data", "path"), ("data", "view_cpus")} | {
    ("train", key)
    for key in (
        "num_workers",
        "use_gpu",
        "cpus_per_worker",
        "bf16",
        "channels_last",
        "compile",
        "checkpoint_every",
        "num_to_keep",
        "max_failures",
        "storage_path",
        "log_every",
        "max_minutes",
        "deterministic",
        "fit_to_max_minutes",
        "collapse_std",
        "collapse_rank",
        "collapse_patience",
        "stop_on_collapse",
    )
}


class PretrainError(RuntimeError):
    """The run failed or cannot start; one line."""


@dataclass
class PretrainResult:
    run_id: str
    run_name: str
    model_name: str
    model_version: str | None
    steps: int
    checkpoint_path: str
    collapsed: bool
    already_finished: bool = False  # --resume of a finished run: nothing trained, nothing registered

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}/{self.model_version}"


# --------------------------------------------------------------------------- validation
def dataset_facts(cfg: dict) -> dict:
    path = cfg["data"]["path"]
    if not path:
        raise ConfigError("config: data.path is required (a DATASET_DIR written by `mvssl ingest`)")
    if "://" in str(path):  # the views read shards by seeking in them: a local or mounted disk
        raise ConfigError(
            f"config: data.path {path}: a DATASET_DIR is read from a local or mounted disk (mount the bucket, or copy it)"
        )
    root = local_dir(path)  # absolute: the workers' folder is Ray's, not the driver's
    meta_file, index_file = root / "dataset.json", root / "index.parquet"
    if not meta_file.is_file() or not index_file.is_file():
        raise ConfigError(f"config: data.path {path}: not an ingested dataset (no dataset.json / index.parquet)")
    import pyarrow.parquet as pq

    samples = pq.read_table(index_file, columns=["num_samples"]).column("num_samples").to_numpy()
    if len(samples) == 0:
        raise ConfigError(f"config: data.path {path}: the dataset is empty (0 tracks)")
    data = cfg["data"]
    need_s = data["n_views"] * data["segment_s"] + (data["n_views"] - 1) * data["min_gap_s"]
    usable = int((samples >= round(need_s * SAMPLE_RATE)).sum())
    if usable == 0:
        raise ConfigError(
            f"config: data.path {path}: none of its {len(samples)} tracks is long enough for {data['n_views']} views "
            f"of {data['segment_s']:g} s at least {data['min_gap_s']:g} s apart ({need_s:g} s; the longest is "
            f"{samples.max() / SAMPLE_RATE:.1f} s)"
        )
    if damaged := damaged_shards(root):
        raise ConfigError(f"config: data.path {path}: {damaged_message(damaged)}")
    meta = json.loads(meta_file.read_text())
    return {
        "path": str(root),
        "tracks": usable,
        "too_short": len(samples) - usable,
        "need_s": need_s,
        "index_sha256": meta.get("index_sha256", ""),
        "hours": meta.get("total_hours", 0),
    }


def derive(cfg: dict, facts: dict) -> dict:
    """Add what the workers need: steps per epoch, total steps, CPU sizing."""
    data, train = cfg["data"], cfg["train"]
    try:
        cfg["method"]["name"] = canonical_name(cfg["method"]["name"])
    except ValueError as err:
        raise ConfigError(f"config: method.name: {err}") from None
    cfg["method"]["options"] = checked_method_options(cfg["method"])
    check_augment(data)
    workers = train["num_workers"]
    if data["batch_size"] % workers:
        raise ConfigError(
            f"config: data.batch_size {data['batch_size']} must be a multiple of train.num_workers {workers}"
        )
    rows = facts["tracks"] * data["pairs_per_track"]
    if rows < data["batch_size"]:
        raise ConfigError(
            f"config: data.batch_size {data['batch_size']} is larger than the dataset gives per epoch "
            f"({facts['tracks']} tracks x {data['pairs_per_track']} pairs)"
        )
    steps_per_epoch = rows // data["batch_size"]
    total = train["max_steps"] if train["max_steps"] > 0 else train["epochs"] * steps_per_epoch
    epochs_needed = epochs_to_read(total, steps_per_epoch)
    cfg.update(steps_per_epoch=steps_per_epoch, total_steps=total, epochs_needed=epochs_needed)
    return cfg


def checked_method_options(method: dict) -> dict:
    """The method's options, refused here in one line rather than in every worker after start-up."""
    try:
        options = check_options(method["name"], method["options"])
        build_method(method["name"], **options)  # what only the method can check (BYOL's widths)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config: {err}") from None
    return options


def check_augment(data: dict) -> None:
    """The augmentation chains, refused in the driver (they used to fail in the workers)."""
    from mvssl_dist.views.augment import per_view_chains

    try:
        per_view_chains(data["augment"], data["n_views"])
    except ValueError as err:
        raise ConfigError(f"config: data.{err}") from None


def epochs_to_read(total_steps: int, steps_per_epoch: int) -> int:
    """Epochs of views to stream for ``total_steps``: twice the planned epochs, plus one.

    Skipped views (still near-silent after redraws) and the even split between workers make real
    epochs shorter than ``steps_per_epoch``, by how much depends on the catalogue's dynamics. With
    one spare epoch, a 1,600-step run on the quickstart's library ran out of views between steps
    1,590 and 1,600; with 10 % + 1, an 800-step run on a library whose every section had its own
    level, spectral tilt and noise floor ran out at step 758 (its epochs gave 407 of 480 rows).
    The stream is lazy and the loop stops at ``total_steps``, so unread epochs cost nothing.
    """
    return -(-2 * total_steps // steps_per_epoch) + 1


def size_cpus(cfg: dict) -> tuple[float, float]:
    """CPUs per training worker and per views task such that the views always get a CPU.

    With 2 CPUs, 2 workers at 1 CPU each leave nothing for Ray Data and the job hangs; by
    default each training worker takes what is left after one views task, split evenly.
    """
    import ray

    total = float(ray.cluster_resources().get("CPU", 1))
    smallest_node = min((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=total)
    train, data = cfg["train"], cfg["data"]
    view_cpus = data["view_cpus"]
    if train["cpus_per_worker"] > 0:
        per_worker = train["cpus_per_worker"]
    else:
        # Fit the cluster (workers + one views task) and any single node (a worker + a views task).
        per_worker = min(1.0, (total - view_cpus) / train["num_workers"], smallest_node - view_cpus)
        # Keep the training total a whole number of CPUs: Ray Data's share of the cluster is what
        # Train leaves, floor-divided per resource, so 0.5 CPU left over would give the views none.
        whole = int(per_worker * train["num_workers"] + 1e-9)
        if whole >= 1:
            per_worker = whole / train["num_workers"]
        per_worker = max(0.1, round(per_worker, 4))
    if per_worker * train["num_workers"] + view_cpus > total + 1e-9:
        raise ConfigError(
            f"config: train.num_workers x cpus_per_worker ({train['num_workers']} x {per_worker}) + data.view_cpus "
            f"({view_cpus}) exceeds the cluster's {total:g} CPUs: the views could never run"
        )
    return per_worker, view_cpus


def check_gpus(cfg: dict, ray_address: str | None, report: Callable[[str], None]) -> None:
    """``train.use_gpu`` on a Ray without enough GPUs would wait for ever: refuse on this
    machine's own Ray; on a cluster (which may autoscale) say what the job waits for."""
    from mvssl_dist.raytools import gpus_short, joins_cluster

    train = cfg["train"]
    have = gpus_short(train["num_workers"] if train["use_gpu"] else 0, ray_address)
    if have is None:
        return
    if not joins_cluster(ray_address):
        raise ConfigError(
            f"config: train.use_gpu=true needs {train['num_workers']} GPUs (one per worker); this machine has "
            f"{have:g} (set train.use_gpu=false, or fewer train.num_workers)"
        )
    report(f"[pretrain] the cluster has {have:g} of the {train['num_workers']} GPUs asked for; waiting for the rest")


def code_version() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


# --------------------------------------------------------------------------- the run
def resume_config(path: str | None, overrides: list[str], run_name: str) -> dict:
    """``--resume RUN``: the stopped run's own config, with ``--config`` and overrides on top (so
    ``mvssl pretrain --resume RUN`` alone continues it as it started)."""
    first = load_config(path, overrides)
    run_dir = Path(first["train"]["storage_path"]).resolve() / run_name
    saved = saved_config(run_dir)
    # No folder: said here, not as a missing data.path. A folder without its record may be a run
    # another process is starting: run_hold says so.
    if saved is None and not run_dir.exists():
        raise PretrainError(f"--resume {run_name}: no such run under {run_dir.parent}")
    return first if saved is None else load_config(path, overrides, base=saved)


def saved_config(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / RUN_RECORD).read_text()).get("config")
    except (OSError, ValueError):
        return None  # no such run: train_and_register says so


def resume_differences(saved: dict, cfg: dict) -> list[str]:
    """What ``cfg`` would change in what a stopped run learns (how it runs may change)."""
    changed = []
    for section in ("method", "data", "train"):
        for key in sorted(set(saved.get(section, {})) | set(cfg[section])):
            if (section, key) in RESUME_MAY_CHANGE:
                continue
            before, now = saved.get(section, {}).get(key), cfg[section].get(key)
            if before != now:
                changed.append(f"{section}.{key} {before!r} -> {now!r}")
    return changed


def check_resumable(record: dict, cfg: dict, run_name: str) -> None:
    if record.get("dataset_index_sha256") not in (None, cfg["dataset_index_sha256"]):
        raise PretrainError(
            f"--resume {run_name}: data.path is not the dataset the run started on (index SHA-256 differs)"
        )
    changed = resume_differences(record["config"], cfg) if "config" in record else []
    if changed:
        raise PretrainError(
            f"--resume {run_name}: would change what the run learns ({'; '.join(changed)}); "
            "leave --config and those overrides out to continue it as it started"
        )


def start_or_resume_run(cfg: dict, facts: dict, run_dir: Path, resume: bool) -> str:
    import mlflow

    record = run_dir / RUN_RECORD
    client = mlflow.MlflowClient()
    if resume:  # train_and_register made sure the run exists
        saved = json.loads(record.read_text())
        check_resumable(saved, cfg, run_dir.name)
        try:
            client.update_run(saved["run_id"], status="RUNNING")
        except mlflow.exceptions.MlflowException:
            raise PretrainError(
                f"--resume {run_dir.name}: MLflow run {saved['run_id']} is not in {without_password(cfg['tracking_uri'])} "
                f"(it was tracked in {saved.get('tracking_uri')}; pass --tracking-uri)"
            ) from None
        return saved["run_id"]
    if record.is_file():
        raise PretrainError(f"{run_dir}: a run with this name exists; use --resume {run_dir.name} or another name")
    tags = {
        "method": cfg["method"]["name"],
        "dataset_index_sha256": facts["index_sha256"],
        "dataset_path": str(cfg["data"]["path"]),
        "config_hash": config_hash({k: cfg[k] for k in ("method", "data", "train")}),
        "code_version": code_version(),
        "mlflow.runName": run_dir.name,
    }
    run = client.create_run(cfg["experiment_id"], tags=tags, run_name=run_dir.name)
    params = flatten(recorded_config(cfg))
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i : i + 100])
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = {
        "run_id": run.info.run_id,
        "tracking_uri": without_password(cfg["tracking_uri"]),
        "dataset_index_sha256": cfg["dataset_index_sha256"],
        "config": recorded_config(cfg),
    }
    if saved["config"]["tracking"]["uri"] != cfg["tracking"]["uri"]:
        saved["config"]["tracking"]["uri"] = None  # its password was cut: a resume takes the URI as given again
    record.write_text(json.dumps(saved, indent=2) + "\n")
    return run.info.run_id


def build_trainer(cfg: dict, run_dir: Path, per_worker: float, view_cpus: float, start_step: int):
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from mvssl_dist.train.loop import train_loop_per_worker
    from mvssl_dist.views import views_dataset

    data, train = cfg["data"], cfg["train"]
    start_epoch = start_step // cfg["steps_per_epoch"]
    dataset = views_dataset(
        data["path"],
        n_views=data["n_views"],
        segment_s=data["segment_s"],
        min_gap_s=data["min_gap_s"],
        pairs_per_track=data["pairs_per_track"],
        seed=data["seed"],
        epoch=start_epoch,
        num_epochs=cfg["epochs_needed"] - start_epoch,
        augment=data["augment"] if data["augment_on"] == "workers" else None,
        num_cpus_per_task=view_cpus,
        stats_name=f"views-{run_dir.name}",
        preserve_order=train["deterministic"],
    )
    worker_cfg = dict(
        cfg,
        start_step=start_epoch * cfg["steps_per_epoch"],
        threads_per_worker=max(1, int(per_worker)),
        run_dir=str(run_dir),  # restored from, and named when a checkpoint cannot be copied there
    )
    resources = {"CPU": per_worker}
    if train["use_gpu"]:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=worker_cfg,
        scaling_config=ScalingConfig(
            num_workers=train["num_workers"], use_gpu=train["use_gpu"], resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=run_dir.name,
            storage_path=str(run_dir.parent),
            checkpoint_config=CheckpointConfig(num_to_keep=train["num_to_keep"]),
            failure_config=FailureConfig(max_failures=train["max_failures"]),
            worker_runtime_env={
                "env_vars": {k: v for k, v in os.environ.items() if k.startswith(("MVSSL_", "MLFLOW_", "AWS_"))}
            },
        ),
        datasets={"train": dataset},
        dataset_config=ray.train.DataConfig(
            datasets_to_split=["train"], execution_options=ordered_ingest() if train["deterministic"] else None
        ),
    )


def ordered_ingest():
    """Ray Train's ingest options with ``preserve_order``. Train replaces a dataset's own execution
    options with these, so the views dataset's ``preserve_order`` alone does not reach the workers;
    with it, the split hands each worker the same blocks in the same order on every run."""
    import ray.train

    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def finish(cfg: dict, run_id: str, checkpoint_dir: Path, model_name: str) -> tuple[str, dict]:
    """Export, plot, log artifacts and register the backbone from the final checkpoint."""
    import mlflow
    import torch

    from mvssl_dist.models import save_backbone
    from mvssl_dist.tracking import log_and_register_backbone

    state = torch.load(checkpoint_dir / "state.pt", map_location="cpu", weights_only=True)
    method = build_method(cfg["method"]["name"], **cfg["method"]["options"])
    method.load_state_dict(state["model"])
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id):
        tmp = Path(tmp)
        (tmp / "config.yaml").write_text(yaml.safe_dump(recorded_config(cfg)))
        mlflow.log_artifact(str(tmp / "config.yaml"))
        torch.save(method.export_release(epoch=state["epoch"]), tmp / f"{method.release_format}_release.pt")
        mlflow.log_artifact(str(tmp / f"{method.release_format}_release.pt"), artifact_path="export")
        plot = plot_history(run_id, tmp / "training_curves.png")
        if plot:
            mlflow.log_artifact(str(plot))
        backbone = save_backbone(
            method.backbone, tmp / "backbone.pt", method=cfg["method"]["name"], run_id=run_id, step=state["step"]
        )
        tags = {
            "method": cfg["method"]["name"],
            "source_run_id": run_id,
            "step": state["step"],
            "dataset_index_sha256": cfg["dataset_index_sha256"],
            "collapsed": str(bool(state.get("collapsed"))),
        }
        version = log_and_register_backbone(backbone, model_name, tags, description=version_description(cfg, state))
    return version, state


def version_description(cfg: dict, state: dict) -> str:
    """How a registered version was trained, in a sentence for the MLflow UI."""
    t, data = cfg["train"], cfg["data"]
    ended = " (its embeddings collapsed)" if state.get("collapsed") else ""
    return (
        f"{cfg['method']['name']} pre-training, {state['step']} steps at batch {data['batch_size']} on "
        f"{t['num_workers']} {'GPU' if t['use_gpu'] else 'CPU'} workers{ended}; dataset {data['path']} "
        f"(index sha256 {cfg['dataset_index_sha256'][:12]}); MLflow run {cfg['run_id']}."
    )


def plot_history(run_id: str, out: Path) -> Path | None:
    import mlflow
    from matplotlib.figure import Figure  # not pyplot: no backend switched, nothing to close

    client = mlflow.MlflowClient()
    panels = [
        ("loss", "loss"),
        ("embedding_std", "embedding std"),
        ("effective_rank", "effective rank"),
        ("lr", "learning rate"),
    ]
    histories = {k: client.get_metric_history(run_id, k) for k, _ in panels}
    if not histories["loss"]:
        return None
    fig = Figure(figsize=(4 * len(panels), 3))
    axes = fig.subplots(1, len(panels))
    for ax, (key, title) in zip(axes, panels, strict=True):
        points = sorted((m.step, m.value) for m in histories[key])
        if points:
            ax.plot(*zip(*points, strict=True))
        ax.set_title(title)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    return out


def finished_run(cfg: dict, run_dir: Path) -> PretrainResult | None:
    """``--resume`` of a run that finished: what it registered, so that a second resume (a
    re-run quickstart, a retried job) does not register the same weights again as a new version."""
    import mlflow

    try:
        saved = json.loads((run_dir / RUN_RECORD).read_text())
        check_resumable(saved, cfg, run_dir.name)
        client = mlflow.MlflowClient()
        if client.get_run(saved["run_id"]).info.status != "FINISHED":
            return None
        versions = client.search_model_versions(f"run_id='{saved['run_id']}'")
    except (OSError, ValueError, KeyError, mlflow.exceptions.MlflowException):
        return None  # start_or_resume_run says what is wrong
    if not versions:
        return None
    last = max(versions, key=lambda v: int(v.version))
    checkpoint, step = latest_checkpoint(run_dir)
    return PretrainResult(
        saved["run_id"],
        run_dir.name,
        last.name,
        last.version,
        int(last.tags.get("step", step)),
        checkpoint.path if checkpoint else "",
        last.tags.get("collapsed") == "True",
        already_finished=True,
    )


def interrupted_line(run_dir: Path, cfg: dict, continue_with: str | None) -> str:
    """What an interrupted run kept, and the command that continues it."""
    return f"[pretrain] interrupted: the MLflow run is marked KILLED; {continuation(run_dir, cfg, continue_with)}"


def continuation(run_dir: Path, cfg: dict, continue_with: str | None) -> str:
    """The stopped run's last checkpoint, and the command that continues it from there."""
    _, step = latest_checkpoint(run_dir)
    kept = f"its last checkpoint, step {step}, is kept" if step else "no checkpoint was written yet"
    if continue_with is None:
        continue_with = f"mvssl pretrain --resume {shlex.quote(run_dir.name)}"  # quoted: copied into a shell
        if str(cfg["train"]["storage_path"]) != DEFAULTS["train"]["storage_path"]:
            continue_with += " " + shlex.quote(f"train.storage_path={cfg['train']['storage_path']}")
        if uri := cfg["tracking"]["uri"]:
            given = "MLFLOW_TRACKING_URI set to the tracking URI, password included"
            continue_with += (
                f" --tracking-uri {shlex.quote(uri)}" if without_password(uri) == uri else f" (with {given})"
            )
    return f"{kept}; continue it with: {continue_with}"


def run_folder(cfg: dict, name: str) -> Path:
    """``train.storage_path/name``, refused in one line when either is not a plain local folder."""
    if name in (".", "..") or "/" in name or "\\" in name:
        raise ConfigError(f"run name {name!r}: must be a plain name (it is a folder under train.storage_path)")
    try:
        return local_folder(cfg["train"]["storage_path"], "config: train.storage_path") / name
    except ValueError as err:
        raise ConfigError(str(err)) from None


def fit(trainer, cfg: dict, run_dir: Path, report, progress_every_s: float, continue_with: str | None):
    """``trainer.fit()`` with progress lines; a failure or an interrupt ends the MLflow run
    (FAILED, or KILLED with the line that continues it, then KeyboardInterrupt)."""
    import mlflow

    from mvssl_dist.train.progress import RunProgress, progress_actor_name
    from mvssl_dist.views.dataset import release_stats_actor

    run_id = cfg["run_id"]
    ctrl_c = signal.getsignal(signal.SIGINT)
    try:
        board = progress_actor_name(run_id)
        failures = cfg["train"]["max_failures"]
        with RunProgress(board, cfg["total_steps"], report, progress_every_s, failures) as progress:
            result = trainer.fit()
        tag_restarts(run_id, progress.printer.restarts)
        return result
    except Exception as err:
        mlflow.MlflowClient().set_terminated(run_id, status="FAILED")
        cause = str(err).strip().splitlines()[-1][:400]
        try:
            removed = removed_partial_line(remove_partial_checkpoints(run_dir))
            after = removed + continuation(run_dir, cfg, continue_with)
        except Exception:  # the storage itself may be what failed: the cause comes first
            after = f"its checkpoints are under {run_dir}"
        raise PretrainError(f"training failed: {cause}; the MLflow run is marked FAILED; {after}") from err
    except (KeyboardInterrupt, SystemExit):
        # Ctrl-C: Ray Train's handler aborts the workers, then exits from inside fit() with
        # SystemExit(0); SIGTERM (`ray job stop`): Ray's driver handler exits with SystemExit(15).
        mlflow.MlflowClient().set_terminated(run_id, status="KILLED")
        report(interrupted_line(run_dir, cfg, continue_with))
        raise KeyboardInterrupt from None
    finally:
        if ctrl_c is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, ctrl_c)  # Ray Train's handler would abort a finished run
        report_lost_views(cfg, f"views-{run_dir.name}", report)
        release_stats_actor(f"views-{run_dir.name}")


def tag_restarts(run_id: str, restarts: list[dict]) -> None:
    """Tag the MLflow run with the steps its workers were restarted from, when they were: the
    steps trained again after a restart are logged twice, and the run's page says why."""
    import mlflow

    if not restarts:
        return
    steps = ", ".join(str(r["step"]) for r in restarts)
    with contextlib.suppress(Exception):  # a tracking server away now must not fail a trained run
        mlflow.MlflowClient().set_tag(run_id, "workers_restarted_from_steps", steps)


def report_lost_views(cfg: dict, stats_name: str, report: Callable[[str], None]) -> None:
    """Tracks that gave no views say so, so that none leaves training unsaid: one line for the
    tracks the views could not read from their shards (damaged since the start-up check, or a
    dataset ingested before shard sizes were kept), listed as the run's ``views/unreadable.txt``,
    and one for those whose every draw stayed near-silent, listed as ``views/silent.txt``."""
    from mvssl_dist.views.dataset import view_stats
    from mvssl_dist.views.sampling import SILENCE_THRESHOLD

    silent_why = (
        "gave no views in at least one pass: every draw kept a near-silent segment "
        f"(RMS under {math.exp(SILENCE_THRESHOLD / 10):.2f} of the track's, the reference's rule)"
    )
    try:
        stats = view_stats(stats_name, timeout_s=10)
        unreadable = sorted(set(stats.get("malformed_keys", [])))
        silent = silent_sources(cfg["data"]["path"], stats.get("silent_keys", []))
        lines = [
            log_lost(cfg, unreadable, "views/unreadable.txt", "could not be read from their shards and gave no views"),
            log_lost(cfg, silent, "views/silent.txt", silent_why),
        ]
    except Exception as err:  # Ray or the tracking server gone (an interrupt): the line still goes out
        report(f"[pretrain] could not collect the tracks that gave no views: {first_line(err, cfg['tracking_uri'])}")
        return
    lines.append(short_epochs_line(stats, cfg["data"]["pairs_per_track"], cfg["steps_per_epoch"]))
    for line in filter(None, lines):
        report(line)


def short_epochs_line(stats: dict, pairs_per_track: int, steps_per_epoch: int) -> str | None:
    """Why epochs ran shorter than planned, when the views drawn gave under 95 % of their rows.

    ``stats`` as :func:`mvssl_dist.views.dataset.view_stats` gives it, over every shard drawn.
    A track stops giving rows in a pass when a draw stays near-silent after its redraws (music
    with quiet passages), or gives none when it is shorter than the views and their gap.
    """
    planned = stats.get("tracks", 0) * pairs_per_track
    rows = stats.get("rows", 0)
    if not planned or rows >= 0.95 * planned:
        return None
    why = []
    if stats.get("silent"):
        why.append(f"{stats['silent']:,} times a track stopped at a near-silent segment")
    if stats.get("too_short"):
        why.append(f"{stats['too_short']:,} times a track was too short for the views and their gap")
    return (
        f"[pretrain] the views gave {rows / planned:.0%} of the rows planned ({rows:,} of {planned:,} drawn): "
        f"{' and '.join(why)}, so an epoch was about {rows / planned * steps_per_epoch:.1f} steps, "
        f"not {steps_per_epoch}"
    )


def silent_sources(dataset_dir: str, names: list[str]) -> list[str]:
    """``shard:key`` -> ``uri (shard:key)``, as a user knows the track by its file."""
    if not names:
        return []
    index = load_index(dataset_dir, columns=["key", "source_uri"])
    uris = dict(zip(index.column("key").to_pylist(), index.column("source_uri").to_pylist(), strict=True))
    return sorted(f"{display_uri(uris.get(name.rpartition(':')[2], '?'))} ({name})" for name in set(names))


def log_lost(cfg: dict, names: list[str], artifact: str, why: str) -> str | None:
    """Log the list as the run's ``artifact``; the one line that says so, or None when empty."""
    import mlflow

    if not names:
        return None
    mlflow.MlflowClient().log_text(cfg["run_id"], "\n".join(names) + "\n", artifact)
    return f"[pretrain] {len(names)} track(s) {why}, e.g. {names[0]}; listed in the MLflow run as {artifact}"


def ending_line(cfg: dict, state: dict) -> str | None:
    """Why a run ended before the steps it planned (time box, fitted schedules, views run out), if it did."""
    steps, collapsed = state["step"], bool(state.get("collapsed"))
    fitted = state.get("total_steps", cfg["total_steps"])  # the last step, once fitted to train.max_minutes
    minutes = f"train.max_minutes ({cfg['train']['max_minutes']:g})"
    if state.get("out_of_time"):
        return f"[pretrain] {minutes} was reached at step {steps} of {fitted}; registered what was trained"
    if fitted < cfg["total_steps"] and steps >= fitted:
        return (
            f"[pretrain] {steps} of the {cfg['total_steps']} steps planned fitted in {minutes} at this machine's "
            "pace; the schedules ended there"
        )
    if steps < fitted and not collapsed:
        return f"[pretrain] the views ran out at step {steps} of {fitted}; registered what was trained"
    return None


def pretrain(
    cfg: dict,
    run_name: str | None = None,
    resume: bool = False,
    ray_address: str | None = None,
    report: Callable[[str], None] = print,
    progress_every_s: float = 20.0,
    continue_with: str | None = None,
) -> PretrainResult:
    """Validate, fit, register. ``cfg`` comes from :func:`mvssl_dist.config.load_config`.
    ``report`` gets the run's lines, a progress line among them every ``progress_every_s``.
    Interrupted (Ctrl-C, SIGTERM), the run is marked KILLED, ``report`` is told the command that
    continues it (``continue_with``, or the ``mvssl pretrain --resume`` one), and
    KeyboardInterrupt is raised."""
    facts = dataset_facts(cfg)
    cfg["data"]["path"] = facts["path"]
    cfg = derive(cfg, facts)
    name = run_name or cfg["tracking"]["run_name"] or f"{cfg['method']['name']}-{config_hash(cfg)[:6]}-{os.getpid()}"
    run_dir = run_folder(cfg, name)
    cfg["dataset_index_sha256"] = facts["index_sha256"]
    cfg["tracking_uri"] = cfg["tracking"]["uri"] or default_tracking_uri()
    cfg["experiment_id"] = connect(cfg["tracking_uri"], cfg["tracking"]["experiment"])
    model_name = cfg["tracking"]["register_as"] or f"mvssl-{cfg['method']['name']}"
    try:
        with run_hold(run_dir, resume):
            return train_and_register(
                cfg, facts, run_dir, model_name, resume, ray_address, report, continue_with, progress_every_s
            )
    except FolderBusy as err:
        raise PretrainError(f"run {name}: {err}") from None


def run_hold(run_dir: Path, resume: bool):
    """One process trains a run at a time: a second ``--resume`` of it (a retried job, a
    quickstart started again in another terminal) would train it twice into the same checkpoints
    and MLflow run. A run to resume that does not exist gets no folder (its error comes next)."""
    if resume and not run_dir.is_dir():
        return contextlib.nullcontext()
    return exclusive(run_dir, "mvssl pretrain")


def train_and_register(
    cfg: dict,
    facts: dict,
    run_dir: Path,
    model_name: str,
    resume: bool,
    ray_address: str | None,
    report: Callable[[str], None],
    continue_with: str | None,
    progress_every_s: float = 20.0,
) -> PretrainResult:
    """Start or resume the run, fit it, register its backbone: :func:`pretrain` with the run held."""
    import mlflow

    from mvssl_dist.raytools import init_ray

    name = run_dir.name
    if resume and not (run_dir / RUN_RECORD).is_file():  # said before Ray starts
        raise PretrainError(f"--resume {name}: no such run under {run_dir.parent}")
    if resume and (done := finished_run(cfg, run_dir)):
        report(
            f"[pretrain] run {name} finished at step {done.steps} and is registered as {done.model_name} "
            f"version {done.model_version}; nothing to continue"
        )
        return done
    init_ray(ray_address)
    per_worker, view_cpus = size_cpus(cfg)
    check_gpus(cfg, ray_address, report)
    run_id = cfg["run_id"] = start_or_resume_run(cfg, facts, run_dir, resume)
    checkpoint, start_step = latest_checkpoint(run_dir) if resume else (None, 0)
    if resume:
        set_aside_unusable_ray_record(run_dir, start_step, report)
    report(
        f"[pretrain] run {name} ({run_id}): {cfg['method']['name']}, {facts['tracks']} tracks, "
        f"{cfg['steps_per_epoch']} steps/epoch, {cfg['total_steps']} steps, from step {start_step}; "
        f"{cfg['train']['num_workers']} workers x {per_worker:g} CPU"
    )
    if facts["too_short"]:
        report(
            f"[pretrain] {facts['too_short']} more tracks are shorter than the {facts['need_s']:g} s "
            f"{cfg['data']['n_views']} views need: they give no views"
        )
    if checkpoint is not None and trained_to_the_end(checkpoint, cfg):  # stopped while registering
        report(f"[pretrain] run {name} was trained to the end (step {start_step}); registering its backbone")
    else:
        trainer = build_trainer(cfg, run_dir, per_worker, view_cpus, start_step)
        recorded = fit(trainer, cfg, run_dir, report, progress_every_s, continue_with).checkpoint
        checkpoint, _ = newest_checkpoint(recorded, run_dir)
        if checkpoint is None:
            mlflow.MlflowClient().set_terminated(run_id, status="FAILED")
            raise PretrainError("training ended without a checkpoint; nothing registered")
        tidy_checkpoints(run_dir, Path(checkpoint.path), report)
    try:
        with checkpoint.as_directory() as checkpoint_dir:
            version, state = finish(cfg, run_id, Path(checkpoint_dir), model_name)
        mlflow.MlflowClient().set_terminated(run_id, status="FINISHED")
    except mlflow.exceptions.MlflowException as err:  # the tracking server away at the end
        cause = first_line(err, cfg["tracking_uri"])  # MLflow quotes the URL: its password masked
        raise PretrainError(f"registering failed: {cause}; {continuation(run_dir, cfg, continue_with)}") from None
    if line := ending_line(cfg, state):
        report(line)
    collapsed = bool(state.get("collapsed"))
    return PretrainResult(run_id, name, model_name, version, state["step"], checkpoint.path, collapsed)
