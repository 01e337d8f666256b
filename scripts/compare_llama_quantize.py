#!/usr/bin/env python3
"""Side by side with llama.cpp's quantizer (PyPI llama-cpp-python, `llama_model_quantize`).

For each preset, quantize the same F32 GGUF with llama.cpp and with crunch, then compare the
per-tensor type plan, the file size, the tensor bytes, and the wall time.

  ~/.cache/crunch/llama-venv/bin/python scripts/compare_llama_quantize.py \
      --f32 smollm2-f32.gguf --crunch target/release/crunch [--presets Q4_K_M,Q8_0] \
      [--fixture crates/crunch-cli/tests/fixtures/llama_plans_smollm2.json]

With --imatrix FILE both tools quantize with that importance matrix (llama.cpp gets its per-column
means as llama-quantize passes them); the i-quant presets (IQ1_S ... IQ3_M) need one. With --ppl TEXT
the perplexity of crunch's file is measured by llama.cpp and by crunch (scripts/compare_perplexity.py,
--ppl-ctx / --ppl-chunks) and the difference printed.

The fixture records llama.cpp's plan, sizes and the SHA-256 of its whole output file, so the default
test run (crates/crunch-cli/tests/quantize_plan.rs) can check crunch's plan and files without
llama-cpp-python. Give --f32 the F32 base the tests use, $CRUNCH_CACHE/models/smollm2-f32.gguf
(the shipped Q4_1 SmolLM2 dequantized by `crunch quantize IN OUT F32 --allow-requantize`).
"""
import argparse
import ctypes
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import llama_cpp
from gguf import GGUFReader

import compare_imatrix
import compare_perplexity
import llama_build

PRESETS = {  # llama_ftype codes
    "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12,
    "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18, "IQ4_NL": 25,
    "IQ4_XS": 30, "TQ1_0": 36, "TQ2_0": 37, "F16": 1, "BF16": 32,
}
# Presets llama.cpp writes only with an importance matrix.
IMATRIX_PRESETS = {
    "IQ2_XXS": 19, "IQ2_XS": 20, "Q2_K_S": 21, "IQ3_XS": 22, "IQ3_XXS": 23, "IQ1_S": 24, "IQ3_S": 26,
    "IQ3_M": 27, "IQ2_S": 28, "IQ2_M": 29, "IQ1_M": 31,
}


def llama_quantize(src, dst, ftype, threads, imatrix=None):
    p = llama_cpp.llama_model_quantize_default_params()
    p.nthread = threads
    p.ftype = ftype
    if imatrix:
        arr, keep, _ = compare_imatrix.imatrix_param(imatrix)  # keep: the buffers arr points into
        p.imatrix = arr
    t = time.time()
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize failed for ftype {ftype}")
    return time.time() - t


def tensors(path):
    r = GGUFReader(path)
    return {t.name: (t.tensor_type.name, bytes(np.asarray(t.data).view(np.uint8).ravel())) for t in r.tensors}


