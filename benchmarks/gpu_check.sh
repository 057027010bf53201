#!/usr/bin/env bash
# The first thing to run on a machine with an NVIDIA GPU, from a clone of sfs:
#
#     bash benchmarks/gpu_check.sh            # about 6.5 minutes of checks on one GPU (at most 9)
#     bash benchmarks/gpu_check.sh --keep     # keep the work folder (logs, stores, JSON)
#
# Without a GPU it prints one line saying so and exits 0. With one it:
#   0. finds a Python whose torch sees the GPU (set-up, below);
#   1. prints the environment (GPU, driver, CUDA, torch, CPUs, memory);
#   2. runs the smoke sweep on the GPU (train.device=cuda, then train.device=auto) and checks
#      every model is stored ok and recorded as trained on cuda (trials.parquet's device);
#   3. checks packing invariance on the GPU, and a pack resumed from a checkpoint against
#      the same pack uninterrupted (benchmarks/pack_equivalence.py);
#   4. runs benchmarks/throughput.py --device cuda --modes limit,sfs (one repeat, both grids);
#   5. runs the pack-size sweep (16..1024 models a pack, benchmarks/pack_cost.py --device cuda);
#   6. looks for why sfs on a GPU trailed the bare loop (2026-12-04: 0.07-0.14): sfs's step
#      against the bare loop's in one process (benchmarks/step_overhead.py --device cuda),
#      and the tiny grid with one trial on the GPU instead of four sharing it;
# each time-boxed, with its wall time and PASS/FAIL, then a summary of the figures to copy
# into benchmarks/README.md ("GPU check"). Exit status: 0 when every step passed, else 1.
#
# Set-up (step 0, not counted in the 8 minutes): the first of $SFS_PYTHON, .venv/bin/python,
# python3 whose torch sees the GPU and that imports sfs's dependencies is used as it is.
# Else, where one of them has a CUDA torch but lacks sfs's other dependencies, they are
# installed into .venv-gpu (a venv on top of that Python's packages). Else the CUDA build of
# torch==$TORCH_VERSION (the Makefile's) is installed into .venv (created if missing; an
# existing CPU build is replaced, the other packages kept at their versions), then sfs.
# pip needs an index or a wheel folder: offline, carry a venv with a CUDA torch, set
# SFS_PYTHON to one, or point SFS_WHEELS (pip --find-links) at a folder of wheels.
#
# Environment: SFS_PYTHON, SFS_WHEELS, TORCH_VERSION, GPU_CHECK_CPUS (Ray CPUs of the
# throughput run, default 4: four slots of a quarter GPU each), SETUP_TIMEOUT (s, 900).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
KEEP=0
for arg in "$@"; do
  case $arg in
    --keep) KEEP=1 ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

# --- is there a GPU? (its driver or device nodes, as the Makefile decides) -------------
if nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  GPU_SEEN="nvidia-smi"
elif compgen -G '/dev/nvidia[0-9]*' >/dev/null; then
  GPU_SEEN="/dev/nvidia* (no working nvidia-smi)"
else
  echo "gpu_check: no NVIDIA GPU on this machine (nvidia-smi lists none, no /dev/nvidia*): nothing to check."
  exit 0
fi

