#!/usr/bin/env bash
# There, in ONE call (see README.md): the probe-quality benchmark (issue 9) with a pre-training run
# far longer than 2 CPU cores allow: one GPU Ray Train worker, time-boxed. Log in $OUT.
#   run(carry=[".site-pack"], command="bash benchmarks/device/gpu_probe.sh", timeout_s=540)
# LAYERS (0.5: the library where random features leave room), TRACKS (labelled tracks; a fifth
# are the test split), UNLABELLED (more tracks pre-trained on, never labelled; README.md says
# which call to make), STEPS (at most: the run fits its schedules to MINUTES at the pace it keeps,
# train.fit_to_max_minutes), MINUTES (the training loop's time box), BATCH and SEEDS size it;
# GPU=0 dry-runs it on CPU. The pre-trained backbone comes back as $OUT/pretrained_backbone.pt, to be
# set beside the shared fixture here (probe_quality.py --model; README.md says how).
set -uo pipefail
OUT=${OUT:-/tmp/mvssl-device-out}
mkdir -p "$OUT"
{
  source "$(dirname "${BASH_SOURCE[0]}")/site.sh" || exit 3
  gpu=()
  [ "${GPU:-1}" = 1 ] && gpu=(--pretrain train.use_gpu=true --pretrain train.num_workers=1)
  start=$(date +%s)
  python3 benchmarks/probe_quality.py --workdir "${WORKDIR:-/tmp/mvssl-probe}" --layers "${LAYERS:-0.5}" \
    --tracks "${TRACKS:-120}" --unlabelled "${UNLABELLED:-0}" \
    --steps "${STEPS:-3000}" --seeds "${SEEDS:-3}" "${gpu[@]}" \
    --pretrain data.batch_size="${BATCH:-256}" --pretrain train.max_minutes="${MINUTES:-4}" \
    --pretrain train.warmup_epochs="${WARMUP_EPOCHS:-50}" --pretrain train.checkpoint_every=500 \
    --export-model "$OUT/pretrained_backbone.pt"
  echo "probe benchmark exit: $? after $(($(date +%s) - start)) s"
  python3 -c "import json, sys; [print(k, v) for k, v in json.load(open(sys.argv[1])).items()]" \
    "${WORKDIR:-/tmp/mvssl-probe}/quickstart.json"
  cp "${WORKDIR:-/tmp/mvssl-probe}/quickstart.json" "$OUT/" 2>/dev/null
} 2>&1 | tee "$OUT/gpu_probe.log"
[ -d /tmp/ray/session_latest/logs ] && tar -C /tmp/ray/session_latest -czf "$OUT/ray_logs.tgz" logs 2>/dev/null
exit 0
