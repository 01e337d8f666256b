#!/usr/bin/env python3
"""The encoder table of docs/ENCODERS.md: `crunch fit` on all-MiniLM-L6-v2 against llama.cpp's presets
at the presets' own file sizes, judged by llama.cpp's embeddings; and imatrix / GPTQ against plain
quantization at equal size.

  encoder_fit_table.py MINILM_DIR TEXT --work DIR [--presets Q8_0,Q6_K,Q5_0,Q4_0,Q4_K_M]
                       [--lines 1000] [--calib-ctx 512] [--calib-chunks 16] [--crunch PATH] [--json OUT]

Run with $CRUNCH_CACHE/llama-venv/bin/python (llama_cpp + numpy).

1. `crunch convert MINILM_DIR` to an F32 GGUF (the reference) and an F16 GGUF (what the presets and the
   fits start from, so every file keeps the same F16 position embeddings).
2. Presets: llama.cpp's own quantizer (`llama_model_quantize`, llama-cpp-python 0.3.36) on the F16 GGUF.
3. Fits: `crunch fit F16 OUT --max-size S --text TEXT --method rtn|imatrix|gptq`, S = each preset file's
   size (exit status 1 unless the GPTQ fit beats every preset of at most S bytes, mean and 1st percentile).
   crunch calibrates on the first half of TEXT (whole lines, --calib-ctx x --calib-chunks tokens).
4. Same size, better rounding: `crunch quantize F16 OUT Q4_0|Q5_0` plain, with an importance matrix
   (`crunch imatrix` on the first half's lines) and with GPTQ (`--method gptq`, same lines).
5. Judge: llama.cpp (`Llama(embedding=True)`, mean pooling, L2-normalised) embeds the first --lines
   non-empty lines of TEXT's second half with the F32 GGUF and with every file; per line the cosine
   similarity to the F32 embedding; mean and 1st percentile.
"""
import argparse
import ctypes
import json
import os
import sys
from pathlib import Path

import numpy as np
import llama_cpp
from llama_cpp import Llama

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from lowrank_table import run  # noqa: E402

# fit's methods: plain rounding, importance-weighted rounding, and GPTQ onto the chosen types (the
# one the table's check holds to: crunch's best).
FIT_METHODS = ("rtn", "imatrix", "gptq")
FTYPES = {"Q8_0": 7, "Q6_K": 18, "Q5_0": 8, "Q5_1": 9, "Q4_0": 2, "Q4_1": 3, "Q4_K_M": 15, "Q4_K_S": 14,
          "Q5_K_M": 17, "Q3_K_M": 12, "IQ4_NL": 25}


def split_half(text):
    """The text cut at the first line break at or after the middle byte, as crunch's fit does."""
    b = text.encode("utf-8")
    mid = len(b) // 2
    nl = b.find(b"\n", mid)
    cut = len(b) if nl < 0 else nl + 1
    return b[:cut].decode("utf-8", "ignore"), b[cut:].decode("utf-8", "ignore")


def llama_quantize(src, dst, ftype):
    p = llama_cpp.llama_model_quantize_default_params()
    p.nthread = 2
    p.ftype = FTYPES[ftype]
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p)) != 0:
        sys.exit(f"llama_model_quantize failed for {ftype}")


def embed(model, lines, cache):
    if cache.exists():
        return np.load(cache)
    llm = Llama(model_path=str(model), embedding=True, n_ctx=512, n_batch=512, n_ubatch=512, verbose=False)
    out = np.stack([np.asarray(llm.embed(t, normalize=True, truncate=True), dtype=np.float64) for t in lines])
    del llm
    np.save(cache, out)
    return out


