"""Pre-training end to end on a tiny ingested dataset: Ray Train (2 CPU workers) + MLflow registry."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from catalogue import ingested_catalogue
from distributed_helpers import ensure_ray
from registry_checks import assert_registered_as_trained

from mvssl_dist.cli import main
from mvssl_dist.config import ConfigError, load_config
from mvssl_dist.train.checkpoints import latest_checkpoint
from mvssl_dist.train.pretrain import (
    epochs_to_read,
    pretrain,
    short_epochs_line,
)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    ensure_ray()
    return ingested_catalogue(tmp_path_factory.mktemp("pt_src"), tmp_path_factory.mktemp("pt_ds"), 16.0)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def tiny(dataset, method="contrastive", **extra) -> list[str]:
    overrides = {
        "method.name": method,
        "data.path": str(dataset),
        "data.batch_size": 4,
        "data.pairs_per_track": 2,
        "data.shuffle_buffer": 0,
        "train.max_steps": 3,
        "train.checkpoint_every": 3,
        "train.log_every": 1,
        "train.num_workers": 2,
    }
    overrides.update(extra)
    return [f"{k}={v}" for k, v in overrides.items()]


def test_views_that_run_out_keep_every_trained_step(dataset, workdir, monkeypatch):
    """Skipped views make epochs shorter than planned. A 1,600-step run used to stop short and
    register its last periodic checkpoint, 40-odd trained steps earlier, and with 10 % + 1 spare an
    800-step run whose epochs gave 85 % of their rows stopped at step 758. Now twice the planned
    epochs are streamed, and if the views still run out, the last step is checkpointed and registered."""
    assert epochs_to_read(1600, 15) * 15 >= 2 * 1600 + 15 and epochs_to_read(3, 15) == 2
    assert epochs_to_read(800, 15) * round(15 * 407 / 480) >= 800
    monkeypatch.setattr("mvssl_dist.train.pretrain.epochs_to_read", lambda total, per_epoch: 1)
    said = []
    # data.path relative to this folder, not Ray's: the workers read the shards by their absolute path
    relative = os.path.relpath(dataset)
    overrides = tiny(
        dataset, "barlow_twins", **{"data.path": relative, "train.max_steps": 50, "train.checkpoint_every": 50}
    )
    result = pretrain(
        load_config(ROOT / "configs" / "barlow_twins.yaml", overrides),
        run_name="t-out",
        report=said.append,
        progress_every_s=0.5,
    )
    assert 0 < result.steps < 50
    state = torch.load(Path(result.checkpoint_path) / "state.pt", weights_only=True)
    assert state["step"] == result.steps and state["last"]  # a resume registers it, trains no further
    version = mlflow.MlflowClient().get_model_version("mvssl-barlow_twins", result.model_version)
    assert version.tags["step"] == str(result.steps)
    assert_registered_as_trained(result.run_id, "barlow_twins")
    assert mlflow.MlflowClient().get_run(result.run_id).data.tags["views_ran_out_at_step"] == str(result.steps)
    assert f"the views ran out at step {result.steps} of 50" in "\n".join(said)
    # rank 0's progress reached the driver while it ran, the step the run ended at included
    progress = [line for line in said if line.startswith("[pretrain] step ")]
    assert progress and progress[-1].startswith(f"[pretrain] step {result.steps} of 50: loss "), said


def test_a_time_box_fits_the_schedules_so_the_run_ends_annealed(dataset, workdir, monkeypatch):
    """400 steps asked, 0.4 minutes of loop allowed: from the pace after a fifth of the box, the
    run's last step is brought forward, so the learning rate ends its cosine inside the box. (It
    used to be cut at the step the box ran out, near its peak: the quickstart's 372 planned steps
    stopped at step 230 on a machine slower than its step timing said.)"""
    from mvssl_dist.train.loop import schedules_for

    monkeypatch.setenv("MVSSL_FAULT_STEP_DELAY_S", "0.1")  # a steadier pace than bare tiny steps
    said = []
    extra = {"train.max_steps": 400, "train.max_minutes": 0.4, "train.checkpoint_every": 400, "train.log_every": 2}
    cfg = load_config(None, tiny(dataset, **extra))
    result = pretrain(copy.deepcopy(cfg), run_name="boxed", report=said.append)
    run = mlflow.MlflowClient().get_run(result.run_id)
    fitted = int(run.data.tags["steps_fitted_to_max_minutes"])
    assert 0 < result.steps <= fitted < 400, said
    lrs = sorted((m.step, m.value) for m in mlflow.MlflowClient().get_metric_history(result.run_id, "lr"))
    # The last step's rate is the fitted schedules' (warm-up and cosine over `fitted` steps), not
    # the planned 400 steps'. (A machine whose start-up took most of the box fitted 7 steps: a
    # cosine of 4 steps ends at 15 % of the peak, so "under 10 %" failed there.)
    cfg["steps_per_epoch"] = int(re.search(r"(\d+) steps/epoch", "\n".join(said)).group(1))
    planned, fits = (schedules_for({**cfg, "total_steps": n}).at(result.steps - 1)["lr"] for n in (400, fitted))
    assert lrs[-1][0] == result.steps and lrs[-1][1] == pytest.approx(fits, rel=1e-6), (lrs[-3:], fits, planned)
    assert fits != pytest.approx(planned, rel=1e-2), (fits, planned)
    if fitted >= 20:  # a cosine of 10 steps or more ends under 3 % of its peak
        assert lrs[-1][1] < 0.03 * 1e-3, lrs[-3:]
    ended = f"[pretrain] {result.steps} of the 400 steps planned fitted in train.max_minutes (0.4)"
    stopped = f"[pretrain] train.max_minutes (0.4) was reached at step {result.steps} of {fitted}"
    assert any(line.startswith((ended, stopped)) for line in said), said
    assert said[-2].startswith(f"[pretrain] step {result.steps} of {fitted}: loss "), said


def test_a_collapsed_run_is_stopped_and_a_failed_registration_registers_on_resume(
    dataset, workdir, capsys, monkeypatch
):
    """VICReg with a threshold every embedding is under (the std of L2-normalised 1024-d vectors is
    about 0.03): the signals are read every 2nd step, so 4 steps of patience end the run at step 4.
    The tracking server is away when training ends: the driver's registration used to raise a
    traceback. The resume registers without training; a run stopped early for collapse was trained
    on from its last checkpoint, as only the last planned step counted as the end."""
    import importlib

    module = importlib.import_module("mvssl_dist.train.pretrain")
    real_finish = module.finish

    def server_away(*args, **kwargs):
        raise mlflow.exceptions.MlflowException("API request to http://tracking/ failed: Connection refused")

    monkeypatch.setattr(module, "finish", server_away)
    extra = {
        "train.collapse_std": 1.0,
        "train.collapse_patience": 4,
        "train.stop_on_collapse": "true",
        "train.log_every": 2,
        "train.max_steps": 12,
        "train.checkpoint_every": 12,
    }
    vicreg = ["--config", str(ROOT / "configs" / "vicreg.yaml"), *tiny(dataset, "vicreg", **extra)]
    assert main(["pretrain", *vicreg, "--run-name", "collapsing"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "mvssl: error: registering failed: API request to http://tracking/ failed: Connection refused; its last "
        "checkpoint, step 4, is kept; continue it with: mvssl pretrain --resume collapsing"
    )
    monkeypatch.setattr(module, "finish", real_finish)
    monkeypatch.setattr(module, "build_trainer", lambda *a, **k: pytest.fail("trained again"))
    assert main(["pretrain", "--resume", "collapsing"]) == 0
    said = capsys.readouterr().out
    assert "[pretrain] run collapsing was trained to the end (step 4); registering its backbone" in said, said
    assert "warning: the embeddings collapsed during this run (tagged collapsed=true)" in said
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("mvssl-pretrain").experiment_id])
    assert run.data.tags["collapsed"] == "true" and run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "effective_rank")) == [2, 4]
    assert_registered_as_trained(run.info.run_id, "vicreg")
    (version,) = client.search_model_versions(f"run_id='{run.info.run_id}'")
    assert version.tags["step"] == "4" and str(version.version) == "1"


def run_until_a_checkpoint(args: list[str], cwd: Path, run_dir: Path, env: dict, **popen) -> subprocess.Popen:
    """`mvssl ARGS` in a process of its own, a second a step, returned once its first checkpoint is
    written. The driver joins this process's Ray, as a job on a shared cluster would: stopping it
    then takes down the job (controller, workers), not a cluster, and saves a Ray start-up."""
    env = {**os.environ, **env, "MVSSL_FAULT_STEP_DELAY_S": "1"}
    env["RAY_ADDRESS"] = ensure_ray().get_runtime_context().gcs_address
    cli = [sys.executable, "-m", "mvssl_dist.cli", *args]
    proc = subprocess.Popen(cli, cwd=cwd, env=env, text=True, start_new_session=True, **popen)
    deadline = time.time() + 400
    while time.time() < deadline and latest_checkpoint(run_dir)[0] is None:
        time.sleep(0.2)
    return proc


def final_state(run_dir: Path) -> dict:
    checkpoint, _ = latest_checkpoint(run_dir)
    return torch.load(Path(checkpoint.path) / "state.pt", map_location="cpu", weights_only=True)


def test_ctrl_c_stops_a_run_that_resumes_as_if_never_stopped(dataset, workdir, capsys):
    """Ray Train's Ctrl-C handler aborts the workers and exits from inside fit(): the run used to
    end with exit 1, no word, and its MLflow run left RUNNING for good. Now it says the command
    that continues it, which resumes the same MLflow run. BYOL, so that the EMA teacher and the
    predictor come back from the checkpoint too: with train.deterministic the resumed run ends
    with the weights of one never stopped, bit for bit (before it, Ray Train dropped the views'
    preserve_order, and two such runs differed). Resuming it once more when it has finished
    registers nothing new (it registered the same weights as another version)."""
    storage = workdir / "elsewhere"
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    extra = {"train.max_steps": 8, "train.deterministic": "true", "train.storage_path": storage}
    config = ["--config", str(ROOT / "configs" / "byol.yaml"), *tiny(dataset, "byol", **extra), "--tracking-uri", uri]
    args = ["pretrain", *config, "train.checkpoint_every=2", "--run-name", "stop-me"]
    run_dir = storage / "stop-me"
    proc = run_until_a_checkpoint(args, workdir, run_dir, {}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends its foreground job
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "mvssl: error: interrupted", err
    (line,) = [x for x in out.splitlines() if x.startswith("[pretrain] interrupted: ")]
    assert "the MLflow run is marked KILLED; its last checkpoint, step " in line, line
    run_id = json.loads((run_dir / "mvssl_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient()
    assert client.get_run(run_id).info.status == "KILLED"
    command = shlex.split(line.split("continue it with: ")[1])
    assert command[:4] == ["mvssl", "pretrain", "--resume", "stop-me"], command
    # what the run learns cannot change on resume; the run's own config needs no repeating
    assert main([*command[1:], "train.lr=0.5", "method.name=contrastive"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--resume stop-me: would change what the run learns (" in err and "\n" not in err, err
    assert "method.name 'byol' -> 'contrastive'" in err and "train.lr 0.001 -> 0.5" in err, err
    # Ray Train's record of the checkpoints cut short (a full disk; a kill as Ray writes it) made
    # every resume fail inside Ray; the run goes on from its newest checkpoint on disk instead.
    (run_dir / "checkpoint_manager_snapshot.json").write_text("")
    assert main([*command[1:], "train.max_minutes=30"]) == 0  # how it runs may change
    assert "[pretrain] Ray Train's record of the run's checkpoints is set aside as " in capsys.readouterr().out
    runs = client.search_runs([client.get_experiment_by_name("mvssl-pretrain").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    assert sorted({m.step for m in client.get_metric_history(run_id, "loss")}) == list(range(1, 9))
    assert client.get_run(run_id).info.status == "FINISHED"
    assert_registered_as_trained(run_id, "byol")
    (version,) = client.search_model_versions(f"run_id='{run_id}'")
    assert main(command[1:]) == 0
    said = capsys.readouterr().out
    assert f"finished at step 8 and is registered as {version.name} version {version.version}; nothing to" in said
    assert f"-> models:/{version.name}/{version.version}" in said
    assert len(client.search_model_versions(f"run_id='{run_id}'")) == 1
    assert main(["pretrain", *config, "train.checkpoint_every=8", "--run-name", "straight"]) == 0
    resumed, straight = final_state(run_dir), final_state(storage / "straight")
    assert resumed["step"] == straight["step"] == 8
    for key, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=0, msg=key)


def test_a_killed_worker_is_replaced_and_with_no_retries_left_the_run_says_what_it_kept(dataset, workdir, monkeypatch):
    """DINO-style clustering, so that the teacher and its centre survive the restart too. Then the
    same fault with no retries left: the failure (a worker lost, a full disk) said only the last
    line of Ray's error, not that a checkpoint was kept, nor how to go on from it."""
    import ray
    from ray.cluster_utils import Cluster

    from mvssl_dist.train.pretrain import PretrainError

    killed = workdir / "killed"
    monkeypatch.setenv("MVSSL_FAULT_KILL_AT_STEP", "2")  # just after the step-2 checkpoint
    monkeypatch.setenv("MVSSL_FAULT_MARKER", str(killed))  # a worker is killed while this file is absent
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    extra = {"train.max_steps": 5, "train.checkpoint_every": 2, "train.max_failures": 1}
    try:
        cfg = load_config(ROOT / "configs" / "clustering.yaml", tiny(dataset, "clustering", **extra))
        lines: list[str] = []
        result = pretrain(cfg, run_name="faulty", ray_address=cluster.address, report=lines.append)
        assert killed.exists()  # the worker really was killed once
        killed.unlink()
        cfg = load_config(None, tiny(dataset, **{**extra, "train.max_steps": 6, "train.max_failures": 0}))
        with pytest.raises(PretrainError) as failed:
            pretrain(cfg, run_name="fails", ray_address=cluster.address, report=lambda m: None)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert result.steps == 5 and result.model_version == "1"
    assert_registered_as_trained(result.run_id, "clustering")
    # Ray Train had not yet collected the step-2 checkpoint from both workers when one was killed
    # (it polls them every 2 s), and the new group started again from step 0: steps 1 and 2 were
    # trained and logged twice. The checkpoint was whole on disk: the new group goes on from it.
    history = mlflow.MlflowClient().get_metric_history(result.run_id, "loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5], history
    restarted = (
        "[pretrain] a worker failed or was lost; Ray Train restarted the workers (restart 1), going on from the step 2"
    )
    alone = restarted + " checkpoint; another failure ends the run (train.max_failures 1)"
    assert [line for line in lines if line.startswith(restarted)] == [alone], lines
    assert mlflow.MlflowClient().get_run(result.run_id).data.tags["workers_restarted_from_steps"] == "2"
    # and the step-2 checkpoint, superseded, goes as Ray's num_to_keep (2) would have removed it
    assert len([p for p in (workdir / "mvssl_runs" / "faulty").glob("checkpoint_*") if p.is_dir()]) == 2
    assert killed.exists()
    said = str(failed.value)
    assert said.startswith("training failed: ") and "\n" not in said, said
    assert said.endswith(
        "; the MLflow run is marked FAILED; its last checkpoint, step 2, is kept; "
        "continue it with: mvssl pretrain --resume fails"
    ), said
    run_id = json.loads((workdir / "mvssl_runs" / "fails" / "mvssl_run.json").read_text())["run_id"]
    assert mlflow.MlflowClient().get_run(run_id).info.status == "FAILED"


def test_epochs_shorter_than_planned_are_said_with_why():
    """The views of a library with quiet sections gave 407 of 480 rows an epoch, and nothing said
    why a run's epochs were short (or, with the old spare, why it ran out of views)."""
    full = {"tracks": 120, "rows": 476, "silent": 1, "too_short": 0}
    assert short_epochs_line(full, 4, 15) is None  # the quickstart's library: 99 %
    line = short_epochs_line({"tracks": 120, "rows": 407, "silent": 21, "too_short": 0}, 4, 15)
    assert line == (
        "[pretrain] the views gave 85% of the rows planned (407 of 480 drawn): 21 times a track stopped at a "
        "near-silent segment, so an epoch was about 12.7 steps, not 15"
    )
    line = short_epochs_line({"tracks": 2000, "rows": 1000, "silent": 0, "too_short": 1000}, 1, 10)
    assert "(1,000 of 2,000 drawn): 1,000 times a track was too short for the views and their gap, so" in line, line
    assert short_epochs_line({}, 4, 15) is None


def hold_elsewhere(folder: Path) -> int:
    """``folder``'s lock as another process holds it (flock is per open file, so a second open
    here conflicts like one in another process); returns the descriptor to close."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".mvssl.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, b"mvssl pretrain (pid 4242 on elsewhere)\n")
    return fd


def test_a_run_being_trained_is_not_trained_twice(dataset, workdir, capsys, monkeypatch):
    """A second --resume of a running run (a retried job, the quickstart started again in another
    terminal) trained it again into the same checkpoints and MLflow run."""
    fd = hold_elsewhere(workdir / "mvssl_runs" / "busy")
    try:
        for resume in ("--resume", "--run-name"):
            assert main(["pretrain", *tiny(dataset), resume, "busy"]) == 1
            err = capsys.readouterr().err.strip().splitlines()[-1]
            assert err == (
                f"mvssl: error: run busy: {workdir / 'mvssl_runs' / 'busy'}: mvssl pretrain (pid 4242 on elsewhere) "
                "is writing here; wait for it to end, or choose another folder"
            )
    finally:
        os.close(fd)
    assert not mlflow.MlflowClient().search_runs([e.experiment_id for e in mlflow.search_experiments()])
    from mvssl_dist import raytools

    monkeypatch.setattr(raytools, "init_ray", lambda *a, **k: pytest.fail("Ray started for a run that is not there"))
    assert main(["pretrain", *tiny(dataset), "--resume", "no-such-run"]) == 1
    assert "--resume no-such-run: no such run" in capsys.readouterr().err
    assert not (workdir / "mvssl_runs" / "no-such-run").exists()


def test_config_errors_fail_fast_with_the_field_named(dataset, workdir, capsys):
    cases = [
        (["train.lrr=1"], "unknown key 'train.lrr'"),
        (["train.lr=fast"], "train.lr must be a number"),
        (["data.path=/nope"], "data.path /nope: not an ingested dataset"),
        (["data.path=s3://b/ds"], "data.path s3://b/ds: a DATASET_DIR is read from a local or mounted disk"),
        ([f"data.path={dataset}", "method.name=simsiam"], "unknown method 'simsiam'"),
        ([f"data.path={dataset}", "data.batch_size=512"], "larger than the dataset gives per epoch"),
        # tracks too short for the views used to train on nothing for a minute: "ended without a checkpoint"
        ([f"data.path={dataset}", "data.min_gap_s=30"], "tracks is long enough for 2 views of 4 s at least 30 s apart"),
        # these reached the workers: ~2 minutes of Ray Train start-up, then a TypeError from the loss
        (
            [f"data.path={dataset}", "method.options.tau=0.1"],
            "method.options.tau: not an option of contrastive (options: temperature, head_widths)",
        ),
        ([f"data.path={dataset}", "method.options.temperature=abc"], "method.options.temperature must be a number"),
        (
            [f"data.path={dataset}", "data.augment=[{name: gain, max_db: abc}]"],
            "data.augment[0].max_db must be a number",
        ),
        ([f"data.path={dataset}", "data.augment={1: [{name: echo}]}"], "data.augment[view 1][0]: unknown augmentation"),
        (
            [f"data.path={dataset}", "data.augment={2: [{name: gain}]}"],
            "data.augment: view 2 is not one of the 2 views",
        ),
        (
            [f"data.path={dataset}", "method.name=byol", "method.options.predictor_widths=[256, 100]"],
            "predictor_widths must end with the head's output width",
        ),
        ([f"data.path={dataset}", "data.batch_size=4", "train.max_minutes=-1"], "train.max_minutes must be >= 0"),
        ([f"data.path={dataset}", "data.batch_size=4", "--run-name", "../up"], "run name '../up': must be a plain"),
        # MLflow refused it only when registering, after the whole run
        (
            [f"data.path={dataset}", "data.batch_size=4", "--register-as", "team/model"],
            "tracking.register_as 'team/model': must be a registered model name, not empty, without '/' or ':'",
        ),
        # became a local folder named s3:/b/runs under the working one
        (
            [f"data.path={dataset}", "data.batch_size=4", "train.storage_path=s3://b/runs"],
            "train.storage_path s3://b/runs: outputs go to a folder on a local or mounted file system",
        ),
        (
            [f"data.path={dataset}", "data.batch_size=4", "tracking.uri=http://127.0.0.1:9"],
            "tracking server http://127.0.0.1:9",
        ),
    ]
    for overrides, message in cases:
        start = time.perf_counter()
        assert main(["pretrain", *overrides]) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
        assert time.perf_counter() - start < 60
    with pytest.raises(ConfigError, match="data.augment_on must be one of"):
        load_config(None, ["data.augment_on=gpu"])


def test_a_damaged_shard_is_refused_before_training(dataset, workdir, capsys):
    copy = workdir / "copied"
    shutil.copytree(dataset, copy)
    shard = sorted((copy / "shards").glob("*.tar"))[0]
    size = shard.stat().st_size
    with open(shard, "r+b") as handle:
        handle.truncate(size // 2)  # a copy to the cluster that stopped part-way
    assert main(["pretrain", *tiny(copy)]) == 1
    err = capsys.readouterr().err.strip()
    assert f"shards/{shard.name} is {size // 2:,} bytes, but ingest wrote {size:,}" in err and "\n" not in err
    shard.unlink()
    assert main(["pretrain", *tiny(copy)]) == 1
    assert f"shards/{shard.name} is missing; copy the shards again" in capsys.readouterr().err


def test_tracks_that_gave_no_views_are_said_and_listed(dataset, workdir, monkeypatch):
    from mvssl_dist.shards.reader import load_index
    from mvssl_dist.shards.uris import display_uri
    from mvssl_dist.train import pretrain as module
    from mvssl_dist.views import dataset as views

    index = load_index(dataset).to_pylist()
    quiet = [f"{Path(row['shard']).name}:{row['key']}" for row in index[:2]]
    bad = ["s1.tar:k2 (not in the shard)", "s1.tar:k1 (corrupt tar)"]
    stats = {"malformed_keys": bad + bad, "silent_keys": quiet[::-1], "tracks": 40, "rows": 158}  # two epochs
    monkeypatch.setattr(views, "view_stats", lambda name, timeout_s: stats)
    run = mlflow.MlflowClient().create_run(mlflow.set_experiment("views").experiment_id)
    cfg = {"run_id": run.info.run_id, "tracking_uri": "", "data": {"path": str(dataset), "pairs_per_track": 4}}
    cfg["steps_per_epoch"] = 5
    lines: list[str] = []
    module.report_lost_views(cfg, "views-x", lines.append)
    named = sorted(f"{display_uri(row['source_uri'])} ({name})" for row, name in zip(index, quiet, strict=False))
    assert lines == [
        "[pretrain] 2 track(s) could not be read from their shards and gave no views, e.g. s1.tar:k1 (corrupt tar); "
        "listed in the MLflow run as views/unreadable.txt",
        f"[pretrain] 2 track(s) gave no views in at least one pass: every draw kept a near-silent segment (RMS "
        f"under 0.47 of the track's, the reference's rule), e.g. {named[0]}; listed in the MLflow run as "
        "views/silent.txt",
    ]
    listed = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/views/unreadable.txt")
    assert listed.split("\n") == [*sorted(bad), ""]
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/views/silent.txt").split("\n") == [*named, ""]
    monkeypatch.setattr(views, "view_stats", lambda name, timeout_s: {"malformed_keys": [], "silent_keys": []})
    module.report_lost_views(cfg, "views-x", lines.append)
    assert len(lines) == 2  # nothing more to say


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_gpu_training_without_a_gpu_is_refused_not_left_waiting(dataset, workdir, capsys):
    """It used to start the MLflow run, then wait for ever for GPUs this machine's Ray never has."""
    start = time.perf_counter()
    assert main(["pretrain", *tiny(dataset, **{"train.use_gpu": "true"})]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # above it: MLflow creating its tables
    assert err == (
        "mvssl: error: config: train.use_gpu=true needs 2 GPUs (one per worker); this machine has 0 "
        "(set train.use_gpu=false, or fewer train.num_workers)"
    ), err
    assert time.perf_counter() - start < 60
    assert not mlflow.search_runs(search_all_experiments=True, output_format="list")


def test_a_resume_against_another_tracking_store_says_where_the_run_was(tmp_path, monkeypatch):
    """It was an MlflowException traceback."""
    from mvssl_dist.train.pretrain import PretrainError, start_or_resume_run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(None, [f"train.storage_path={tmp_path}"])
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    record = {"run_id": "abc123", "tracking_uri": "sqlite:////elsewhere/mlflow.db", "dataset_index_sha256": "x"}
    record["config"] = {k: cfg[k] for k in ("method", "data", "train", "tracking")}
    (run_dir / "mvssl_run.json").write_text(json.dumps(record))
    cfg.update(dataset_index_sha256="x", tracking_uri=f"sqlite:///{tmp_path / 'here.db'}")
    mlflow.set_tracking_uri(cfg["tracking_uri"])
    message = r"--resume r: MLflow run abc123 is not in sqlite:///.*here\.db \(it was tracked in sqlite:////elsewhere"
    with pytest.raises(PretrainError, match=message):
        start_or_resume_run(cfg, {}, run_dir, resume=True)


def test_a_password_in_the_tracking_uri_is_not_written_down(tmp_path, monkeypatch):
    """`--tracking-uri postgresql://user:pw@host/db` went into the run's MLflow params (shown to
    everyone who browses runs), its config.yaml, its checkpoints and mvssl_run.json."""
    from mvssl_dist.config import recorded_config
    from mvssl_dist.tracking import TrackingError, connect
    from mvssl_dist.train.pretrain import interrupted_line, start_or_resume_run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    secret = "postgresql://mvssl:hunter2-pw@db.internal:5432/mlflow"
    cfg = load_config(None, [f"train.storage_path={tmp_path}", f"tracking.uri={secret}"])
    store = f"sqlite:///{tmp_path / 'here.db'}"  # the run really goes here; the config only names the other
    cfg.update(dataset_index_sha256="x", tracking_uri=secret, experiment_id=connect(store, "e"))
    run_id = start_or_resume_run(cfg, {"index_sha256": "x"}, tmp_path / "r", resume=False)
    written = json.dumps(mlflow.MlflowClient().get_run(run_id).data.params)
    written += (tmp_path / "r" / "mvssl_run.json").read_text() + json.dumps(recorded_config(cfg))
    written += interrupted_line(tmp_path / "r", cfg, None)
    assert "hunter2" not in written and "postgresql://mvssl@db.internal:5432/mlflow" in written
    assert cfg["tracking"]["uri"] == secret  # the run itself still connects with it
    assert json.loads((tmp_path / "r" / "mvssl_run.json").read_text())["config"]["tracking"]["uri"] is None
    assert "(with MLFLOW_TRACKING_URI set to the tracking URI, password included)" in interrupted_line(
        tmp_path / "r", cfg, None
    )
    with pytest.raises(TrackingError) as failed:  # nothing listens there; MLflow quotes the URL it tried
        connect("http://mvssl:hunter2-pw@127.0.0.1:9", "e")
    assert "hunter2" not in str(failed.value) and "tracking server http://mvssl@127.0.0.1:9" in str(failed.value)
