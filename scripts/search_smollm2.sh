#!/usr/bin/env bash
# The measurements behind docs/SEARCH.md, one after another (never two at once: speeds and energy
# are measured):
#   1. the grid of scripts/recipes/smollm2-space.yaml (64 points, all threads), 4 objectives;
#   2. NSGA-II and MOTPE with a budget of 16 on the same space, really run;
#   3. strategies replayed on the recorded grid over many seeds and budgets (scripts/search_replay.py);
#   4. the same grid with one thread per trial, locally and through a local Ray cluster of two
#      one-CPU workers: registry rows compared, wall times printed.
# Usage: scripts/search_smollm2.sh WORK_DIR   (needs a release build and $CRUNCH_CACHE/ray-venv)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:?usage: scripts/search_smollm2.sh WORK_DIR}"
export CRUNCH_CACHE="${CRUNCH_CACHE:-$HOME/.cache/crunch}"
BIN="${CRUNCH_BIN:-${CARGO_TARGET_DIR:-target}/release/crunch}"
MODEL="$CRUNCH_CACHE/models/smollm2-f32.gguf"
TEXT="${TEXT:-../shared/data/wikitext2-test-dev.txt}"
SPACE=scripts/recipes/smollm2-space.yaml
OBJ=size,kld,tg,energy
mkdir -p "$WORK"
REG="$WORK/registry.db"
common=(--space "$SPACE" --text "$TEXT" --objectives "$OBJ" --json --quiet)

t() { local t0; t0=$(date +%s.%N); "$@"; echo "$(echo "$(date +%s.%N) - $t0" | bc)" > "$WORK/.last_seconds"; }

echo "== 1. grid, all threads"
t "$BIN" search "$MODEL" "${common[@]}" --registry "$REG" > "$WORK/grid.json"
GRID=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['run_id'])" "$WORK/grid.json")
echo "grid run $GRID: $(cat "$WORK/.last_seconds") s"

echo "== 2. NSGA-II and MOTPE, budget 16, really run"
for s in nsga2 tpe; do
  t "$BIN" search "$MODEL" "${common[@]}" --registry "$REG" --strategy $s --budget 16 --seed 1 > "$WORK/$s.json"
  echo "$s: $(cat "$WORK/.last_seconds") s"
done

echo "== 3. replays on the grid"
python3 scripts/search_replay.py "$BIN" "$MODEL" "$TEXT" "$SPACE" "$REG" "$GRID" --objectives "$OBJ" \
  --real "$WORK/nsga2.json" "$WORK/tpe.json" | tee "$WORK/replay.txt"

echo "== 4. one thread per trial: local, then a local Ray cluster of two one-CPU workers"
t "$BIN" search "$MODEL" "${common[@]}" --registry "$WORK/local1.db" --threads 1 > "$WORK/local1.json"
echo "local, 1 thread: $(cat "$WORK/.last_seconds") s"
export RAY_STATE_DIR=/tmp/crunch-ray-docs
ADDR=$(bash scripts/ray-cluster.sh start --workers 2 --cpus-per-worker 1 --port 6393)
trap 'bash scripts/ray-cluster.sh stop >/dev/null 2>&1 || true' EXIT
t env CRUNCH_RAY_PYTHON="$CRUNCH_CACHE/ray-venv/bin/python" \
  "$BIN" search "$MODEL" "${common[@]}" --registry "$WORK/ray.db" --ray "$ADDR" > "$WORK/ray.json"
echo "Ray, 2 workers x 1 CPU: $(cat "$WORK/.last_seconds") s"
python3 - "$WORK/local1.db" "$WORK/ray.db" <<'EOF'
import sqlite3, sys, statistics
def rows(p):
    c = sqlite3.connect(p)
    out = {}
    for rid, label in c.execute("select id, label from runs where parent_id is not null"):
        out[label] = dict(c.execute("select name, value from run_metrics where run_id = ?", (rid,)))
    return out
a, b = rows(sys.argv[1]), rows(sys.argv[2])
assert a.keys() == b.keys(), "different trials"
exact = ["file_bytes", "bpw", "kld", "kld_p99", "ppl", "top1", "predicted_kld"]
diff = [(l, k) for l in a for k in exact if a[l].get(k) != b[l].get(k)]
print(f"{len(a)} trials each; metrics that differ among {exact}: {len(diff)} {diff[:5]}")
for k in ["tg_tokens_per_s", "tokens_per_s", "energy_j_per_token"]:
    r = [b[l][k] / a[l][k] for l in a if a[l].get(k) and b[l].get(k)]
    print(f"{k}: Ray / local median {statistics.median(r):.3f} (min {min(r):.3f}, max {max(r):.3f})")
EOF
