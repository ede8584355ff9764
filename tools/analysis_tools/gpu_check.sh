#!/usr/bin/env bash
# The prepared GPU check (docs/gpu_check.md): on one CUDA GPU, offline, in at most ~8 minutes.
#
#   bash tools/analysis_tools/gpu_check.sh [gpu_check.py arguments, e.g. --quick --sections a,b]
#
# 1. a virtual environment with --system-site-packages (the machine's own torch/torchvision),
# 2. the packages torch does not bring, from tools/analysis_tools/gpu_wheels/ only (no network,
#    no compiling; mmcv-lite: mmcv without its compiled ops),
# 3. import stand-ins for modules whose wheels are too large to carry (cv2, scipy) where the
#    machine has none (gpu_check.py --write-shims; they raise if anything calls into them),
# 4. tools/analysis_tools/gpu_check.py with the repository on PYTHONPATH (mmc2f is not installed).
#
# Results: $OUT (or work_dirs/gpu_check when OUT is unset): gpu_check.log (everything printed),
# gpu_check_summary.txt/.json (PASS/FAIL/SKIP per check), gpu_bench.csv and gpu_bench.md (the
# benchmark table). Exit status: 0 when nothing failed, 1 when a check failed, 2 when the set-up
# failed.
# Environment: GPU_CHECK_PYTHON (interpreter, default: the first of python3, python, python3.12
# that imports torch), GPU_CHECK_VENV (where the venv goes,
# default $TMPDIR/mmc2f-gpu-check-venv), GPU_CHECK_WHEELS (wheel folder), GPU_CHECK_BUDGET (seconds
# for the whole script, default 470).
set -uo pipefail
{ # read to the end before running: an edit while it runs cannot change what runs
START=$(date +%s)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
OUT_DIR="${OUT:-$ROOT/work_dirs/gpu_check}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!
# let tee write the last lines before the script ends
finish() { exec 1>&- 2>&-; wait "$TEE_PID" 2> /dev/null; exit "$1"; }

PY="${GPU_CHECK_PYTHON:-}"
if [[ -z "$PY" ]]; then  # the first interpreter that has torch
  for cand in python3 python python3.12; do
    if command -v "$cand" > /dev/null && "$cand" -c 'import torch' 2> /dev/null; then PY=$cand; break; fi
  done
  PY=${PY:-python3}
fi
VENV="${GPU_CHECK_VENV:-${TMPDIR:-/tmp}/mmc2f-gpu-check-venv}"
WHEELS="${GPU_CHECK_WHEELS:-$ROOT/tools/analysis_tools/gpu_wheels}"
BUDGET="${GPU_CHECK_BUDGET:-470}"

fail_setup() { echo "[gpu_check.sh] SET-UP FAILED: $*"; finish 2; }

echo "[gpu_check.sh] $(date -u +%FT%TZ) repo $ROOT, results -> $OUT_DIR"
"$PY" -c 'import sys, torch; print("[gpu_check.sh] python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' \
  || fail_setup "$PY cannot import torch"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

if [[ ! -x "$VENV/bin/python" ]]; then
  # without ensurepip (e.g. Debian's python3 without python3-venv) the venv gets no pip of its
  # own; its interpreter then runs the system's pip, which installs into the venv
  "$PY" -m venv --system-site-packages "$VENV" \
    || { rm -rf "$VENV"; "$PY" -m venv --system-site-packages --without-pip "$VENV"; } \
    || fail_setup "python -m venv $VENV"
fi
VPY="$VENV/bin/python"
shopt -s nullglob
WHLS=("$WHEELS"/*.whl)
[[ ${#WHLS[@]} -gt 0 ]] || fail_setup "no wheels in $WHEELS"
# --no-deps: the folder is the complete set (gpu_wheels/README.md); pip must not look for
# opencv-python (mmcv-lite's metadata asks for it) or anything else.
"$VPY" -m pip install --quiet --no-index --no-deps --disable-pip-version-check \
  --find-links "$WHEELS" "${WHLS[@]}" || fail_setup "pip install from $WHEELS"
"$VPY" tools/analysis_tools/gpu_check.py --write-shims || fail_setup "gpu_check.py --write-shims"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
SETUP_S=$(( $(date +%s) - START ))
echo "[gpu_check.sh] set-up took ${SETUP_S}s"

"$VPY" tools/analysis_tools/gpu_check.py --out "$OUT_DIR" --budget $(( BUDGET - SETUP_S )) "$@"
RC=$?
echo "[gpu_check.sh] exit status $RC after $(( $(date +%s) - START ))s"
finish $RC
}
