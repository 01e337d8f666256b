#!/usr/bin/env bash
# The whole test suite: installs what the tests need (oracle virtualenv, test models from PyPI),
# then formatting, lints and every test. Used by CI (.ci/run) and by developers.
set -euo pipefail
cd "$(dirname "$0")/.."
export CRUNCH_CACHE="${CRUNCH_CACHE:-$HOME/.cache/crunch}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CRUNCH_CACHE/target}"
# A one-off build gains nothing from incremental caches, which double the target directory.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
bash scripts/setup-test-env.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace
echo "== Ray bridge self-check (stand-in trials on a local cluster: retries, lost nodes, bad addresses)"
bash scripts/ray-bridge-selfcheck.sh