def write_fixture(a, entries):
    """Merge `entries` (preset -> record) into the fixture file (written after every preset)."""
    presets = {}
    if os.path.exists(a.fixture):
        with open(a.fixture) as f:
            presets = json.load(f)["presets"]
    presets.update(entries)
    build = llama_build.build_file()
    tmp = a.fixture + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"source": "llama.cpp via llama-cpp-python " + llama_cpp.__version__,
                   "imatrix": os.path.basename(a.imatrix) if a.imatrix else None,
                   "build": build.read_text().strip() if build else "unknown",
                   "presets": presets}, f, indent=1, sort_keys=True)
    os.replace(tmp, a.fixture)
    print(f"wrote {a.fixture}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--f32", required=True)
    ap.add_argument("--crunch", required=True)
    ap.add_argument("--presets", default=",".join(k for k in PRESETS if k not in ("F16", "BF16")))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fixture", help="write llama.cpp's plans, sizes and hashes here (merged into an existing file)")
    ap.add_argument("--out", default=tempfile.mkdtemp(prefix="crunch-vs-llama-"))
    ap.add_argument("--imatrix", help="importance matrix both tools quantize with")
    ap.add_argument("--ppl", metavar="TEXT", help="also compare crunch's and llama.cpp's perplexity of crunch's file")
    ap.add_argument("--ppl-ctx", type=int, default=512)
    ap.add_argument("--ppl-chunks", type=int, default=8)
    a = ap.parse_args()
    codes = dict(PRESETS, **IMATRIX_PRESETS)
    llama_build.print_build()
    fixture = {}
    ok = True
    print(f"{'preset':8} {'llama.cpp size':>14} {'crunch size':>12} {'plan':>6} {'identical tensors':>18} {'llama s':>8} {'crunch s':>8}")
    for name in a.presets.split(","):
        lp = os.path.join(a.out, f"llama-{name}.gguf")
        cp = os.path.join(a.out, f"crunch-{name}.gguf")
        lt = llama_quantize(a.f32, lp, codes[name], a.threads, a.imatrix)
        t = time.time()
        extra = ["--imatrix", a.imatrix] if a.imatrix else []
        subprocess.run([a.crunch, "quantize", a.f32, cp, name, "--threads", str(a.threads), "-q"] + extra, check=True)
        ct = time.time() - t
        L, C = tensors(lp), tensors(cp)
        same_plan = {k: v[0] for k, v in L.items()} == {k: v[0] for k, v in C.items()}
        same_bytes = sum(1 for k in L if k in C and L[k][1] == C[k][1])
        ls, cs = os.path.getsize(lp), os.path.getsize(cp)
        whole = open(lp, "rb").read() == open(cp, "rb").read()
        print(f"{name:8} {ls:14d} {cs:12d} {'same' if same_plan else 'DIFF':>6} {same_bytes:>8}/{len(L):<9} {lt:8.2f} {ct:8.2f}"
              + ("  (files byte-identical)" if whole else ""))
        if not same_plan:
            ok = False
            for k in sorted(L):
                if k not in C or L[k][0] != C[k][0]:
                    print(f"   {k}: llama.cpp {L[k][0]}, crunch {C.get(k, ('missing',))[0]}")
        if ls != cs and not a.imatrix:
            ok = False
        if a.imatrix and same_bytes != len(L):
            ok = False
        with open(lp, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        # llama-quantize (the tool) adds quantize.imatrix.* keys naming the file; the library call
        # made here does not, so with an imatrix only the tensor data are compared byte for byte.
        data_sha = hashlib.sha256(b"".join(L[k][1] for k in sorted(L))).hexdigest()
        fixture[name] = {"file_size": ls, "types": {k: v[0] for k, v in L.items()},
                         "tensor_bytes": sum(len(v[1]) for v in L.values()), "sha256": sha,
                         "tensor_data_sha256": data_sha}
        if a.imatrix:
            # per tensor, for the tensors of the lowest-bit types (the default test run checks a few
            # of them without quantizing the whole model)
            fixture[name]["tensor_sha256"] = {k: hashlib.sha256(v[1]).hexdigest() for k, v in L.items()
                                              if v[0].startswith("IQ") and v[0] not in ("IQ4_NL", "IQ4_XS")}
        if a.ppl:
            ref = compare_perplexity.llama_cpp_perplexity(cp, a.ppl, a.ppl_ctx, a.ppl_chunks, a.threads)
            ours = compare_perplexity.crunch_perplexity(a.crunch, cp, a.ppl, a.ppl_ctx, a.ppl_chunks, a.threads)
            rel = 100.0 * (ours["ppl"] - ref["ppl"]) / ref["ppl"]
            print(f"   perplexity of crunch's {name} ({a.ppl_chunks} chunks of {a.ppl_ctx}): llama.cpp "
                  f"{ref['ppl']:.4f}, crunch {ours['ppl']:.4f} ({rel:+.3f}%)")
            fixture[name]["ppl"] = {"llama_cpp": ref["ppl"], "crunch": ours["ppl"], "ctx": a.ppl_ctx,
                                    "chunks": a.ppl_chunks}
        os.remove(lp)
        os.remove(cp)
        if a.fixture:
            write_fixture(a, {name: fixture[name]})
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
