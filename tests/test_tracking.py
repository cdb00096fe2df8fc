"""The registered pyfunc model: logged from code (not pickled), quietly, and equal to load_backbone."""

import logging
import warnings

import mlflow
import numpy as np
import torch
import yaml
from registry_checks import mlflow_at

from mvssl_dist.models import Backbone, load_backbone, save_backbone
from mvssl_dist.tracking import connect, log_and_register_backbone


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
