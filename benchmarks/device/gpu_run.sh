#!/usr/bin/env bash
# There, in ONE call (see README.md): unpack the carried site, check the imports, then the GPU
# half of benchmarks/train.py (issue 7) on the device's H200 and 16 CPUs. Log in $OUT.
#   run(carry=[".site-pack"], command="bash benchmarks/device/gpu_run.sh", timeout_s=450)
set -uo pipefail
OUT=${OUT:-/tmp/mvssl-device-out}
mkdir -p "$OUT"
{
  source "$(dirname "${BASH_SOURCE[0]}")/site.sh" || exit 3
  # what the collapse signals cost at batch 1024 (2 views): read on logged steps only since
  python3 -c "
import time, torch
from mvssl_dist.losses import effective_rank, embedding_std
z = torch.randn(2048, 1024, device='cuda')
for name, fn in (('effective_rank', effective_rank), ('embedding_std', embedding_std)):
    float(fn(z)); torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(10): float(fn(z))
    print(f'{name} of [2048, 1024]: {(time.perf_counter() - t) * 100:.1f} ms')
"
  export TORCH_LOGS=${TORCH_LOGS-graph_breaks,recompiles}
  start=$(date +%s)
  timeout "${TRAIN_TIMEOUT_S:-330}" python3 benchmarks/train.py --device cuda --batch "${BATCH:-1024}" --steps "${STEPS:-200}" --workdir /tmp/mvssl-bench-train
  echo "train benchmark exit: $? after $(($(date +%s) - start)) s"
} 2>&1 | tee "$OUT/gpu_check.log"
# Ray's own logs when something went wrong in the workers
[ -d /tmp/ray/session_latest/logs ] && tar -C /tmp/ray/session_latest -czf "$OUT/ray_logs.tgz" logs 2>/dev/null
exit 0
