#!/usr/bin/env bash
# Set up (or reuse) the isolated environment with test dependencies, then run the test suite.
#   bash tools/run_tests.sh [pytest args...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/setup_env.sh" --tests 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
VENV="${MMC2F_VENV:-$ROOT/.venv}"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest "$@"
