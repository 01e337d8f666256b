"""Which llama.cpp build a comparison ran against, for the speed and perplexity scripts to print first.

scripts/setup-llama-venv.sh builds llama-cpp-python 0.3.36 (llama.cpp of 2026-10-01) without
GGML_NATIVE, with the instruction sets named from /proc/cpuinfo and AMX off, and writes the version
and CMake flags to llama-venv/llama-build.txt. `print_build()` prints that file's contents.
"""
import os
import sys
from pathlib import Path


def build_file():
    """llama-build.txt of the running interpreter's venv, else of $CRUNCH_CACHE/llama-venv."""
    cache = Path(os.environ.get("CRUNCH_CACHE", Path.home() / ".cache/crunch"))
    for venv in (Path(sys.prefix), cache / "llama-venv"):
        f = venv / "llama-build.txt"
        if f.is_file():
            return f
    return None


def print_build():
    f = build_file()
    if f is None:
        print("llama.cpp build: unknown (no llama-build.txt; build with scripts/setup-llama-venv.sh)", flush=True)
    else:
        print(f"llama.cpp build ({f}): {f.read_text().strip()}", flush=True)
