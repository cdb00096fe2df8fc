"""The registered pyfunc model: logged from code (not pickled), quietly, and equal to load_backbone."""

import logging
import os
import re
import time
import warnings

import mlflow
import numpy as np
import pytest
import torch
import yaml
from registry_checks import mlflow_at

from mvssl_dist.models import Backbone, WeightsError, load_backbone, save_backbone
from mvssl_dist.tracking import TrackingError, check_tracking_uri, connect, log_and_register_backbone


def test_pyfunc_is_logged_from_code_without_warnings_and_serves_the_backbone(tmp_path, caplog):
    torch.manual_seed(0)
    weights = tmp_path / "weights.pt"
    save_backbone(Backbone(), weights)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with mlflow_at(uri):
        experiment = connect(uri, "tracking-test")
        with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger="mlflow"):
            warnings.simplefilter("always")
            with mlflow.start_run(experiment_id=experiment) as run:
                version = log_and_register_backbone(weights, "mvssl-tracking-test", {"method": "random"})
        said = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
        assert not [m for m in said if "type hint" in m or "CloudPickle" in m], said

        local = mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/backbone")
        flavor = yaml.safe_load(open(f"{local}/MLmodel"))["flavors"]["python_function"]
        assert "model_code_path" in flavor and "python_model" not in flavor  # code, not a pickle

        model_uri = f"models:/mvssl-tracking-test/{version}"
        served = mlflow.pyfunc.load_model(model_uri)
        clips = np.random.default_rng(0).standard_normal((2, 64000)).astype(np.float32) * 0.1
        expected = load_backbone(model_uri)(torch.from_numpy(clips)).detach().numpy()
    np.testing.assert_allclose(served.predict(clips), expected, rtol=1e-5, atol=1e-5)


def test_store_uris_are_written_down_without_their_password():
    from mvssl_dist.tracking import without_password

    assert without_password("postgresql://mlflow:s3cret@db:5432/mlflow") == "postgresql://mlflow@db:5432/mlflow"
    assert without_password("https://user:pw@mlflow.example/") == "https://user@mlflow.example/"
    assert without_password("http://u:pw@[::1]:5000") == "http://u@[::1]:5000"
    for plain in ("sqlite:////tmp/q/mlflow.db", "http://127.0.0.1:5000", "databricks"):
        assert without_password(plain) == plain


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("mlflow.db", "tracking URI mlflow.db: not a URI; a local store is sqlite:///mlflow.db"),
        ("sqlite://mlflow.db", "a SQLite store is sqlite:///relative/path.db or sqlite:////absolute/path.db"),
        ("sqlite:mlflow.db", "a SQLite store is sqlite:///relative/path.db"),
        ("sqllite:///mlflow.db", "unknown scheme 'sqllite' (http://, https://, sqlite:///"),
        ("postgresql://me:secret@127.0.0.1:1/db", "its database driver is not installed here"),
    ],
)
def test_a_tracking_uri_mlflow_would_take_badly_is_one_line(tmp_path, monkeypatch, uri, message):
    """Each raised from MlflowClient() outside the error handling: a traceback (SQLAlchemy's
    ArgumentError, MLflow's registry exception), or MLflow 3's refusal of a folder store."""
    monkeypatch.chdir(tmp_path)
    with mlflow_at(None), pytest.raises(TrackingError, match=re.escape(message)) as err:
        connect(uri, "exp")
    assert "\n" not in str(err.value) and "secret" not in str(err.value)
    for fine in ("databricks", "databricks-uc", "databricks://profile", "file:/tmp/mlruns", "HTTPS://host"):
        check_tracking_uri(fine)  # MLflow's own forms pass the check (MLflow itself then decides)


def test_an_unreachable_registry_is_said_in_seconds_not_minutes(tmp_path, monkeypatch, capsys):
    """MLflow retried a refused connection with backoff: `mvssl embed --model models:/…` against
    a server that was down waited 249 s before its one line. The driver's first look is quick;
    the environment is left as it was, so the Ray workers started later keep MLflow's retries."""
    from mvssl_dist.cli import main

    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")  # nothing listens on port 1
    started = time.perf_counter()
    with mlflow_at("http://127.0.0.1:1"):
        assert main(["embed", str(tmp_path), "--model", "models:/x@y", "--out", str(tmp_path / "e")]) == 1
    assert time.perf_counter() - started < 30
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mvssl: error: models:/x@y: ") and "127.0.0.1:1" in err[0], err
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ and "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ
    with mlflow_at("mlflow.db"), pytest.raises(WeightsError, match="models:/x@y: tracking URI mlflow.db: not a URI"):
        load_backbone("models:/x@y")


