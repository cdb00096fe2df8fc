"""One check for every pre-training test: what was registered is what was trained."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import torch

from mvssl_dist.models import load_backbone


def assert_registered_as_trained(
    run_id: str, method: str, version: str = "1", model_name: str | None = None, tracking_uri: str | None = None
) -> None:
    """The registered backbone equals the trained checkpoint's, and the run and version carry what
    a user filters on. Every method passes through here once, in one of the suite's Ray Train runs:
    contrastive (the quickstart), byol (stopped and resumed), clustering (a killed worker),
    barlow_twins (views run out) and vicreg (`ray job submit`, in test_deploy)."""
    with mlflow_at(tracking_uri):
        check(mlflow.MlflowClient(), run_id, method, version, model_name or f"mvssl-{method}")


@contextlib.contextmanager
def mlflow_at(uri: str | None):
    """MLflow's tracking URI set to ``uri`` (unchanged when None) inside the block, restored after."""
    previous = mlflow.get_tracking_uri()
    if uri:
        mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def check(client, run_id: str, method: str, version: str, model_name: str) -> None:
    registered = client.get_model_version(model_name, version)
    assert registered.tags["source_run_id"] == run_id and registered.run_id == run_id
    # what a user browsing the registry reads: how the version was trained, how to load the model
    assert registered.description.startswith(f"{method} pre-training, {registered.tags['step']} steps at batch ")
    assert registered.description.endswith(f"; MLflow run {run_id}.")
    assert f"load_backbone('models:/{model_name}@champion')" in client.get_registered_model(model_name).description
    run = client.get_run(run_id)
    assert run.data.tags["method"] == method and run.data.tags["dataset_index_sha256"]
    assert {"loss", "lr", "embedding_std", "effective_rank", "samples_per_s", "data_wait_fraction"} <= set(
        run.data.metrics
    )
    storage = Path(run.data.params["train.storage_path"]).resolve() / run.data.tags["mlflow.runName"]
    state = checkpoint_at(storage, int(registered.tags["step"]))
    assert state["method"] == method
    prefix = "student.backbone."
    trained = {k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)}
    backbone = load_backbone(f"models:/{model_name}/{version}")
    assert backbone.state_dict().keys() == trained.keys()
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(value, trained[key], msg=key)


def checkpoint_at(storage: Path, step: int) -> dict:
    """The state of the checkpoint of ``step`` under a run's folder (a killed run may leave a partial one)."""
    for path in sorted(storage.glob("checkpoint_*/state.pt")):
        try:
            state = torch.load(path, weights_only=True)
        except Exception:
            continue
        if state["step"] == step:
            return state
    raise AssertionError(f"no checkpoint of step {step} under {storage}")


def assert_loads_in_a_fresh_process(uri: str, tracking_uri: str, cwd: Path) -> None:
    """Only this package and the registry are needed: no state of the training process. Then the
    same version as the pyfunc model that MLflow serves."""
    code = f"from mvssl_dist.models import load_backbone; import torch; print(load_backbone('{uri}')(torch.zeros(1, 64000)).shape)"
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "torch.Size([1, 1024])" in run.stdout
    with mlflow_at(tracking_uri):
        pyfunc = mlflow.pyfunc.load_model(uri)
    assert pyfunc.predict(torch.zeros(2, 64000).numpy()).shape == (2, 1024)
