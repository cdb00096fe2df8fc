#!/usr/bin/env bash
# Here (no GPU needed): fetch the cp312 wheels the device image lacks and pack them into folders
# .whl1, .whl2, ... of at most $LIMIT_MB each, the most one device call may carry beside the repo.
# Wheels larger than that (ray's is ~76 MiB) are cut into parts that install.sh joins there.
#   bash benchmarks/device/stage.sh            -> prints the folders to carry, one call each
set -euo pipefail
cd "$(dirname "$0")/../.."
LIMIT_MB=${LIMIT_MB:-56}
PY=${PYTHON:-python3}
rm -rf .whl-all .whl[0-9]*
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d .whl-all -r benchmarks/device/requirements-device.txt
limit=$((LIMIT_MB * 1024 * 1024))
(cd .whl-all && for f in *.whl; do
  if [ "$(stat -c %s "$f")" -gt "$limit" ]; then split -b "$limit" -d "$f" "$f.part-" && rm "$f"; fi
done)
# First-fit, largest first, into folders under the limit.
folder=0
declare -A used
for f in $(cd .whl-all && ls -S); do
  size=$(stat -c %s ".whl-all/$f")
  placed=""
  for ((i = 1; i <= folder; i++)); do
    if [ $((used[$i] + size)) -le "$limit" ]; then placed=$i; break; fi
  done
  if [ -z "$placed" ]; then folder=$((folder + 1)); placed=$folder; used[$placed]=0; mkdir -p ".whl$placed"; fi
  mv ".whl-all/$f" ".whl$placed/"
  used[$placed]=$((used[$placed] + size))
done
rmdir .whl-all
for ((i = 1; i <= folder; i++)); do echo ".whl$i $(du -sm ".whl$i" | cut -f1) MiB $(ls ".whl$i" | wc -l) files"; done