TORCH_VERSION=${TORCH_VERSION:-$(sed -n 's/^TORCH_VERSION ?= *//p' Makefile)}
CPUS=${GPU_CHECK_CPUS:-4}
SETUP_TIMEOUT=${SETUP_TIMEOUT:-900}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sfs-gpu-check.XXXXXX")
# The checked-out code runs, whatever sfs a venv may have installed (Ray's workers inherit it).
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export WORK ROOT TORCH_VERSION CPUS
cleanup() {
  if [ "$KEEP" = 1 ]; then echo "gpu_check: work folder kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

NAMES=() RESULTS=() SECONDS_TAKEN=() FIGURES=()
FAILED=0

# record NAME RESULT SECONDS FIGURES
record() {
  NAMES+=("$1") RESULTS+=("$2") SECONDS_TAKEN+=("$3") FIGURES+=("$4")
  [ "$2" = PASS ] || FAILED=1
}

header() {
  printf '\n==== %s ====\n' "$1"
}

# run_step NAME LIMIT_S FUNCTION: runs the exported function under timeout, output to the
# terminal and to $WORK/NAME.log; a failure or a timeout is recorded, never fatal here.
run_step() {
  local name=$1 limit=$2 fn=$3 rc=0 started=$SECONDS result
  header "$name (time box ${limit} s)"
  timeout --kill-after=15 "$limit" bash -c "set -euo pipefail; $fn" 2>&1 | tee "$WORK/$name.log" \
    || rc=$?
  local took=$((SECONDS - started))
  if [ "$rc" = 0 ]; then result=PASS
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then result="FAIL (timed out after ${limit} s)"
  else result="FAIL (exit $rc)"; fi
  local figures
  figures=$(figures_of "$name" 2>/dev/null || true)
  echo "---- $name: $result in ${took} s${figures:+: $figures}"
  record "$name" "$result" "$took" "${figures:--}"
}

# --- step 0: a Python whose torch sees the GPU -----------------------------------------
cuda_torch() {  # PY: torch imports and sees a GPU
  "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1
}
sfs_deps() {  # PY: sfs's launch and its dependencies import
  "$1" -c 'import sfs.launch, ray.tune, lightning, mlflow, polars, hydra, scipy' >/dev/null 2>&1
}
FIND_LINKS=()
[ -n "${SFS_WHEELS:-}" ] && FIND_LINKS=(--find-links "$SFS_WHEELS")

setup() {
  local candidates=() py
  [ -n "${SFS_PYTHON:-}" ] && candidates+=("$SFS_PYTHON")
  candidates+=("$ROOT/.venv/bin/python" "$ROOT/.venv-gpu/bin/python")
  command -v python3 >/dev/null && candidates+=("$(command -v python3)")
  for py in "${candidates[@]}"; do
    if [ -x "$py" ] && cuda_torch "$py" && sfs_deps "$py"; then
      echo "using $py as it is: its torch sees the GPU and sfs's dependencies import"; PY=$py; return 0
    fi
  done
  for py in "${candidates[@]}"; do
    if [ -x "$py" ] && cuda_torch "$py"; then
      echo "$py has a CUDA torch but not sfs's dependencies: installing them into .venv-gpu on top of it"
      "$py" -m venv --system-site-packages "$ROOT/.venv-gpu" || return 1
      local deps
      deps=$("$py" -c 'import tomllib; print("\n".join(d for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"] if not d.startswith("torch")))') || return 1
      # shellcheck disable=SC2086  # one requirement a line
      timeout "$SETUP_TIMEOUT" "$ROOT/.venv-gpu/bin/python" -m pip install "${FIND_LINKS[@]}" $deps || {
        echo "FAILED: pip install of sfs's dependencies into .venv-gpu (no index or wheels reachable? set SFS_WHEELS)"; return 1; }
      PY="$ROOT/.venv-gpu/bin/python"
      cuda_torch "$PY" && sfs_deps "$PY" && return 0
      echo "FAILED: .venv-gpu still cannot import sfs's dependencies with a CUDA torch"; return 1
    fi
  done
  echo "no Python here has a CUDA torch: installing torch==$TORCH_VERSION (the CUDA build) into .venv"
  if [ ! -x "$ROOT/.venv/bin/python" ]; then
    python3 -m venv "$ROOT/.venv" || { echo "FAILED: python3 -m venv .venv"; return 1; }
  fi
  PY="$ROOT/.venv/bin/python"
  # Keep every other package at its version: the installed set, torch and its CUDA parts
  # excepted, constrains the reinstall (an existing CPU build, 2.x+cpu, satisfies
  # torch==2.x, hence --force-reinstall; pip downloads everything before it removes anything).
  "$PY" -m pip freeze --exclude-editable 2>/dev/null \
    | grep -v -E '^(torch|triton|nvidia-[a-z0-9_-]+)==|^-e | @ ' > "$WORK/constraints.txt" || true
  timeout "$SETUP_TIMEOUT" "$PY" -m pip install "${FIND_LINKS[@]}" --force-reinstall -c "$WORK/constraints.txt" \
      "torch==$TORCH_VERSION" || {
    echo "FAILED: pip install torch==$TORCH_VERSION (CUDA build) into .venv: no package index or" \
         "wheel folder reachable? Offline: carry a venv with a CUDA torch (SFS_PYTHON=...) or a" \
         "folder of wheels (SFS_WHEELS=...)"; return 1; }
  if ! sfs_deps "$PY"; then
    timeout "$SETUP_TIMEOUT" "$PY" -m pip install "${FIND_LINKS[@]}" -e "$ROOT" || {
      echo "FAILED: pip install -e . (sfs's dependencies) into .venv"; return 1; }
  fi
  if ! cuda_torch "$PY"; then
    echo "FAILED: torch installed but torch.cuda.is_available() is False:"
    "$PY" -c 'import torch; print("torch", torch.__version__, "built for CUDA", torch.version.cuda)' || true
    nvidia-smi 2>&1 | head -5 || true
    echo "(a driver older than the CUDA build needs, or pip took a CPU wheel, torch-*+cpu, from a"
    echo " find-links folder: SFS_WHEELS or pip's own config, pip config list)"
    return 1
  fi
}

header "setup (time box ${SETUP_TIMEOUT} s; GPU seen by $GPU_SEEN)"
PY=""
setup_started=$SECONDS
# setup sets PY, so it runs in this shell; each pip command gets the time box.
if setup; then
  record setup PASS $((SECONDS - setup_started)) "python $PY"
else
  record setup "FAIL" $((SECONDS - setup_started)) "no Python with a CUDA torch (see above)"
fi
export PY

# --- figures of each step, from the JSON it wrote ------------------------------------
figures_of() {
  "$PY" - "$1" <<'EOF'
import json, os, sys
from pathlib import Path
work, name = Path(os.environ["WORK"]), sys.argv[1]
def load(file):
    path = work / file
    return json.loads(path.read_text()) if path.exists() else None
if name == "smoke":
    data = load("smoke.json")
    print("; ".join(f"{k}: {v['ok']}/{v['rows']} ok on {','.join(v['devices'])}, {v['wall_s']:.1f} s"
                    for k, v in data.items()))
elif name == "packing":
    data = load("packing.json")
    print(f"{data['device']}, rtol {data['rtol']:g} atol {data['atol']:g}; " + "; ".join(
        f"{c['family']}: max|diff| {c['max_abs']:.1e}, loss rel {c['max_loss_rel']:.1e}"
        for c in data["cases"]))
elif name == "throughput":
    data = load("throughput.json")
    print("; ".join(
        f"{g}: limit {r['limit']['model_steps_per_s']:,.0f}, sfs {r['sfs']['model_steps_per_s']:,.0f} "
        f"model-steps/s, sfs/limit {r['ratios']['sfs/limit']:.3f}" for g, r in data.items()
        if r.get("limit") and r.get("sfs")))
elif name == "pack_size":
    rows = (load("pack_size_20.json") or []) + (load("pack_size_1000.json") or [])
    best = {}
    for r in rows:
        key = f"n={r['n']} m={r['m']}"
        if r["model_steps_per_s"] > best.get(key, (0, 0))[1]:
            best[key] = (r["k"], r["model_steps_per_s"])
    print("; ".join(f"{key}: best k={k} ({rate:,.0f} model-steps/s)" for key, (k, rate) in best.items()))
elif name == "sharing":
    step, alone = load("step_overhead.json"), load("sharing.json")
    shared = load("throughput.json")
    parts = []
    if step:
        parts.append(f"one process: sfs {step['model_steps_per_s']['sfs']:,} vs bare "
                     f"{step['model_steps_per_s']['bare']:,} model-steps/s (sfs/bare {step['sfs/bare']})")
    if alone and alone.get("tiny", {}).get("sfs"):
        line = f"tiny sfs, 1 trial on the GPU: {alone['tiny']['sfs']['model_steps_per_s']:,.0f} model-steps/s"
        if shared and shared.get("tiny", {}).get("sfs"):
            line += f" (4 sharing it: {shared['tiny']['sfs']['model_steps_per_s']:,.0f})"
        parts.append(line)
    print("; ".join(parts))
elif name == "environment":
    print((work / "environment.txt").read_text().strip().replace("\n", "; "))
EOF
}

# --- the steps (run by run_step under timeout, in a child bash: exported) --------------
step_environment() {
  {
    if command -v nvidia-smi >/dev/null; then
      nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
        | sed 's/^/GPU: /'
      nvidia-smi | grep -o 'CUDA Version: [0-9.]*' | sed 's/^/driver /' || true
    else
      echo "GPU: nvidia-smi not available"
    fi
    "$PY" -c 'import torch, platform; print(f"torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}), python {platform.python_version()}"); print(f"torch sees {torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name(0)}, capability {torch.cuda.get_device_capability(0)}")'
    echo "CPUs: $(nproc), memory: $(free -g | awk "/^Mem:/ {print \$2}") GiB"
  } | tee "$WORK/environment.txt"
  "$PY" -c 'import torch; x = torch.ones(1024, 1024, device="cuda"); assert float((x @ x)[0, 0]) == 1024.0'
  echo "a matmul on the GPU: ok"
}

step_smoke() {
  local how
  for how in cuda auto; do
    local started=$SECONDS
    echo "-- python -m sfs.launch +sweep=smoke train.device=$how"
    "$PY" -m sfs.launch +sweep=smoke "train.device=$how" "paths.out_dir=$WORK/smoke-$how" \
      "aggregate.enabled=$([ "$how" = cuda ] && echo true || echo false)"
    echo "$how $((SECONDS - started))" >> "$WORK/smoke-walls.txt"
  done
  "$PY" - <<'EOF'
import json, os
from pathlib import Path
import polars as pl
work, out = Path(os.environ["WORK"]), {}
walls = dict(line.split() for line in (work / "smoke-walls.txt").read_text().splitlines())
for how in ("cuda", "auto"):
    trials = pl.read_parquet(work / f"smoke-{how}" / "smoke" / "trials.parquet")
    devices = sorted(set(trials["device"].to_list()))
    ok = trials.filter(pl.col("status") == "ok").height
    out[f"train.device={how}"] = {"rows": trials.height, "ok": ok, "devices": devices,
                                  "wall_s": float(walls[how])}
    print(f"train.device={how}: {ok} of {trials.height} models stored ok, trained on {devices}")
    assert trials.height == 8 and ok == 8, "not every model of the smoke sweep stored ok"
    assert all(d.startswith("cuda") for d in devices), f"trials not recorded on cuda: {devices}"
(work / "smoke.json").write_text(json.dumps(out))
EOF
}

step_packing() {
  # 100 steps: a pack's batched kernels round differently from a lone model's, and training
  # can amplify that (on an H200 one deep_mlp:2 model of 32 drifted to 2.9e-3 by 300 steps,
  # 8.6e-7 at 100); a packing fault (mixed models, a pack-mate's settings) shows at once.
  "$PY" benchmarks/pack_equivalence.py --device cuda --models 32 --alone 6 --steps 100 \
    --json-out "$WORK/packing.json"
}

step_throughput() {
  "$PY" benchmarks/throughput.py --device cuda --modes limit,sfs --grid both --repeats 1 \
    --cpus "$CPUS" --timeout 150 --json-out "$WORK/throughput.json"
}

step_pack_size() {
  local sizes=16,32,64,128,256,512,1024
  # steps chosen to fit the time box on an H200 (n=20: ~25 s a shape, n=1000: ~15 s in all)
  "$PY" benchmarks/pack_cost.py --device cuda --sizes "$sizes" --n-features 20 --steps 300 \
    --json-out "$WORK/pack_size_20.json"
  "$PY" benchmarks/pack_cost.py --device cuda --sizes "$sizes" --n-features 1000 --steps 30 \
    --json-out "$WORK/pack_size_1000.json"
}
step_sharing() {
  "$PY" benchmarks/step_overhead.py --device cuda --steps 500 --repeats 2 | tail -1 \
    | tee "$WORK/step_overhead.json"
  "$PY" benchmarks/throughput.py --device cuda --modes sfs --grid tiny --repeats 1 --cpus 4 \
    --gpus-per-trial 1 --timeout 70 --json-out "$WORK/sharing.json"
}
export -f step_environment step_smoke step_packing step_throughput step_pack_size step_sharing

if [ -n "$PY" ] && [ "${RESULTS[0]}" = PASS ]; then
  # Time boxes: 20 + 100 + 45 + 170 + 110 + 80 = 525 s at most; on an H200 (2026-12-04) the
  # first four took 9, 85, ~20 and 130 s; pack_size and sharing are estimated at ~75 and
  # ~45 s: ~6.5 minutes in all.
  run_step environment 20 step_environment
  run_step smoke 100 step_smoke
  run_step packing 45 step_packing
  run_step throughput 170 step_throughput
  run_step pack_size 110 step_pack_size
  run_step sharing 80 step_sharing
fi

# --- summary -------------------------------------------------------------------------
header "summary (copy into benchmarks/README.md, \"GPU check\")"
echo "$(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo
echo "| step | result | seconds | figures |"
echo "|---|---|---|---|"
for i in "${!NAMES[@]}"; do
  echo "| ${NAMES[$i]} | ${RESULTS[$i]} | ${SECONDS_TAKEN[$i]} | ${FIGURES[$i]//|/\\|} |"
done
if [ -n "$PY" ] && { [ -f "$WORK/pack_size_20.json" ] || [ -f "$WORK/pack_size_1000.json" ]; }; then
  echo
  echo "Pack-size sweep on the GPU: model-steps/s (ms per step) by models per pack:"
  echo
  "$PY" - <<'EOF' || true
import json, os
from pathlib import Path
work = Path(os.environ["WORK"])
rows = []
for name in ("pack_size_20.json", "pack_size_1000.json"):
    if (work / name).exists():
        rows += json.loads((work / name).read_text())
sizes = sorted({r["k"] for r in rows})
print("| shape | " + " | ".join(f"k={k}" for k in sizes) + " |")
print("|---|" + "---|" * len(sizes))
for shape in dict.fromkeys((r["n"], r["m"], r["batch"], r["steps"]) for r in rows):
    cells = {r["k"]: f"{r['model_steps_per_s']:,.0f} ({r['ms_per_step']:.2f})" for r in rows
             if (r["n"], r["m"], r["batch"], r["steps"]) == shape}
    print(f"| n={shape[0]}, m={shape[1]}, batch {shape[2]}, {shape[3]} steps | "
          + " | ".join(cells.get(k, "-") for k in sizes) + " |")
EOF
fi
echo
if [ "$FAILED" = 0 ]; then
  echo "gpu_check: every step passed"
else
  for i in "${!NAMES[@]}"; do
    [ "${RESULTS[$i]}" = PASS ] || echo "gpu_check: FAILED: ${NAMES[$i]}: ${RESULTS[$i]}"
  done
  echo "(logs: $WORK/<step>.log; run again with --keep to keep them)"
fi
exit "$FAILED"
