#!/usr/bin/env python3
"""Prompt-processing speed of `crunch eval perplexity` vs llama.cpp's perplexity on the same model,
type, text and thread count, in the same run, with peak memory.

  bench_perplexity.py TEXT [--types F32,Q8_0,Q4_0,Q4_1,Q4_K_M,Q6_K] [--ctx 512] [--chunks 8]
                      [--rounds 3] [--threads 2] [--crunch PATH] [--json OUT]

Run with the llama.cpp venv ($CRUNCH_CACHE/llama-venv/bin/python, made by scripts/setup-llama-venv.sh).
Models: SmolLM2-135M-Instruct as shipped (Q4_1) and its F32 dequantization quantized by `crunch
quantize` to each other type (cached in $CRUNCH_CACHE/models, see bench_eval.py).

Each round runs both tools on the first --chunks chunks of TEXT, each in its own process, one after
the other (never concurrently), alternating which goes first. llama.cpp is driven as
tools/perplexity does it (scripts/compare_perplexity.py: one llama_decode per chunk of ctx tokens,
logits from ctx/2 on); its time is the llama_decode calls only, crunch's is the whole chunk loop
(forward pass and scoring). Tokens/s = chunks x ctx / seconds. The table shows the median over the
rounds (the machine is shared; medians of alternating runs are robust to a slow phase of either),
the ratio of medians, both perplexities (they must agree) and the larger peak RSS of each tool.
"""
import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_eval  # noqa: E402  (model cache)
import compare_perplexity as cp  # noqa: E402  (both perplexity runners)
import llama_build  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("text")
    ap.add_argument("--types", default="F32,Q8_0,Q4_0,Q4_1,Q4_K_M,Q6_K")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--crunch", default=str(Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release/crunch"))
    ap.add_argument("--json")
    a = ap.parse_args()
    llama_build.print_build()
    rows = []
    print(f"{a.chunks} chunks of {a.ctx} tokens, {a.threads} threads, median of {a.rounds} alternating rounds\n")
    print("| type | llama.cpp t/s | crunch t/s | crunch / llama.cpp | llama.cpp PPL | crunch PPL | "
          "llama.cpp peak RSS | crunch peak RSS |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for ty in a.types.split(","):
        model = bench_eval.model_for(ty, a.crunch)
        ref_runs, our_runs = [], []
        for r in range(a.rounds):
            order = ["llama", "crunch"] if r % 2 == 0 else ["crunch", "llama"]
            for who in order:
                if who == "llama":
                    ref_runs.append(cp.llama_cpp_perplexity(model, a.text, a.ctx, a.chunks, a.threads))
                else:
                    our_runs.append(cp.crunch_perplexity(a.crunch, model, a.text, a.ctx, a.chunks, a.threads))
        ltps = statistics.median(x["tokens_per_second"] for x in ref_runs)
        ctps = statistics.median(x["tokens_per_second"] for x in our_runs)
        lrss = max(x["peak_rss_bytes"] for x in ref_runs)
        crss = max(x.get("peak_rss_bytes") or 0 for x in our_runs)
        lppl, cppl = ref_runs[0]["ppl"], our_runs[0]["ppl"]
        print(f"| {ty} | {ltps:.1f} | {ctps:.1f} | {ctps / ltps:.2f} | {lppl:.4f} | {cppl:.4f} | "
              f"{cp.mib(lrss)} | {cp.mib(crss)} |", flush=True)
        rows.append({
            "type": ty, "model": str(model), "ctx": a.ctx, "chunks": a.chunks, "threads": a.threads,
            "llama_cpp_tps": [x["tokens_per_second"] for x in ref_runs],
            "crunch_tps": [x["tokens_per_second"] for x in our_runs],
            "llama_cpp_median_tps": ltps, "crunch_median_tps": ctps, "ratio": ctps / ltps,
            "llama_cpp_ppl": lppl, "crunch_ppl": cppl,
            "llama_cpp_peak_rss": lrss, "crunch_peak_rss": crss,
        })
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
