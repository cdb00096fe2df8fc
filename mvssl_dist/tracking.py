"""MLflow: the default local store, runs, the registered backbone, and loading it back.

The registered model is an MLflow *pyfunc* whose artifact is our own backbone file
(``backbone.pt``, loadable with ``torch.load(weights_only=True)``). We chose that over
``mlflow.pytorch`` (whose default ``pt2`` format needs an input example and torch.export,
and whose pickle format ties the file to class paths): loading needs only this package, and
``load_backbone("models:/NAME@ALIAS")`` downloads the artifact and loads it strictly. The pyfunc
wrapper (:mod:`mvssl_dist.serving`) is logged from code, not pickled.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

BACKBONE_ARTIFACT = "backbone.pt"
MODEL_ARTIFACT_PATH = "backbone"


class TrackingError(RuntimeError):
    """The tracking store or registry cannot be used; one line naming the URI."""


def default_tracking_uri(workdir: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite store ``mlflow.db`` in the working directory."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(Path(workdir or os.getcwd()) / 'mlflow.db').resolve()}"


def without_password(uri: str) -> str:
    """``uri`` fit to print or write down: a password in it (``postgresql://user:pw@host/db``) is cut."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = f"[{parts.hostname}]" if ":" in str(parts.hostname) else str(parts.hostname)  # IPv6
    host += f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{parts.username}@{host}"))


@contextlib.contextmanager
def tracking_store(uri: str | None):
    """MLflow pointed at ``uri`` inside the block, then back where it was (``None``: no change)."""
    import mlflow

    if not uri:
        yield
        return
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


def default_artifact_location(tracking_uri: str) -> str | None:
    """Artifacts beside a local SQLite store (``mlartifacts/``); the server decides otherwise."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
    return None


STORE_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc", "file")


def check_tracking_uri(uri: str) -> None:
    """One line for a tracking URI MLflow would take badly: no scheme (a bare ``mlflow.db`` became
    a folder store, which MLflow 3 refuses), an unknown scheme, or a SQLite URL short of slashes."""
    shown = without_password(uri)
    if uri.startswith("sqlite:") and not uri.startswith("sqlite:///"):
        raise TrackingError(
            f"tracking URI {shown}: a SQLite store is sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    if uri in ("databricks", "databricks-uc"):  # MLflow's names for a Databricks workspace's store
        return
    found = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", uri)
    scheme = found.group(1).split("+", 1)[0].lower() if found else ""
    if not scheme:
        raise TrackingError(
            f"tracking URI {shown}: not a URI; a local store is sqlite:///{uri if uri.endswith('.db') else 'mlflow.db'}, "
            "a server http://HOST:5000"
        )
    if scheme not in STORE_SCHEMES:
        raise TrackingError(
            f"tracking URI {shown}: unknown scheme '{scheme}' (http://, https://, sqlite:///, postgresql://, mysql://)"
        )


QUICK_REQUESTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


# A server whose artifact store is S3 (cluster/mlflow: MinIO) tells MLflow 3.17's client to download
# through presigned URLs that name the store as the server reaches it (`http://minio:9000`): from a
# laptop or another network, `load_backbone("models:/…")` was still retrying them after eight minutes.
# The server is run with --serve-artifacts so that clients need only its URL and a user: every byte
# goes through it, unless the environment already says otherwise.
THROUGH_THE_SERVER = {
    "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false",
    "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "false",
}


def artifacts_through_the_server() -> None:
    for name, value in THROUGH_THE_SERVER.items():
        os.environ.setdefault(name, value)


def quiet_without_git() -> None:
    """MLflow tags a run and a logged model with their git commit, read through GitPython. On a
    machine without git (the Docker image, a source archive) GitPython's 17 lines of set-up advice
    came with each of MLflow's three warnings. There is no commit to record there, so GitPython is
    told to stay quiet, unless the environment already says otherwise."""
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def fail_fast() -> None:
    """A server that does not answer is said within seconds: MLflow's default retries with backoff
    kept a command waiting for minutes. Settings already in the environment are kept."""
    for name, value in QUICK_REQUESTS.items():
        os.environ.setdefault(name, value)


@contextlib.contextmanager
def quick_requests():
    """:func:`fail_fast` inside the block only: for a driver's first look at the registry, so that
    the Ray workers it starts afterwards keep MLflow's retries for a server that blinks."""
    saved = {name: os.environ.get(name) for name in QUICK_REQUESTS}
    fail_fast()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def connect(tracking_uri: str, experiment: str) -> str:
    """Point MLflow at ``tracking_uri``, check it answers, and return the experiment id."""
    import mlflow
    from mlflow.exceptions import MlflowException

    check_tracking_uri(tracking_uri)
    fail_fast()
    artifacts_through_the_server()
    quiet_without_git()
    mlflow.set_tracking_uri(tracking_uri)
    shown = without_password(tracking_uri)  # errors go to logs
    try:
        client = mlflow.MlflowClient(tracking_uri)  # inside: a store it cannot open raises here
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            return found.experiment_id
        return client.create_experiment(experiment, artifact_location=default_artifact_location(tracking_uri))
    except MlflowException as err:
        if "401" in str(err) or "UNAUTHENTICATED" in str(err):
            raise TrackingError(
                f"tracking server {shown}: authentication failed "
                "(check MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)"
            ) from None
        if "403" in str(err) or "PERMISSION_DENIED" in str(err):
            raise TrackingError(f"tracking server {shown}: this user may not create or read experiments") from None
        raise TrackingError(f"tracking server {shown}: {first_line(err, tracking_uri)}") from None
    except ModuleNotFoundError as err:  # postgresql:// or mysql:// straight to the database, without its driver
        raise TrackingError(
            f"tracking store {shown}: its database driver is not installed here ({err}); install it "
            "(PostgreSQL: pip install 'psycopg[binary]') or log through a tracking server (http://HOST:5000)"
        ) from None
    except Exception as err:  # requests' connection errors and friends
        raise TrackingError(f"tracking server {shown} is unreachable: {first_line(err, tracking_uri)}") from None


def first_line(err: BaseException, tracking_uri: str | None = None) -> str:
    """The error's first line, with the tracking URI's password (MLflow quotes the URL) masked."""
    from urllib.parse import urlsplit

    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    password = urlsplit(tracking_uri).password if tracking_uri else None
    return (line.replace(password, "***") if password else line)[:300]


def download_model_weights(uri: str) -> str:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> local path of its ``backbone.pt``."""
    import mlflow

    from mvssl_dist.models.loading import WeightsError

    if not os.environ.get("MLFLOW_TRACKING_URI") and mlflow.get_tracking_uri().startswith("file:"):
        mlflow.set_tracking_uri(default_tracking_uri())
    try:
        check_tracking_uri(mlflow.get_tracking_uri())
    except TrackingError as err:
        raise WeightsError(f"{uri}: {err} (MLFLOW_TRACKING_URI chooses the registry)") from None
    uri = resolve_latest(uri)
    artifacts_through_the_server()
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except Exception as err:
        raise WeightsError(download_problem(uri, err)) from None
    found = sorted(local.rglob(BACKBONE_ARTIFACT))
    if not found:
        raise WeightsError(f"{uri}: the model has no {BACKBONE_ARTIFACT} artifact")
    return str(found[0])


def download_problem(uri: str, err: Exception) -> str:
    """Why ``uri``'s files could not be downloaded, in one line. A local store's files that are gone
    (the store moved) surface as MLflow's "No such artifact" or, in MLflow 3.10, as a bare OSError
    "No such file or directory": both are told as the folder they were stored in. A remote store's
    OSError (a connection lost) is not looked into: asking the registry again would wait again."""
    import mlflow
    from mlflow.exceptions import MlflowException

    store = mlflow.get_tracking_uri()  # checked by check_tracking_uri: it has a scheme
    local_store = store.startswith(("sqlite:", "file:"))
    if not isinstance(err, MlflowException) and not (isinstance(err, OSError) and local_store):
        return f"{uri}: cannot reach the model registry ({first_line(err, store)})"
    gone = missing_local_artifacts(uri)
    reason = (
        f"its files were stored in {gone}, which no longer exists (a local MLflow store records "
        "absolute paths: its folder cannot be moved)"
        if gone
        else first_line(err, store)
    )
    return f"{uri}: {reason} (registry: {without_password(store)}; MLFLOW_TRACKING_URI chooses it)"


def registry_version(uri: str):
    """The registry's ``ModelVersion`` that ``models:/NAME@ALIAS``, ``…/VERSION`` or ``…/latest`` names now."""
    import mlflow

    client = mlflow.MlflowClient()
    name, _, ref = resolve_latest(uri)[len("models:/") :].partition("/")
    if "@" in name:
        return client.get_model_version_by_alias(*name.split("@", 1))
    if ref == "latest":
        versions = client.search_model_versions(f"name='{name}'")
        if not versions:
            raise ValueError(f"{uri}: the registry has no version of {name}")
        return max(versions, key=lambda v: int(v.version))
    return client.get_model_version(name, ref)


def missing_local_artifacts(uri: str) -> str | None:
    """The local folder a registry version's files were stored in, when it no longer exists (a
    local store moved or cleaned); None when they are elsewhere, present, or unknown."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from mvssl_dist.shards.uris import uri_to_path

    try:
        version = registry_version(uri)
        location = mlflow.MlflowClient().get_model_version_download_uri(version.name, version.version)
    except (MlflowException, OSError, ValueError):
        return None
    if "://" in location and not location.startswith("file://"):
        return None
    path = uri_to_path(location) if location.startswith("file://") else location
    return None if os.path.exists(path) else path


def resolve_latest(uri: str) -> str:
    """MLflow reserves the alias ``latest``; ``models:/NAME@latest`` means its newest version."""
    if uri.startswith("models:/") and uri.lower().endswith("@latest"):
        return uri[: -len("@latest")] + "/latest"
    return uri


MODEL_DESCRIPTION = (
    "Audio embedding backbones pre-trained by mvssl-dist: the reference 2.8 M-parameter ResNet on log-mel "
    "spectrograms (16 kHz mono, 4 s segments, 1024-d embeddings). Each version's description says how it "
    "was trained; evaluations add eval.<task>.* tags. Load one in Python with "
    "`from mvssl_dist.models import load_backbone; load_backbone('models:/{name}@champion')` "
    "(or `mlflow.pyfunc.load_model`, which predicts on [batch, 64000] float32 audio); embed a library "
    "with `mvssl embed SRC --model models:/{name}/VERSION --out DIR`."
)


def log_and_register_backbone(
    backbone_file: Path, name: str, tags: dict[str, str], alias: str | None = None, description: str = ""
) -> str:
    """Log the backbone as a pyfunc model in the active run and register it; returns the version.

    The new version is what ``models:/NAME@latest`` (= ``models:/NAME/latest``) resolves to;
    ``alias`` optionally points another alias at it too. ``description`` is the version's, shown
    in the MLflow UI; a registered model without a description gets one saying how to load it.
    """
    import shutil
    import tempfile

    import mlflow
    import numpy as np

    from mvssl_dist import __version__

    if Path(backbone_file).name != BACKBONE_ARTIFACT:  # the loader looks the artifact up by this name
        with tempfile.TemporaryDirectory() as tmp:
            renamed = Path(tmp) / BACKBONE_ARTIFACT
            shutil.copyfile(backbone_file, renamed)
            return log_and_register_backbone(renamed, name, tags, alias, description)
    info = mlflow.pyfunc.log_model(
        name=MODEL_ARTIFACT_PATH,
        python_model=str(Path(__file__).with_name("pyfunc_model.py")),  # models from code: see serving.py
        artifacts={"backbone": str(backbone_file)},
        pip_requirements=[f"mvssl-dist=={__version__}", "torch==2.11.0", "torchaudio==2.11.0"],
        input_example=np.zeros((1, 64000), np.float32),
        registered_model_name=name,
    )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    if description:
        client.update_model_version(name, version, description=description)
    if not client.get_registered_model(name).description:
        client.update_registered_model(name, description=MODEL_DESCRIPTION.format(name=name))
    if alias:
        client.set_registered_model_alias(name, alias, version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    return version
