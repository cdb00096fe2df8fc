"""The training loop's pure parts: which steps log, collapse counting, metrics read once, one step,
the views' timing and the augmentations applied on the training device."""

import time

import torch

from mvssl_dist.methods import build_method
from mvssl_dist.train.loop import (
    CollapseWatch,
    Rank0Tracker,
    Throughput,
    as_floats,
    device_augmentation,
    logged,
    param_groups,
    timed,
    train_step,
)
from mvssl_dist.train.schedules import Schedules

THRESHOLDS = {"collapse_std": 1e-4, "collapse_rank": 1.5, "collapse_patience": 50}
LOW = {"embedding_std": 1e-6, "effective_rank": 1.01}
NORMAL = {"embedding_std": 0.03, "effective_rank": 300.0}


def test_logged_steps_are_every_log_every_and_the_last():
    cfg = {"train": {"log_every": 10}, "total_steps": 25}
    assert [s for s in range(1, 26) if logged(s, cfg)] == [10, 20, 25]


def test_collapse_counts_the_steps_between_low_readings():
    watch = CollapseWatch(THRESHOLDS)
    assert [watch.update(LOW, step) for step in (10, 20, 30, 40)] == [False] * 4
    assert watch.update(LOW, 50)  # 50 steps low, read every 10


def test_a_normal_reading_starts_the_count_again():
    watch = CollapseWatch(THRESHOLDS, step=100)  # a resumed run counts from its own start
    for step in (110, 120, 130, 140):
        watch.update(LOW, step)
    assert not watch.update(NORMAL, 150)
    assert not watch.update(LOW, 190) and watch.update(LOW, 200)
    assert not CollapseWatch(THRESHOLDS).update({"embedding_std": 0.03, "effective_rank": 1.2}, 49)
    assert CollapseWatch(THRESHOLDS).update({"embedding_std": 0.03, "effective_rank": 1.2}, 50)


def test_a_step_returns_tensors_and_only_watched_steps_compute_the_collapse_signals():
    torch.manual_seed(0)
    method = build_method("vicreg").train()
    views = torch.randn(4, 2, 64000) * 0.1
    schedule = Schedules(total_steps=10, steps_per_epoch=10).at(0)
    _, quiet = method(views, schedule, watch=False)
    assert "effective_rank" not in quiet and "embedding_std" not in quiet
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 and not v.requires_grad for v in quiet.values())
    _, watched = method(views, schedule, watch=True)
    numbers = as_floats(watched)
    assert {"loss", "inv", "var", "cov", "embedding_std", "effective_rank"} <= set(numbers)
    assert all(isinstance(v, float) for v in numbers.values())
    assert 1.0 < numbers["effective_rank"] <= 8 and numbers["embedding_std"] > 0
    assert abs(numbers["loss"] - (numbers["inv"] + numbers["var"] + numbers["cov"])) < 1e-5


