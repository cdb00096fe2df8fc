# Sourced by gpu_run.sh and gpu_probe.sh, there: when the Python packages are not installed (the
# device image), unpack the carried ones once and put them on the paths; say what the machine is
# and check that everything imports.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export PYTHONUNBUFFERED=1
SITE=${SITE:-/tmp/mvssl-site}
date -u
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "cpus $(nproc); /dev/shm $(df -h /dev/shm | awk 'NR==2 {print $2}')"
if ! python3 -c "import ray, mlflow, av, webdataset" 2>/dev/null; then
  if [ ! -e "$SITE/.unpacked" ]; then
    start=$(date +%s)
    mkdir -p "$SITE"
    python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" .site-pack/site.tar.xz "$SITE" \
      && touch "$SITE/.unpacked"
    echo "unpacked in $(($(date +%s) - start)) s"
  fi
  export PATH="$SITE/bin:$PATH"
  export PYTHONPATH="$SITE"
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
python3 -c "import sys, torch, ray, ray.train.torch, ray.data, mlflow, av, webdataset, mvssl_dist.train.pretrain; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'ray', ray.__version__, 'mlflow', mlflow.__version__, 'av', av.__version__)"
