"""Deployment: manifests and Dockerfile checked against the code; a real `ray job submit` to a
`ray start --head` cluster that logs over HTTP to a basic-auth `mlflow server`."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
import ray_up_updater
import yaml
from distributed_helpers import free_port
from registry_checks import assert_registered_as_trained
from s3_helpers import CREDENTIALS, local_s3

from mvssl_dist.cli import build_parser, main
from mvssl_dist.config import load_config
from mvssl_dist.library import write_library

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
IMAGE_ROOT = "/opt/mvssl-dist"  # where the Dockerfile puts the repository


def manifests() -> list[Path]:
    return sorted((ROOT / "cluster").rglob("*.yaml"))


def readme_setup_lines() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [b.strip() for b in blocks[:2]]


# --------------------------------------------------------------------------- static checks
def test_every_manifest_parses():
    found = {p.relative_to(ROOT).as_posix() for p in manifests()}
    expected = {
        "cluster/ray-up.yaml",
        "cluster/kuberay/raycluster.yaml",
        "cluster/kuberay/rayjob-ingest.yaml",
        "cluster/kuberay/rayjob-pretrain.yaml",
        "cluster/kuberay/rayjob-embed.yaml",
        "cluster/mlflow/docker-compose.yaml",
        "cluster/mlflow/kubernetes.yaml",
    }
    assert expected <= found
    for path in manifests():
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert docs and all(isinstance(d, dict) for d in docs), path
    for script in (ROOT / "cluster").rglob("*.sh"):
        subprocess.run(["bash", "-n", str(script)], check=True)  # shell scripts parse


def test_rayjob_entrypoints_run_real_pipelines_with_valid_arguments():
    jobs = sorted((ROOT / "cluster" / "kuberay").glob("rayjob-*.yaml"))
    assert len(jobs) >= 3
    for path in jobs:
        spec = yaml.safe_load(path.read_text())
        assert spec["kind"] == "RayJob" and spec["spec"]["clusterSelector"]["ray.io/cluster"] == "mvssl"
        argv = shlex.split(spec["spec"]["entrypoint"])
        assert argv[0] == "python", path
        script = ROOT / Path(argv[1]).relative_to(IMAGE_ROOT)
        assert script.is_file() and script.parent.name == "pipelines", (path, script)
        args = [a.replace(IMAGE_ROOT, str(ROOT)) for a in argv[2:]]
        parsed = build_parser().parse_args([script.stem, *args])  # SystemExit on any unknown option
        if script.stem == "pretrain":
            cfg = load_config(parsed.config, parsed.overrides)  # every override names a real key
            assert cfg["train"]["use_gpu"] is True


def test_raycluster_has_cpu_and_gpu_groups_with_bounds():
    cluster = yaml.safe_load((ROOT / "cluster/kuberay/raycluster.yaml").read_text())
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for group in groups.values():
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == 1
    secret_names = {
        d["metadata"]["name"]
        for d in yaml.safe_load_all((ROOT / "cluster/kuberay/secrets.example.yaml").read_text())
        if d["kind"] == "Secret"
    }
    for group in [cluster["spec"]["headGroupSpec"], *groups.values()]:
        pod = group["template"]["spec"]
        env = pod["containers"][0]["envFrom"]
        assert {e["secretRef"]["name"] for e in env} <= secret_names
        # Ray's object store lives in /dev/shm, which a pod has only 64 MB of unless a volume gives
        # more, and Ray moves it to /tmp (disk) when /dev/shm is smaller than the store it sizes:
        # the head's 2Gi against 30 % of 8Gi did (seen in Docker with the same limits)
        shm = {m["name"] for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/dev/shm"}
        (volume,) = [v for v in pod["volumes"] if v["name"] in shm]
        assert volume["emptyDir"]["medium"] == "Memory"
        memory = gibibytes(pod["containers"][0]["resources"]["limits"]["memory"])
        assert gibibytes(volume["emptyDir"]["sizeLimit"]) >= object_store_share() * memory, group


def gibibytes(quantity: str) -> float:
    """A Kubernetes or Docker size (``8Gi``, ``16g``) in GiB."""
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(Gi|Mi|g|m)", quantity).groups()
    return float(number) / (1024 if unit in ("Mi", "m") else 1)


def object_store_share() -> float:
    """The share of a node's memory Ray gives its object store unless told otherwise."""
    from ray._private import ray_constants

    return ray_constants.DEFAULT_OBJECT_STORE_MEMORY_PROPORTION


# The memory of the AWS instance types cluster/ray-up.yaml names, in GiB (from AWS's tables).
INSTANCE_MEMORY = {"m6i.2xlarge": 32, "c6i.8xlarge": 64, "g6e.2xlarge": 64}


