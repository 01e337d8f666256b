#!/usr/bin/env bash
# End-to-end check of the `crunch search` Ray bridge (crates/crunch/src/search/ray_bridge.py) on a
# throwaway local Ray cluster (scripts/ray-cluster.sh: head + 2 workers x 1 CPU), with stand-in
# commands instead of crunch. About a minute and a half; exits non-zero if any check fails.
#   scripts/ray-bridge-selfcheck.sh [--trial-seconds S] [--kill-existing]
# Needs $CRUNCH_CACHE/ray-venv (installed by scripts/setup-test-env.sh, or by ray-cluster.sh if missing).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PY=$("$HERE/ray-cluster.sh" venv)
exec "$PY" "$HERE/ray_bridge_selfcheck.py" "$@"
