#!/usr/bin/env bash
# The CPU demo, end to end: environment, synthetic data, training, evaluation (mIoU), coloured
# prediction overlays and learning curves. Training + test take about 4-6 minutes on 2 CPU cores
# (docs/demo.md).
#
#   bash tools/run_demo.sh [--seed N] [--work-dir DIR] [--data DIR] [--skip-setup] [-- train.py args]
#
#   --seed N        seed of the data generator and of training (default 0)
#   --work-dir DIR  where checkpoints, logs, metrics and drawings go
#                   (default work_dirs/<config name>_seed<N>)
#   --data DIR      parent folder of the demo data (default data/demo); the set is <DIR>/seg
#   --skip-setup    do not run tools/setup_env.sh (use the interpreter in $PYTHON or the venv)
#   --              anything after it is passed to tools/train.py (e.g. --cfg-options ...)
# Environment: MMC2F_VENV (the virtual environment, default <repo>/.venv), PYTHON (interpreter
# to use instead of the venv's), OMP_NUM_THREADS (CPU threads; default: one per idle core).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CONFIG=configs/demo/segnext_mscan-t_1xb8-adamw-400iter_demo-seg-128x128.py
SEED=0
WORK_DIR=""
DATA=data/demo
SETUP=1
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seed) SEED=$2; shift 2 ;;
    --work-dir) WORK_DIR=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --skip-setup) SETUP=0; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "run_demo.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
NAME="$(basename "$CONFIG" .py)"
WORK_DIR=${WORK_DIR:-work_dirs/${NAME}_seed${SEED}}

t0=$(date +%s)
if [[ "$SETUP" == 1 ]]; then
  echo "[run_demo] 1/4 environment (tools/setup_env.sh)"
  bash tools/setup_env.sh
fi
PY=${PYTHON:-${MMC2F_VENV:-$ROOT/.venv}/bin/python}
t1=$(date +%s)

# PyTorch's CPU threads: one per idle core. On a machine busy with other work, threads that wait
# for a taken core make training many times slower than fewer threads would (measured here:
# 2 threads 5 s/iteration vs 1 thread 0.9 s/iteration on 2 busy cores). OMP_NUM_THREADS overrides.
if [[ -z "${OMP_NUM_THREADS:-}" ]]; then
  CORES=$(nproc)
  LOAD=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo 0)
  IDLE=$(awk -v c="$CORES" -v l="$LOAD" 'BEGIN { n = int(c - l + 0.5); print (n < 1 ? 1 : n) }')
  export OMP_NUM_THREADS=$IDLE
  echo "[run_demo] $CORES cores, load $LOAD: using $OMP_NUM_THREADS CPU thread(s) (set OMP_NUM_THREADS to choose)"
else
  echo "[run_demo] using OMP_NUM_THREADS=$OMP_NUM_THREADS"
fi

echo "[run_demo] 2/4 synthetic data -> $DATA/seg"
"$PY" tools/misc/make_demo_data.py --out "$DATA" --task seg --seed "$SEED"
SET_DATA=()
if [[ "$DATA" != data/demo ]]; then
  SET_DATA=(train_dataloader.dataset.data_root="$DATA/seg" val_dataloader.dataset.data_root="$DATA/seg"
            test_dataloader.dataset.data_root="$DATA/seg")
fi

echo "[run_demo] 3/4 training $CONFIG -> $WORK_DIR"
t2=$(date +%s)
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK_DIR" \
  --cfg-options randomness.seed="$SEED" "${SET_DATA[@]}" "${EXTRA[@]}"
t3=$(date +%s)
CKPT="$(cat "$WORK_DIR/last_checkpoint")"

echo "[run_demo] 4/4 testing $CKPT (mIoU, prediction overlays)"
TEST_DIR="$WORK_DIR/test"
ARGS=(--work-dir "$TEST_DIR" --show-dir "$WORK_DIR/vis" --out "$WORK_DIR/pred")
if [[ ${#SET_DATA[@]} -gt 0 ]]; then ARGS+=(--cfg-options "${SET_DATA[@]}"); fi
"$PY" tools/test.py "$CONFIG" "$CKPT" "${ARGS[@]}" 2>&1 | tee "$WORK_DIR/test_output.log"
t4=$(date +%s)

# learning curves (loss, learning rate, validation mIoU) of the training log, next to the overlays
"$PY" tools/analysis_tools/analyze_logs.py "$WORK_DIR" --out "$WORK_DIR/vis/curves.png" \
  --title "$NAME (seed $SEED)" || echo "[run_demo] (learning curves not written)"

MIOU="$(grep -oE 'Iter\(test\).*mIoU: [0-9.]+' "$WORK_DIR/test_output.log" | grep -oE 'mIoU: [0-9.]+' | tail -1)"
echo
echo "[run_demo] ================================================================="
echo "[run_demo] validation $MIOU (per-class IoU in the table above)"
echo "[run_demo] time: setup $((t1 - t0))s, data $((t2 - t1))s, train $((t3 - t2))s, test $((t4 - t3))s"
echo "[run_demo] checkpoint:          $CKPT"
echo "[run_demo] training log:        $(ls -d "$WORK_DIR"/2*/ | tail -1)"
echo "[run_demo] test log + metrics:  $TEST_DIR/"
echo "[run_demo] prediction overlays: $WORK_DIR/vis/vis_data/vis_image/ (left ground truth, right prediction)"
echo "[run_demo] predicted label maps: $WORK_DIR/pred/ (PNG, values 0..3)"
echo "[run_demo] learning curves:     $WORK_DIR/vis/curves.png (loss, lr, mIoU)"
