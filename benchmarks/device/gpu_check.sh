#!/usr/bin/env bash
# There, after the last install call: the GPU half of benchmarks/train.py (issue 7) on the
# device's H200 and 16 CPUs, with its log under $OUT. Prints the versions it ran with first.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source benchmarks/device/install.sh
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/mvssl-device-out}
mkdir -p "$OUT"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import sys, torch, ray, mlflow, av, webdataset; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'ray', ray.__version__, 'mlflow', mlflow.__version__, 'av', av.__version__)"
  timeout "${TRAIN_TIMEOUT_S:-420}" python3 benchmarks/train.py --device cuda --batch "${BATCH:-1024}" --steps "${STEPS:-200}" --workdir /tmp/mvssl-bench-train
  echo "train benchmark exit: $?"
} 2>&1 | tee "$OUT/gpu_check.log"
