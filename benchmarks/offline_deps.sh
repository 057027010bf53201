#!/usr/bin/env bash
# sfs's dependencies for an offline machine that already has a CUDA torch (a GPU box with no
# package index), packed here, where pip works:
#
#     bash benchmarks/offline_deps.sh OUT_DIR [--python 3.12] [--have FILE] [--part-mb 60]
#
# Downloads the wheels of sfs's dependencies for CPython --python on manylinux x86_64, at the
# versions installed in this checkout's .venv (what the tests ran with; torch and Lightning
# are left out: the target's own are used), with what they need in turn; leaves out every
# distribution named in --have (one name a line, e.g. the target's
# `python3 -m pip list --format=freeze | cut -d= -f1`); unpacks them into one folder
# (pip install --target), drops what neither a sweep nor the GPU check loads (Ray's Java jars,
# MLflow's web UI: `mlflow ui` will not serve there), and writes OUT_DIR/sfs-deps.tar.xz, split
# into parts of at most --part-mb MB (sfs-deps.tar.xz.part-aa, -ab, ...). On the target:
#
#     mkdir -p /tmp/sfs-deps && cat sfs-deps.tar.xz.part-* | tar -xJ -C /tmp/sfs-deps
#     PYTHONPATH=/tmp/sfs-deps bash benchmarks/gpu_check.sh
#
# (the parts can travel separately and be joined there). Needs python3 with pip, xz, and the
# checkout's .venv (make setup). Takes a few minutes (downloads, then xz on every core).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT="" PY_VERSION=3.12 HAVE="" PART_MB=60
while [ $# -gt 0 ]; do
  case $1 in
    --python) PY_VERSION=$2; shift 2 ;;
    --have) HAVE=$2; shift 2 ;;
    --part-mb) PART_MB=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    -*) echo "offline_deps: unknown option $1 (try --help)" >&2; exit 2 ;;
    *) OUT=$1; shift ;;
  esac
done
[ -n "$OUT" ] || { echo "offline_deps: name the output folder (try --help)" >&2; exit 2; }
VENV_PY="$ROOT/.venv/bin/python"
[ -x "$VENV_PY" ] || { echo "offline_deps: no $VENV_PY: run make setup first" >&2; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sfs-offline.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT" "$WORK/wheels" "$WORK/site"

# sfs's dependencies (pyproject.toml) at this .venv's versions, torch and Lightning left out
"$VENV_PY" - "$ROOT/pyproject.toml" > "$WORK/pins.txt" <<'EOF'
import re, sys, tomllib
from importlib import metadata
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
for dep in deps:
    name = re.split(r"[\s\[<>=!~;]", dep, maxsplit=1)[0]
    if name.lower() in ("torch", "lightning"):
        continue
    extras = re.search(r"\[[^\]]*\]", dep)
    print(f"{name}{extras.group(0) if extras else ''}=={metadata.version(name)}")
EOF
echo "offline_deps: sfs's dependencies, as pinned here: $(tr '\n' ' ' < "$WORK/pins.txt")"

PLATFORMS=()
for tag in manylinux2014_x86_64 manylinux1_x86_64 manylinux_2_17_x86_64 manylinux_2_24_x86_64 \
           manylinux_2_27_x86_64 manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 \
           manylinux_2_35_x86_64 any; do
  PLATFORMS+=(--platform "$tag")
done
TARGET=(--only-binary=:all: --python-version "$PY_VERSION" --implementation cp "${PLATFORMS[@]}")

# Distributions without a wheel for the target (pure Python sdists, e.g. Hydra's
# antlr4-python3-runtime 4.9.3) are built here; pip download then finds them in the folder.
download() {
  python3 -m pip download -q "${TARGET[@]}" --find-links "$WORK/wheels" -d "$WORK/wheels" "$@"
}
until out=$(download -r "$WORK/pins.txt" 2>&1); do
  missing=$(sed -n 's/.*satisfies the requirement \([^ ]*\) (from.*/\1/p' <<< "$out" | head -1)
  if [ -z "$missing" ] || [ -f "$WORK/built-${missing//[^A-Za-z0-9]/_}" ]; then
    echo "$out" >&2; echo "offline_deps: pip download failed (above)" >&2; exit 1
  fi
  echo "offline_deps: no wheel of $missing for CPython $PY_VERSION: building one here"
  python3 -m pip wheel -q --no-deps -w "$WORK/wheels" "$missing"
  touch "$WORK/built-${missing//[^A-Za-z0-9]/_}"
done

# what the target has already
normalise() { tr 'A-Z_.' 'a-z--'; }
: > "$WORK/have.txt"
[ -z "$HAVE" ] || normalise < "$HAVE" | sed 's/[ =].*//' | sort -u > "$WORK/have.txt"
echo torch >> "$WORK/have.txt"  # and whatever torch needs: the target's torch is used as it is
kept=()
for wheel in "$WORK"/wheels/*.whl; do
  name=$(basename "$wheel" | cut -d- -f1 | normalise)
  if ! grep -qx "$name" "$WORK/have.txt" && [[ $name != nvidia-* && $name != triton ]]; then
    kept+=("$wheel")
  fi
done
echo "offline_deps: ${#kept[@]} of $(ls "$WORK"/wheels/*.whl | wc -l) wheels are not on the target"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "${TARGET[@]}" "${kept[@]}"
rm -rf "$WORK/site/ray/jars" "$WORK/site/mlflow/server/js"
echo "offline_deps: $(du -sh "$WORK/site" | cut -f1) unpacked; packing (xz)"
tar -C "$WORK/site" -cf - . | xz -T0 -6 | split -b "${PART_MB}M" - "$OUT/sfs-deps.tar.xz.part-"
ls -l "$OUT"/sfs-deps.tar.xz.part-*
echo "offline_deps: on the target: mkdir -p /tmp/sfs-deps && cat sfs-deps.tar.xz.part-* | tar -xJ -C /tmp/sfs-deps"
echo "              then PYTHONPATH=/tmp/sfs-deps bash benchmarks/gpu_check.sh"