def test_ray_up_gives_ray_a_dev_shm_that_holds_its_object_store():
    """16g of /dev/shm for 64 GiB workers: Ray would have put their object store on disk."""
    cfg = yaml.safe_load((ROOT / "cluster/ray-up.yaml").read_text())
    (shm,) = [o.split("=")[1] for o in cfg["docker"]["run_options"] if o.startswith("--shm-size=")]
    for node in cfg["available_node_types"].values():
        kind = node["node_config"]["InstanceType"]
        assert kind in INSTANCE_MEMORY, f"{kind}: add its memory to INSTANCE_MEMORY"
        memory = INSTANCE_MEMORY[kind]
        assert gibibytes(shm) >= object_store_share() * memory, (node, shm)


def test_ray_up_config_is_consistent():
    cfg = ray_up_updater.load(ROOT / "cluster/ray-up.yaml")  # Ray's own schema check
    assert cfg["head_node_type"] in cfg["available_node_types"]
    text = (ROOT / "cluster/ray-up.yaml").read_text()
    for script in re.findall(r"python (pipelines/\w+\.py)", text):
        assert (ROOT / script).is_file(), script
    local = {Path(p) for p in cfg["file_mounts"].values()}
    assert local == {Path("cluster/mvssl.env")}  # git ignores the filled-in copy of the example
    assert "cluster/mvssl.env" in (ROOT / ".gitignore").read_text().split()
    assert "cluster/mvssl.env" in (ROOT / ".dockerignore").read_text().split()
    assert (ROOT / "cluster/mvssl.env.example").is_file()


