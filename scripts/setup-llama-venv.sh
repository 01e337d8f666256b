#!/usr/bin/env bash
# Builds llama.cpp (PyPI llama-cpp-python 0.3.36, which vendors llama.cpp of 2026-10-01; from source,
# about 15 minutes on 2 cores) into $CRUNCH_CACHE/llama-venv, with numpy and llama.cpp's `gguf`
# package beside it. Every side-by-side comparison and benchmark script (scripts/compare_*.py,
# scripts/bench_*.py, the ignored tests that name the llama-cpp-python virtualenv) uses it; the
# default test run does not. Idempotent.
#
# The build is never "native": some CPUs (recent Xeons) advertise AMX but the kernel does not let the
# process use it, and a native build then computes garbage for Q4_0/Q4_1 (early 2025) or dies with
# SIGILL (2026-10). The instruction sets are named from /proc/cpuinfo instead, AMX always off. The
# flags used are written to $VENV/llama-build.txt, which the speed comparisons print.
set -euo pipefail
CACHE="${CRUNCH_CACHE:-$HOME/.cache/crunch}"
VENV="$CACHE/llama-venv"
PY="${PYTHON:-python3}"
if "$VENV/bin/python" -c 'import llama_cpp, gguf, numpy' 2>/dev/null && [ -f "$VENV/llama-build.txt" ]; then
  echo "setup: $VENV is ready ($(cat "$VENV/llama-build.txt"))"
  exit 0
fi
mkdir -p "$CACHE"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check numpy gguf==0.19.0

flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
has() { [[ " $flags " == *" $1 "* ]]; }
onoff() { if has "$1"; then echo ON; else echo OFF; fi; }
avx512=OFF
if has avx512f && has avx512bw && has avx512dq && has avx512vl; then avx512=ON; fi
vnni=OFF; vbmi=OFF; bf16=OFF
if [ "$avx512" = ON ]; then
  vnni=$(onoff avx512_vnni); vbmi=$(onoff avx512vbmi); bf16=$(onoff avx512_bf16)
fi
CMAKE_FLAGS="-DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_BACKEND_DL=OFF \
-DGGML_SSE42=$(onoff sse4_2) -DGGML_AVX=$(onoff avx) -DGGML_AVX2=$(onoff avx2) -DGGML_FMA=$(onoff fma) \
-DGGML_F16C=$(onoff f16c) -DGGML_BMI2=$(onoff bmi2) -DGGML_AVX_VNNI=$(onoff avx_vnni) \
-DGGML_AVX512=$avx512 -DGGML_AVX512_VNNI=$vnni -DGGML_AVX512_VBMI=$vbmi -DGGML_AVX512_BF16=$bf16 \
-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_OPENMP=ON"
echo "setup: building llama-cpp-python 0.3.36 from source (slow) with $CMAKE_FLAGS"
CMAKE_ARGS="$CMAKE_FLAGS" MAKEFLAGS="-j$(nproc)" "$VENV/bin/pip" install -q --disable-pip-version-check \
  --no-cache-dir --force-reinstall --no-deps llama-cpp-python==0.3.36
"$VENV/bin/pip" install -q --disable-pip-version-check llama-cpp-python==0.3.36
echo "llama-cpp-python 0.3.36 (llama.cpp 2026-10-01) built with: $CMAKE_FLAGS" > "$VENV/llama-build.txt"
"$VENV/bin/python" -c 'import llama_cpp, gguf; print("setup: llama.cpp", llama_cpp.__version__, "ready in '"$VENV"'")'