def test_one_train_step_moves_the_weights_at_the_scheduled_rate():
    torch.manual_seed(0)
    method = build_method("contrastive").train()
    optimizer = torch.optim.AdamW(param_groups(method), lr=1.0)
    values = Schedules(total_steps=10, steps_per_epoch=10, lr=1e-3).at(5)
    before = [p.detach().clone() for p in method.parameters()]
    t = {"bf16": True, "grad_clip": 3.0}  # bf16 is for CUDA only: a CPU step runs in float32
    metrics = train_step(method, method, optimizer, torch.randn(4, 2, 64000) * 0.1, None, values, t, watched=False)
    assert {group["lr"] for group in optimizer.param_groups} == {values["lr"]}
    assert 0 < float(metrics["grad_norm"]) and torch.isfinite(metrics["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, method.parameters(), strict=True))


def test_batches_trained_before_a_restart_are_passed_over_and_the_wait_is_timed():
    def slow(n):
        for i in range(n):
            time.sleep(0.3 if i == 3 else 0)
            yield {"i": i}

    got = list(timed(slow(5), skip=2))
    assert [batch["i"] for batch, _ in got] == [2, 3, 4]
    assert got[1][1] >= 0.3 and got[0][1] < 0.2 and got[2][1] < 0.2
    assert list(timed(iter([]), skip=0)) == []


def test_throughput_counts_every_workers_samples_and_the_share_spent_waiting():
    meter = Throughput(workers=2)
    meter.add(16, 0.0)
    meter.add(16, 0.02)
    time.sleep(0.04)
    rates = meter.metrics()
    assert meter.samples == 64 and 0 < rates["data_wait_fraction"] <= 0.5
    assert rates["samples_per_s"] <= 64 / 0.04
    meter.reset()
    assert meter.samples == 0 and meter.wait == 0.0


def test_augmentations_on_the_device_are_seeded_per_rank_and_off_on_view_workers():
    chain = [{"name": "gain", "min_db": -6, "max_db": 6, "p": 1.0}]
    cfg = {"data": {"augment": chain, "augment_on": "device", "n_views": 2}, "train": {"seed": 3}}
    views = torch.ones(4, 2, 100)
    cpu = torch.device("cpu")
    once, again = device_augmentation(cfg, cpu, 0, 0)(views), device_augmentation(cfg, cpu, 0, 0)(views)
    torch.testing.assert_close(once, again)
    assert not torch.equal(once, views)
    assert not torch.equal(once, device_augmentation(cfg, cpu, 1, 0)(views))  # another rank draws other gains
    assert not torch.equal(once, device_augmentation(cfg, cpu, 0, 40)(views))  # a resumed run draws on
    on_workers = {**cfg, "data": {**cfg["data"], "augment_on": "workers"}}
    assert device_augmentation(on_workers, cpu, 0, 0)(views) is views
    no_chain = {**cfg, "data": {**cfg["data"], "augment": []}}
    assert device_augmentation(no_chain, cpu, 0, 0)(views) is views


def test_metrics_wait_out_a_tracking_server_that_is_away_and_training_goes_on(tmp_path, capsys):
    """A tracking server restart used to raise in rank 0's logging and fail the run."""
    import mlflow

    from mvssl_dist.train.progress import progress_line

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = mlflow.MlflowClient(uri).create_run("0").info.run_id
    tracker = Rank0Tracker({"run_id": run_id, "tracking_uri": uri}, rank=0)
    working = tracker.client.log_batch

    def away(*args, **kwargs):
        raise mlflow.exceptions.MlflowException("API request to http://tracking/ failed: Connection refused")

    tracker.client.log_batch = away
    for step in range(1, 301):  # past the 200 that trigger a flush, and past MLflow's 1,000 per call
        tracker.log({"loss": 1.0 / step, "lr": 0.1, "grad_norm": 1.0, "samples_per_s": 30.0}, step)
    tracker.tag("steps_fitted_to_max_minutes", "300")
    said = capsys.readouterr().out
    assert said.count("MLflow unreachable (API request to http://tracking/ failed: Connection refused)") == 1
    behind = tracker.behind()["metrics_unlogged"]
    assert behind >= 1200
    line = progress_line({"step": 300, "loss": 0.1, "metrics_unlogged": behind}, 400, 60.0, 1.0)
    assert f"MLflow unreachable, {behind} metrics kept to send" in line
    tracker.client.log_batch = working  # back
    tracker.flush()
    assert tracker.behind() == {} and not tracker.buffer
    client = mlflow.MlflowClient(uri)
    assert len(client.get_metric_history(run_id, "loss")) == 300
    assert client.get_run(run_id).data.tags["steps_fitted_to_max_minutes"] == "300"


def test_a_checkpoint_that_cannot_be_written_names_the_folder(monkeypatch, tmp_path):
    """Ray's copy to storage and torch.save both said only "No space left on device"."""
    import errno

    import pytest
    import ray.train

    from mvssl_dist.config import load_config
    from mvssl_dist.train import loop

    method = build_method("contrastive")
    optimizer = torch.optim.AdamW(param_groups(method), lr=1e-3)
    cfg = {**load_config(None, []), "steps_per_epoch": 3, "total_steps": 6, "run_dir": str(tmp_path / "run")}

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(ray.train, "report", disk_full)
    with pytest.raises(OSError) as copied:
        loop.report(method, optimizer, 2, cfg, {"loss": torch.tensor(1.0)}, False, rank=0)
    said = str(copied.value)
    assert said.startswith(f"the step 2 checkpoint could not be copied to {tmp_path / 'run'}: ") and "\n" not in said
    assert said.endswith("No space left on device"), said
    monkeypatch.setattr(loop, "save_state", lambda *a, **k: disk_full())
    with pytest.raises(OSError, match=r"^the step 2 checkpoint could not be written to /.*No space left on device$"):
        loop.report(method, optimizer, 2, cfg, {"loss": torch.tensor(1.0)}, False, rank=0)


def test_a_restart_takes_the_furthest_checkpoint_and_one_written_as_the_run_ended_trains_nothing(monkeypatch, tmp_path):
    """Ray Train records a checkpoint only once it has collected every worker's report of it: a
    worker killed a step after a checkpoint made the new group start again from step 0 (or from the
    checkpoint before). And a worker lost after the run's last checkpoint (a collapse stop, a spent
    time box) made the new group train on from it, with a fresh time box."""
    import shutil

    import ray.train

    from mvssl_dist.config import load_config
    from mvssl_dist.train import loop

    run_dir = tmp_path / "run"
    cfg = {**load_config(None, []), "steps_per_epoch": 3, "total_steps": 12, "run_dir": str(run_dir)}
    cfg["start_step"] = 0

    def keep(summary, checkpoint):
        shutil.copytree(checkpoint.path, run_dir / f"checkpoint_{summary['step']}")

    def restored_from(recorded):
        monkeypatch.setattr(ray.train, "get_checkpoint", lambda: recorded)
        method = build_method("contrastive")
        said = loop.restore(method, torch.optim.AdamW(param_groups(method), lr=1e-3), dict(cfg))
        return said, method

    monkeypatch.setattr(ray.train, "report", keep)
    trained = build_method("contrastive")
    optimizer = torch.optim.AdamW(param_groups(trained), lr=1e-3)
    assert restored_from(None)[0] == (0, False, False)
    loop.report(trained, optimizer, 2, cfg, {"loss": torch.tensor(1.0)}, False, rank=0)
    assert restored_from(None)[0] == (2, False, False)  # on disk, not in Ray's record
    recorded = ray.train.Checkpoint.from_directory(str(run_dir / "checkpoint_2"))
    with torch.no_grad():
        next(trained.parameters()).add_(1.0)
    loop.report(trained, optimizer, 4, cfg, {"loss": torch.tensor(1.0)}, True, rank=0, last=True)
    said, method = restored_from(recorded)  # Ray's record lags the folder
    assert said == (4, True, True)
    for a, b in zip(method.state_dict().values(), trained.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    (run_dir / "checkpoint_4" / loop.STATE_FILE).write_bytes(b"cut short")  # a kill mid-copy
    assert restored_from(recorded)[0] == (2, False, False)