@pytest.mark.parametrize("head", [True, False], ids=["head", "worker"])
def test_ray_up_mounts_data_on_the_vm_and_gives_ray_the_settings(head, tmp_path, monkeypatch):
    """Ray's own node updater on cluster/ray-up.yaml (SSH recorded, no cloud). With `docker:` set,
    only `initialization_commands` run on the VM; so the shared file system must be mounted there,
    before `docker run -v /data:/data`, and the settings must reach `ray start` inside the
    container. (The config once mounted EFS from `setup_commands`, inside an unprivileged
    container, and passed `-e MLFLOW_TRACKING_URI` from an SSH session that never had it.)"""
    example = ROOT / "cluster/mvssl.env.example"
    (tmp_path / "cluster").mkdir()
    shutil.copy(example, tmp_path / "cluster/mvssl.env")  # what the comments tell a user to do
    monkeypatch.chdir(tmp_path)
    sent = ray_up_updater.node_setup(ray_up_updater.load(ROOT / "cluster/ray-up.yaml"), head=head)

    def first(word: str) -> int:
        return next(i for i, c in enumerate(sent) if word in c.text)

    mount, run, start = first("mount -t nfs4"), first("docker run "), first("ray start")
    assert not sent[mount].in_container and mount < run, sent[mount]
    assert "-v /data:/data" in sent[run].text
    env_file = f"{ray_up_updater.HOME}/mvssl.env"
    assert f":{env_file} " in sent[run].text  # the settings file is bind-mounted into the container
    assert sent[start].in_container and f". {env_file} && set +a && ray start" in sent[start].text
    assert not re.search(r" -e [A-Z_]+ ", sent[run].text)  # no bare `-e NAME`: the VM's shell has none
    names = {line.split("=")[0] for line in example.read_text().splitlines() if "=" in line and line[0] != "#"}
    assert {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= names


def test_mlflow_server_bundle_has_postgres_minio_and_basic_auth():
    compose = yaml.safe_load((ROOT / "cluster/mlflow/docker-compose.yaml").read_text())
    assert {"postgres", "minio", "mlflow"} <= set(compose["services"])
    assert (ROOT / "cluster/mlflow" / compose["services"]["mlflow"]["build"] / "Dockerfile").is_file()
    entry = (ROOT / "cluster/mlflow/entrypoint.sh").read_text()
    assert "--app-name basic-auth" in entry and "postgresql://" in entry
    kinds = {d["kind"] for d in yaml.safe_load_all((ROOT / "cluster/mlflow/kubernetes.yaml").read_text())}
    assert {"Deployment", "Service", "StatefulSet", "Secret"} <= kinds


def test_mlflow_server_image_installs_the_driver_sqlalchemy_picks_for_postgresql():
    """The server's store URIs say ``postgresql://``; SQLAlchemy 2.1 maps that to psycopg 3, not
    psycopg2. The image once installed psycopg2 and its server died at start-up on PostgreSQL.
    (This venv's SQLAlchemy, installed with MLflow as the server's is, stands in for the image's,
    where it can: SQLAlchemy 2.1 needs Python 3.11, so on 3.10 pip gives 2.0, which maps to psycopg2.)"""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    if tuple(int(x) for x in sqlalchemy.__version__.split(".")[:2]) < (2, 1):
        pytest.skip(f"SQLAlchemy {sqlalchemy.__version__} here (Python 3.10) does not stand in for the image's 2.1")

    dockerfile = (ROOT / "cluster/mlflow/Dockerfile").read_text()
    driver = make_url("postgresql://user:secret@postgres:5432/mlflow").get_dialect().driver
    package = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary"}[driver]
    assert f'"{package}==' in dockerfile, (driver, dockerfile)


def test_mlflow_server_creates_its_tables_once_before_serving(monkeypatch):
    """Two replicas (kubernetes.yaml runs two) on a fresh PostgreSQL raced to create the tables and
    one died with UniqueViolation; checked with the image here, 3 of 3 times. The entrypoint now
    runs prepare_db.py (an advisory lock around what the server does at start-up) before `exec
    mlflow server`: 3 of 3 times both replicas came up. Here: the order, and that the script is
    in the image and leaves other backends alone (no PostgreSQL in CI)."""
    import runpy

    entry = (ROOT / "cluster/mlflow/entrypoint.sh").read_text()
    assert -1 < entry.index("python /prepare_db.py") < entry.index("exec mlflow server")
    assert "prepare_db.py" in (ROOT / "cluster/mlflow/Dockerfile").read_text()
    monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", "sqlite:///nowhere/mlflow.db")
    module = runpy.run_path(str(ROOT / "cluster/mlflow/prepare_db.py"))
    assert module["main"]() is None  # SQLite: nothing created, nothing raised


def test_dockerfile_installs_like_the_readme_and_ci_tests_like_the_readme():
    quickstart, tests = readme_setup_lines()
    assert quickstart == "pip install -e . && mvssl quickstart"
    install = quickstart.split("&&")[0].strip()
    dockerfile = (ROOT / "Dockerfile").read_text().splitlines()
    assert f"RUN {install}" in dockerfile
    assert any(line.startswith("FROM ${BASE_IMAGE} AS runtime") for line in dockerfile)  # multi-stage
    assert tests in (ROOT / ".ci/run").read_text()


def docker_works() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.slow
def test_docker_image_builds_and_runs_mvssl():
    if not docker_works():
        pytest.skip("no docker engine on this machine")
    tag = "mvssl-dist:test"
    subprocess.run(["docker", "build", "-t", tag, str(ROOT)], check=True, timeout=3000)
    out = subprocess.run(["docker", "run", "--rm", tag, "mvssl", "--help"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "quickstart" in out.stdout
    # KubeRay starts Ray pods with `bash -lc` and `ray up` with `bash --login`: a login shell must find
    # the venv's ray and mvssl (Debian's /etc/profile resets PATH; the image once lost them there).
    login = "ray --version && command -v mvssl"
    out = subprocess.run(
        ["docker", "run", "--rm", tag, "bash", "-lc", login], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and "/opt/venv/bin/mvssl" in out.stdout, out.stderr


# --------------------------------------------------------------------------- live: mlflow server + ray job submit
ADMIN, PASSWORD = "admin", "s3cret-pass-for-tests"  # MLflow wants >= 12 characters


def wait_for(url: str, seconds: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer in {seconds} s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def artifact_bucket():
    """The server's artifact store, S3 as in cluster/mlflow (MinIO there; moto here, on 127.0.0.1)."""
    with local_s3("mlflow") as endpoint:
        yield {"MLFLOW_S3_ENDPOINT_URL": endpoint, **CREDENTIALS}


@pytest.fixture(scope="module")
def mlflow_server_starting(tmp_path_factory, artifact_bucket):
    """An `mlflow server` process, not waited for: it starts (~25 s) while Ray and the ingest do."""
    root = tmp_path_factory.mktemp("mlflow_server")
    ini = root / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{root / 'auth.db'}\n"
        f"admin_username = {ADMIN}\nadmin_password = {PASSWORD}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    port = free_port()
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret"}
    env.update(artifact_bucket)  # the server's alone: clients are given no S3 keys
    env.pop("MLFLOW_TRACKING_URI", None)
    log = root / "server.log"
    command = [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", "s3://mlflow/art"]
    command += ["--workers", "1"]
    with open(log, "wb") as handle:
        proc = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=root)
    try:
        yield f"http://127.0.0.1:{port}", proc, log
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def mlflow_server(mlflow_server_starting, dataset):  # noqa: ARG001
    """The server's URL once it answers; `dataset` is asked for only so that the wait comes after
    the Ray cluster and the ingest, which run while the server starts."""
    url, proc, log = mlflow_server_starting
    wait_for(f"{url}/health", 180, proc, log)
    return url


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    import ray

    ray.shutdown()  # `ray stop` below must not take down a test process's own Ray with it
    port, dashboard = free_port(), free_port()
    start = [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}"]
    start += ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=2"]
    subprocess.run(start, check=True, timeout=180, capture_output=True, env=cluster_env())
    try:
        yield f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}"
    finally:
        subprocess.run([str(BIN / "ray"), "stop"], timeout=120, capture_output=True, env=cluster_env())


def cluster_env() -> dict:
    """The environment of the test cluster and of every process the tests start against it.

    `ray start` turns token authentication on when a token file exists (~/.ray/auth_token), and so
    does any local `ray.init()` earlier in this pytest process, for itself and its children
    (RAY_AUTH_MODE=token in os.environ). A client and a cluster that disagree do not fail: the
    client waits for ever (an ingest after test_pretrain hung 300 s). So all of them say "off",
    as a laptop test cluster on 127.0.0.1 may.
    """
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "disabled"
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # job entrypoints run `python` from here
    return env


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, ray_head):
    root = tmp_path_factory.mktemp("job_data")
    write_library(root / "lib", tracks=6, seconds=14.0, formats=("flac", "mp3"))
    ingest = [str(BIN / "mvssl"), "ingest", str(root / "lib"), "--out", str(root / "ds"), "--no-progress"]
    run = subprocess.run(
        ingest + ["--ray-address", ray_head[0]], capture_output=True, text=True, timeout=300, env=cluster_env()
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return root / "ds"


@pytest.mark.slow
def test_wrong_credentials_fail_with_a_clear_message(mlflow_server, dataset, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    code = main(["pretrain", f"data.path={dataset}", "data.batch_size=4", "--tracking-uri", mlflow_server])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"mvssl: error: tracking server {mlflow_server}: authentication failed "
        "(check MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)"
    ]


@pytest.mark.slow
def test_ray_job_submit_pretrains_and_registers_over_http(
    mlflow_server, mlflow_server_starting, ray_head, dataset, tmp_path
):
    """Also the suite's run of the time box's stop: 200 steps asked, 0.15 minutes of loop allowed
    and the schedules not fitted to them, so every worker must stop at the same step and that step
    is what gets registered. (The fitted schedules: tests/test_pretrain.py.) The artifacts go to S3
    through the server and come back the same way: MLflow 3.17's client otherwise downloads through
    presigned URLs that name the store as the server reaches it, which a client may not."""
    runtime_env = json.dumps({"env_vars": {"MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": PASSWORD}})
    submit = [str(BIN / "ray"), "job", "submit", "--address", ray_head[1], "--working-dir", str(ROOT)]
    submit += ["--runtime-env-json", runtime_env, "--", "python", "pipelines/pretrain.py"]
    submit += ["--config", "configs/vicreg.yaml", "--run-name", "job-test", "--register-as", "mvssl-job-test"]
    submit += ["--tracking-uri", mlflow_server, f"data.path={dataset}", "data.batch_size=4", "data.pairs_per_track=1"]
    submit += ["train.max_steps=200", "train.max_minutes=0.15", "train.fit_to_max_minutes=false", "train.log_every=1"]
    submit += [f"train.storage_path={tmp_path / 'runs'}"]
    run = subprocess.run(submit, capture_output=True, text=True, timeout=600, env=cluster_env())
    assert run.returncode == 0 and "succeeded" in run.stdout, (run.stdout + run.stderr)[-4000:]
    stopped = re.search(r"train\.max_minutes \(0\.15\) was reached at step (\d+) of 200", run.stdout)
    assert stopped and 0 < int(stopped.group(1)) < 200, run.stdout[-4000:]
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = ADMIN, PASSWORD
    try:
        client = mlflow.MlflowClient(mlflow_server)
        versions = client.search_model_versions("name='mvssl-job-test'")
        assert len(versions) == 1
        run_data = client.get_run(versions[0].run_id)
        assert run_data.info.status == "FINISHED" and "loss" in run_data.data.metrics
        assert run_data.data.tags["max_minutes_reached_at_step"] == stopped.group(1) == versions[0].tags["step"]
        files = {a.path for a in client.list_artifacts(versions[0].run_id)}
        assert "config.yaml" in files
        # the one VICReg run of the suite: what was registered over HTTP is what was trained
        assert_registered_as_trained(
            versions[0].run_id, "vicreg", model_name="mvssl-job-test", tracking_uri=mlflow_server
        )
        served = mlflow_server_starting[2].read_text()
        assert '/artifacts/backbone.pt HTTP/1.1" 200' in served and "/presigned/" not in served
    finally:
        del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