RUN_A_SCRIPT = """
import sys, mlflow
from mvssl_dist.tracking import connect
experiment = connect(sys.argv[1], "git-check")
with mlflow.start_run(experiment_id=experiment) as run:
    pass
print(mlflow.MlflowClient().get_run(run.info.run_id).data.tags.get("mlflow.source.git.commit"))
"""


def test_a_machine_without_git_logs_runs_without_gitpythons_advice(tmp_path):
    """In the Docker image, which has no git, every registration printed GitPython's 17 lines of
    set-up advice three times (MLflow looks for the run's git commit). Where git is, the commit is
    still recorded."""
    import subprocess
    import sys

    script = tmp_path / "repo" / "run.py"
    script.parent.mkdir()
    script.write_text(RUN_A_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "GIT_PYTHON_REFRESH"}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    without = {**env, "GIT_PYTHON_GIT_EXECUTABLE": str(tmp_path / "no-git-here")}
    done = subprocess.run([sys.executable, script, uri], env=without, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "None", done.stderr
    assert "GIT_PYTHON_REFRESH" not in done.stderr and "Failed to import Git" not in done.stderr, done.stderr
    git = ["git", "-C", str(script.parent), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "run.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "a script"], check=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    done = subprocess.run([sys.executable, script, uri], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == sha, done.stderr


def test_loading_a_model_keeps_artifact_transfers_on_the_server_unless_told_otherwise(tmp_path, monkeypatch):
    """The live check (an S3-backed server, no presigned URL asked) is in test_deploy; here, that the
    default is set where Ray workers load models too, and that a user's own setting is kept."""
    weights = tmp_path / "w.pt"
    save_backbone(Backbone(), weights)
    with mlflow_at(f"sqlite:///{tmp_path / 'mlflow.db'}"):
        mlflow.set_experiment("transfers")
        with mlflow.start_run():
            log_and_register_backbone(weights, "transfers", {"method": "none"})
        for name in ("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", "true")
        load_backbone("models:/transfers/1")
    assert os.environ["MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD"] == "false"
    assert os.environ["MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD"] == "true"


def test_a_moved_local_store_says_where_its_files_were(tmp_path):
    """A local store records its artifacts' absolute paths; moved, its versions cannot be loaded,
    and MLflow's own words for that were "No such artifact: ''"."""
    import shutil

    weights = tmp_path / "w.pt"
    save_backbone(Backbone(), weights)
    store, moved = tmp_path / "store", tmp_path / "moved"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    with mlflow_at(uri), mlflow.start_run(experiment_id=connect(uri, "moved")):
        log_and_register_backbone(weights, "moved", {"method": "none"})
    shutil.move(store, moved)
    with mlflow_at(f"sqlite:///{moved / 'mlflow.db'}"):
        for model in ("models:/moved/1", "models:/moved@latest"):
            with pytest.raises(WeightsError) as caught:
                load_backbone(model)
            said = str(caught.value)
            assert f"its files were stored in {store}{os.sep}" in said and "which no longer exists" in said, said


def test_a_lost_connection_is_not_taken_for_a_moved_store(monkeypatch):
    """An OSError from a remote registry (requests' ConnectionError is one) is said as it is, without
    asking the registry where the files were: that would wait out its retries a second time."""
    from mvssl_dist import tracking

    def must_not_ask(uri):
        raise AssertionError("the registry was asked again")

    monkeypatch.setattr(tracking, "missing_local_artifacts", must_not_ask)
    with mlflow_at("http://user:secret@127.0.0.1:9/"):
        said = tracking.download_problem("models:/m/1", ConnectionError("Connection refused by secret host"))
    assert said == "models:/m/1: cannot reach the model registry (Connection refused by *** host)"