def judge(ref, e):
    cos = np.sum(ref * e, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(e, axis=1))
    c = np.sort(cos)
    return {"mean": float(c.mean()), "p1": float(c[int(round(0.01 * (len(c) - 1)))]), "min": float(c[0])}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("minilm")
    ap.add_argument("text")
    ap.add_argument("--work", required=True)
    ap.add_argument("--presets", default="Q8_0,Q6_K,Q5_0,Q4_0,Q4_K_M")
    ap.add_argument("--lines", type=int, default=1000)
    ap.add_argument("--calib-ctx", type=int, default=512)
    ap.add_argument("--calib-chunks", type=int, default=16)
    ap.add_argument("--same-size", default="Q4_0,Q5_0")
    ap.add_argument("--crunch", default=str(Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release/crunch"))
    ap.add_argument("--json")
    a = ap.parse_args()
    w = Path(a.work)
    w.mkdir(parents=True, exist_ok=True)
    text = Path(a.text).read_text(encoding="utf-8")
    calib_half, held_half = split_half(text)
    lines = [l.strip() for l in held_half.splitlines() if l.strip()][: a.lines]
    calib = w / "calib-half.txt"
    if not calib.exists():
        calib.write_text(calib_half, encoding="utf-8")

    f32, f16 = w / "minilm-f32.gguf", w / "minilm-f16.gguf"
    for path, ty in ((f32, "f32"), (f16, "f16")):
        if not path.exists():
            run([a.crunch, "convert", a.minilm, path, "--type", ty, "-q"])
    ref = embed(f32, lines, w / "emb-f32.npy")
    rows = []

    def row(kind, name, path, extra=None):
        r = {"kind": kind, "name": name, "bytes": path.stat().st_size, **judge(ref, embed(path, lines, w / f"emb-{path.stem}.npy"))}
        if extra:
            r.update(extra)
        rows.append(r)
        print(json.dumps(r), flush=True)
        return r

    row("reference", "F16 (crunch convert)", f16)
    presets = [p for p in a.presets.split(",") if p]
    for p in presets:
        out = w / f"preset-{p}.gguf"
        if not out.exists():
            llama_quantize(f16, out, p)
        row("preset", p, out)
    for p in presets:
        size = (w / f"preset-{p}.gguf").stat().st_size
        for method in FIT_METHODS:
            out = w / f"fit-{method}-{p}.gguf"
            rep = w / f"fit-{method}-{p}.json"
            if not out.exists():
                rep.write_text(run([a.crunch, "fit", f16, out, "--max-size", size, "--text", a.text, "--method", method,
                                    "--calib-ctx", a.calib_ctx, "--calib-chunks", a.calib_chunks, "--json"]))
            m = json.loads(rep.read_text()).get("measured") or {}
            row(f"fit-{method}", f"fit --max-size {size} ({p}) --method {method}", out,
                {"budget": size, "crunch_cosine": (m.get("cosine") or {}).get("mean")})

    imat = w / "minilm.imatrix"
    if not imat.exists():
        run([a.crunch, "imatrix", f16, "--text", calib, "-o", imat, "--ctx", a.calib_ctx, "-q"])
    for t in [t for t in a.same_size.split(",") if t]:
        for label, extra in (("plain", []), ("imatrix", ["--imatrix", imat]),
                             ("gptq", ["--method", "gptq", "--text", calib, "--chunks", 100000, "--ctx", a.calib_ctx])):
            out = w / f"same-{t}-{label}.gguf"
            if not out.exists():
                run([a.crunch, "quantize", f16, out, t, *extra, "-q"])
            row(f"same-{label}", f"{t} {label}", out)

    print("\n| file | bytes | mean cosine | 1st percentile | min |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['bytes']} | {r['mean']:.6f} | {r['p1']:.6f} | {r['min']:.6f} |")
    ok = True
    for p in presets:
        size = (w / f"preset-{p}.gguf").stat().st_size
        smaller = [r for r in rows if r["kind"] == "preset" and r["bytes"] <= size]
        for method in FIT_METHODS:
            f = next(r for r in rows if r["kind"] == f"fit-{method}" and r["budget"] == size)
            wins = f["bytes"] <= size and all(f["mean"] > s["mean"] and f["p1"] > s["p1"] for s in smaller)
            ok &= wins or method != "gptq"
            print(f"{p}: fit {method} {f['bytes']} bytes, mean {f['mean']:.6f} p1 {f['p1']:.6f} -> "
                  f"{'beats' if wins else 'does NOT beat'} every preset of at most {size} bytes")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
