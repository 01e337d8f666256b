#!/usr/bin/env bash
# Builds llama.cpp (PyPI llama-cpp-python 0.3.36, from source, about 15 minutes on 2 cores) into
# $CRUNCH_CACHE/llama-venv, with numpy and llama.cpp's `gguf` package beside it. Every side-by-side
# comparison and benchmark script (scripts/compare_*.py, scripts/bench_*.py, the ignored tests that
# name the llama-cpp-python virtualenv) uses it; the default test run does not. Idempotent.
set -euo pipefail
CACHE="${CRUNCH_CACHE:-$HOME/.cache/crunch}"
VENV="$CACHE/llama-venv"
PY="${PYTHON:-python3}"
if "$VENV/bin/python" -c 'import llama_cpp, gguf, numpy' 2>/dev/null; then
  echo "setup: $VENV is ready"
  exit 0
fi
mkdir -p "$CACHE"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check numpy gguf==0.19.0
echo "setup: building llama-cpp-python 0.3.36 from source (slow)"
MAKEFLAGS="-j$(nproc)" "$VENV/bin/pip" install -q --disable-pip-version-check llama-cpp-python==0.3.36
"$VENV/bin/python" -c 'import llama_cpp, gguf; print("setup: llama.cpp", llama_cpp.__version__, "ready in '"$VENV"'")'
