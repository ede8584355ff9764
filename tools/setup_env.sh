#!/usr/bin/env bash
# Create (or reuse) an isolated environment with the verified package set and mmc2f itself.
# The exact versions come from requirements/constraints.txt (every pip call below is constrained by
# it); mmc2f's own install_requires (requirements/runtime.txt) are ranges.
#
#   bash tools/setup_env.sh            # runtime stack + mmc2f (editable)
#   bash tools/setup_env.sh --tests    # ... plus the test dependencies
#
# Environment variables:
#   MMC2F_VENV      where the virtual environment lives (default: <repo>/.venv)
#   MMC2F_PYTHON    interpreter used to create it (default: python3.11, else python3)
#   MMC2F_WHEELS    folder of prebuilt wheels (default: <repo>/../shared/wheels when it exists);
#                   without it, mmcv 2.1.0 is compiled from source (about 20 minutes on 2 cores).
# A second run with unchanged requirement files only checks a stamp and returns.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MMC2F_VENV:-$ROOT/.venv}"
WITH_TESTS=0
[[ "${1:-}" == "--tests" ]] && WITH_TESTS=1

if [[ -z "${MMC2F_PYTHON:-}" ]]; then
  if command -v python3.11 >/dev/null 2>&1; then MMC2F_PYTHON=python3.11; else MMC2F_PYTHON=python3; fi
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[setup_env] creating virtual environment $VENV with $MMC2F_PYTHON"
  "$MMC2F_PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

STAMP="$VENV/.mmc2f-stamp"
want="$(cat "$ROOT"/requirements/*.txt "$ROOT/setup.py" | sha256sum | cut -c1-16)-tests$WITH_TESTS"
if [[ -f "$STAMP" ]] && { [[ "$(cat "$STAMP")" == "$want" ]] || [[ "$WITH_TESTS" == 0 && "$(cat "$STAMP")" == "${want%-tests0}-tests1" ]]; }; then
  echo "[setup_env] environment $VENV is up to date"
  exit 0
fi

WHEELS="${MMC2F_WHEELS:-$ROOT/../shared/wheels}"
FIND_LINKS=()
if [[ -d "$WHEELS" ]]; then
  FIND_LINKS=(--find-links "$WHEELS")
  echo "[setup_env] using prebuilt wheels from $WHEELS"
else
  echo "[setup_env] no wheel folder at $WHEELS: mmcv 2.1.0 will be compiled from source (~20 min)"
fi

# Every pip call is constrained by the verified set, so no dependency can drag in another torch.
CONSTRAINTS="$ROOT/requirements/constraints.txt"
PIP=("$PY" -m pip --disable-pip-version-check)
export PIP_DEFAULT_TIMEOUT=120

"${PIP[@]}" install -q -c "$CONSTRAINTS" setuptools wheel
# torch must be present before mmcv builds (mmcv needs build isolation off).
"${PIP[@]}" install -q -c "$CONSTRAINTS" torch torchvision
MMCV_WITH_OPS=1 "${PIP[@]}" install -q --no-build-isolation -c "$CONSTRAINTS" "${FIND_LINKS[@]}" mmcv
# the whole verified set (exact versions), then mmc2f's ranges (already satisfied by it)
"${PIP[@]}" install -q -c "$CONSTRAINTS" "${FIND_LINKS[@]}" -r "$CONSTRAINTS" \
  -r "$ROOT/requirements/runtime.txt" -r "$ROOT/requirements/onnxruntime.txt"
if [[ "$WITH_TESTS" == 1 ]]; then
  "${PIP[@]}" install -q -c "$CONSTRAINTS" -r "$ROOT/requirements/tests.txt"
fi
# editable: mmc2f/.mim/{configs,tools,demo,model-index.yml} become links into the clone
"${PIP[@]}" install -q --no-build-isolation --no-deps -e "$ROOT"
"$PY" -c "import torch, mmcv, mmengine, mmdet, mmseg, mmpretrain, mmc2f; from mmcv.ops import nms; import cv2, psutil; print('[setup_env] ok: torch', torch.__version__, 'mmcv', mmcv.__version__, 'opencv', cv2.__version__, 'mmc2f', mmc2f.__version__)"
echo "$want" > "$STAMP"
