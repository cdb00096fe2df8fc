#!/usr/bin/env bash
# Here (no GPU needed; ~6 min on 2 cores): the Python packages the device image lacks, installed
# for its cp312, trimmed and packed into ONE file small enough for one `run` call's carry:
#   bash benchmarks/device/stage_site.sh     -> .site-pack/site.tar.xz (~57 MB)
# What is left out is what the GPU check never loads: Ray's Java jars, RLlib, Serve and LLM
# libraries, MLflow's web UI bundle and py-spy; native libraries lose their debug symbols
# (`strip --strip-unneeded`: Ray's three binaries shrink from 118 MB to 84 MB).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
SITE=$(mktemp -d)
"$PY" -m pip install -q --target "$SITE" --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -r benchmarks/device/requirements-device.txt
rm -rf "$SITE"/ray/{jars,rllib,serve,llm} "$SITE"/mlflow/server/js "$SITE"/bin/py-spy
find "$SITE" -name __pycache__ -prune -exec rm -rf {} +
find "$SITE" -name '*.so*' -type f -exec file {} + | grep 'not stripped' | cut -d: -f1 | xargs -r strip --strip-unneeded
mkdir -p .site-pack
tar -C "$SITE" -cf - . | xz -9 -T0 > .site-pack/site.tar.xz
rm -rf "$SITE"
ls -l .site-pack/site.tar.xz
