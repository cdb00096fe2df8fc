#!/usr/bin/env bash
# There (the device machine), once per carried folder: join any wheel parts, install what is
# complete into .site (kept between calls while the machine stays warm), and say what is missing.
# Idempotent: a wheel already installed is skipped.
#   source benchmarks/device/install.sh   -> also exports PYTHONPATH=.site:.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY=${PYTHON:-python3}
mkdir -p .whl-there .site
for d in .whl[0-9]*; do [ -d "$d" ] && cp -n "$d"/* .whl-there/ 2>/dev/null; done
for first in .whl-there/*.whl.part-00; do
  [ -e "$first" ] || continue
  wheel=${first%.part-00}
  parts=$(ls "$wheel".part-* | wc -l)
  # join, and keep the result only if it is a whole zip: a wheel's central directory is at its
  # end, so a missing last part shows, and the parts wait for the next call
  if "$PY" - "$wheel" "$parts" <<'EOF'
import sys, zipfile, pathlib
wheel, parts = sys.argv[1], int(sys.argv[2])
with open(wheel, "wb") as out:
    for i in range(parts):
        out.write(pathlib.Path(f"{wheel}.part-{i:02d}").read_bytes())
sys.exit(0 if zipfile.is_zipfile(wheel) else 1)
EOF
  then rm -f "$wheel".part-*; else rm -f "$wheel"; echo "install.sh: $(basename "$wheel") still waits for parts"; fi
done
todo=()
for w in .whl-there/*.whl; do
  [ -e "$w" ] || continue
  [ -e ".site/.done-$(basename "$w")" ] || todo+=("$w")
done
if [ ${#todo[@]} -gt 0 ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site ${PIP_EXTRA:-} "${todo[@]}" \
    && for w in "${todo[@]}"; do touch ".site/.done-$(basename "$w")"; done
fi
export PYTHONPATH="$PWD/.site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$PWD/.site/bin:$PATH"
echo "install.sh: $(ls .site/.done-* 2>/dev/null | wc -l) wheels installed in .site; $(ls .whl-there/*.part-* 2>/dev/null | wc -l) parts waiting"
