#!/bin/bash
# Runs the RayJob entrypoints of cluster/kuberay/ on a KubeRay-shaped cluster in Docker, for a
# machine with a Docker engine but no Kubernetes:
#   - the tracking server image (cluster/mlflow/Dockerfile) with basic auth, SQLite store;
#   - a Ray head (num-cpus 0) and one CPU worker from the mvssl-dist image, each started the way
#     KubeRay starts a Ray pod (`/bin/bash -lc -- "ulimit -n 65536; ray start ... --block"`),
#     sharing /data and reading the settings Secret as environment variables;
#   - S3 for the raw audio: moto's server on this machine (MinIO's stand-in);
#   - a submitter container per job: `ray job submit` to the head with the manifest's entrypoint,
#     plus CPU overrides (no GPU here).
# Ingest reads s3://catalogue/audio/ (24 synthetic tracks and 4 broken files), pre-training runs
# 2 Ray Train workers on the CPU worker and registers in the server, evaluation probes a 40-track
# task in MagnaTagATune's format and promotes `champion`, and embedding uses that alias.
#
#   bash cluster/check-in-docker.sh        # from the repository root; PY: a python with the test extras
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
IMG=mvssl-dist:check SERVER=mvssl-mlflow:check NET=mvssl-check
WORK=$(mktemp -d)
cleanup() {
  docker rm -f mvssl-check-mlflow mvssl-check-head mvssl-check-cpu >/dev/null 2>&1 || true
  docker network rm $NET >/dev/null 2>&1 || true
  [ -n "${MOTO:-}" ] && kill "$MOTO" 2>/dev/null || true
}
trap cleanup EXIT

docker build -q -t $IMG . >/dev/null
docker build -q -t $SERVER cluster/mlflow >/dev/null
docker network create $NET >/dev/null
GATEWAY=$(docker network inspect $NET -f '{{(index .IPAM.Config 0).Gateway}}')

mkdir -p "$WORK/data" "$WORK/server" && chmod 777 "$WORK/data" "$WORK/server"
$PY -m moto.server -H 0.0.0.0 -p 9000 >"$WORK/moto.log" 2>&1 & MOTO=$!
sleep 3
$PY - "$WORK/library" <<'PY'
import sys, pathlib, boto3
from mvssl_dist.library import write_library
out = pathlib.Path(sys.argv[1])
write_library(out, tracks=24, seconds=14, broken=True)
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:9000", aws_access_key_id="check",
                  aws_secret_access_key="check", region_name="us-east-1")
s3.create_bucket(Bucket="catalogue")
files = [p for p in out.rglob("*") if p.is_file() and p.suffix != ".csv"]
for p in files:
    s3.upload_file(str(p), "catalogue", f"audio/{p.relative_to(out).as_posix()}")
print(f"s3://catalogue/audio/: {len(files)} files")
PY
$PY - "$WORK/data/mtat" <<'PY'
import sys, pathlib
sys.path.insert(0, "tests")
from test_evaluate import write_mtat_fixture  # MagnaTagATune's split format, tags that follow the audio
root = pathlib.Path(sys.argv[1])
audio, splits, _ = write_mtat_fixture(root, tracks_per_split=(24, 8, 8), seconds=6.0)
audio.rename(root / "mp3")  # the paths rayjob-evaluate.yaml names
splits.rename(root / "split")
print(f"MTAT-format task in {root}: 40 tracks")
PY
cat >"$WORK/secrets.env" <<ENV
MLFLOW_TRACKING_URI=http://mvssl-check-mlflow:5000
MLFLOW_TRACKING_USERNAME=admin
MLFLOW_TRACKING_PASSWORD=check-admin-password
AWS_ACCESS_KEY_ID=check
AWS_SECRET_ACCESS_KEY=check
AWS_ENDPOINT_URL=http://$GATEWAY:9000
AWS_DEFAULT_REGION=us-east-1
ENV

docker run -d --name mvssl-check-mlflow --network $NET -v "$WORK/server:/srv" \
  -e MLFLOW_BACKEND_STORE_URI=sqlite:////srv/mlflow.db -e MLFLOW_ARTIFACTS_DESTINATION=/srv/artifacts \
  -e MLFLOW_ADMIN_PASSWORD=check-admin-password -e MLFLOW_FLASK_SERVER_SECRET_KEY=check-secret-key-0123456789 \
  -e MLFLOW_SERVER_ALLOWED_HOSTS='mvssl-check-mlflow:*' -e MLFLOW_WORKERS=1 $SERVER >/dev/null
POD=(--network $NET -v "$WORK/data:/data" --env-file "$WORK/secrets.env")
# The head with its pod's memory and /dev/shm (raycluster.yaml); the worker with this machine's
# memory, so /dev/shm of 8g holds Ray's object store (30 % of it) up to a 26 GB machine.
docker run -d --name mvssl-check-head "${POD[@]}" --memory=8g --shm-size=3g $IMG /bin/bash -lc -- \
  "ulimit -n 65536; ray start --head --block --num-cpus=0 --dashboard-host=0.0.0.0 --disable-usage-stats" >/dev/null
sleep 10
docker run -d --name mvssl-check-cpu "${POD[@]}" --shm-size=8g $IMG /bin/bash -lc -- \
  "ulimit -n 65536; ray start --block --address=mvssl-check-head:6379 --disable-usage-stats" >/dev/null
sleep 10
for node in mvssl-check-head mvssl-check-cpu; do
  if docker logs $node 2>&1 | grep -q "instead of /dev/shm"; then
    echo "$node: Ray's object store did not fit in /dev/shm and went to disk" >&2
  fi
done

entrypoint() {
  $PY -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['spec']['entrypoint'])" "cluster/kuberay/rayjob-$1.yaml"
}
submit() {  # JOB ENTRYPOINT: what the RayJob's submitter pod does
  echo "== $1: $2"
  local start=$SECONDS
  docker run --rm --network $NET --env-file "$WORK/secrets.env" $IMG \
    ray job submit --address http://mvssl-check-head:8265 -- $2 >"$WORK/$1.log" 2>&1 \
    || { tail -40 "$WORK/$1.log"; echo "FAILED: $1 (log above)"; exit 1; }
  grep -E "^(ingested|[0-9]+ rejected|run |registered|embedded|\s*ROC-AUC|alias:)" "$WORK/$1.log" || true
  echo "   $1 done in $((SECONDS - start)) s"
}
submit ingest "$(entrypoint ingest)"
submit pretrain "$(entrypoint pretrain) train.use_gpu=false train.num_workers=2 train.max_steps=6 data.batch_size=8 train.log_every=2 train.checkpoint_every=3"
submit evaluate "$(entrypoint evaluate | sed 's/--gpus 1/--gpus 0/')"
submit embed "$(entrypoint embed | sed 's/--gpus 1/--gpus 0/; s/--workers 4/--workers 1/; s/--batch-size 256/--batch-size 16/')"
echo "all four RayJob entrypoints ran; files in $WORK"
