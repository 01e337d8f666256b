#!/usr/bin/env python3
"""The distillation table of docs/TRAINING.md: a quantized model, + the closed-form low-rank correction,
+ a distilled adapter of the same rank (trained from that correction), each measured by llama.cpp.

  distill_table.py BASE.gguf TEXT --work DIR [--types Q2_K,Q3_K_M] [--ranks 16,32] [--ctx 512] [--chunks 16]
                   [--calib-skip 100] [--calib-chunks 32] [--train-ctx 256] [--train-skip 40]
                   [--train-chunks 64] [--holdout 4] [--steps 150] [--lr 2e-4] [--batch 1]
                   [--crunch PATH] [--llama-python PATH] [--json OUT]

For every type: `crunch quantize BASE Q TYPE`; for every rank the closed-form correction `crunch lowrank
BASE Q --rank R --text TEXT --skip-chunks S --chunks N` (as scripts/lowrank_table.py makes it; the same
work folder reuses its files), then `crunch distill BASE Q --init CORRECTION --rank R --text TEXT --ctx
TRAIN_CTX --skip-chunks TRAIN_SKIP --chunks TRAIN_CHUNKS --holdout H --steps N --lr LR --plot ...`: the
correction trained further to match BASE's top-32 distributions. The base's log-probabilities are computed
once (`--save-base`) and reused by every run (`--base-logits`); an interrupted run resumes from its
checkpoint when the script is started again. Training text starts at chunk TRAIN_SKIP
of TRAIN_CTX tokens (40 x 256 = 10240 tokens in), after the evaluation text (the first --chunks x --ctx =
8192 tokens), so no evaluated token is trained on.

Every model is measured against BASE on the first --chunks chunks of --ctx by scripts/compare_kld.py:
llama.cpp (`lora_path`, full-vocabulary KLD) and crunch (`eval compare --lora --top-k 0`). Prints a markdown
table and the training figures (tokens/s, peak RSS, held-out top-k KL at the start and the end).
"""
import argparse
import json
import os
import sys
from pathlib import Path

from lowrank_table import CACHE, REPO, kld_json, run


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base")
    ap.add_argument("text")
    ap.add_argument("--work", required=True)
    ap.add_argument("--types", default="Q2_K,Q3_K_M")
    ap.add_argument("--ranks", default="16,32")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--calib-skip", type=int, default=100)
    ap.add_argument("--calib-chunks", type=int, default=32)
    ap.add_argument("--train-ctx", type=int, default=256)
    ap.add_argument("--train-skip", type=int, default=40)
    ap.add_argument("--train-chunks", type=int, default=64)
    ap.add_argument("--holdout", type=int, default=4)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", default="2e-4")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--crunch", default=str(Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release/crunch"))
    ap.add_argument("--llama-python", default=str(CACHE / "llama-venv/bin/python"))
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.train_skip * a.train_ctx < a.chunks * a.ctx:
        sys.exit("the training text would overlap the evaluation text: raise --train-skip")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    types = [t for t in a.types.split(",") if t]
    ranks = [int(r) for r in a.ranks.split(",") if r]
    base_logits = work / f"base_c{a.train_ctx}_s{a.train_skip}_n{a.train_chunks}_h{a.holdout}.logits"
    rows = []

    def measure(name, q, adapter=None, training=None):
        r = kld_json(a, work, name, q, adapter)
        rows.append({"name": name, "bytes": os.path.getsize(q) + (os.path.getsize(adapter) if adapter else 0),
                     "result": r, "training": training})

    for t in types:
        q = work / f"q_{t}.gguf"
        if not q.exists():
            run([a.crunch, "quantize", a.base, q, t, "-q"])
        measure(t, q)
        for r in ranks:
            fix = work / f"q_{t}.r{r}.lora.gguf"
            if not fix.exists():
                run([a.crunch, "lowrank", a.base, q, "-o", fix, "--rank", r, "--text", a.text,
                     "--skip-chunks", a.calib_skip, "--chunks", a.calib_chunks, "-q"])
            measure(f"{t} + correction r{r}", q, fix)
            tag = f"q_{t}.r{r}.distill_s{a.steps}_lr{a.lr}_b{a.batch}"
            ad, rep = work / f"{tag}.gguf", work / f"{tag}.json"
            if not rep.exists():
                cmd = [a.crunch, "distill"]
                cmd += [q, "--base-logits", base_logits] if base_logits.exists() else [a.base, q, "--save-base", base_logits]
                cmd += ["-o", ad, "--init", fix, "--rank", r, "--text", a.text, "--ctx", a.train_ctx,
                        "--skip-chunks", a.train_skip, "--chunks", a.train_chunks, "--holdout", a.holdout,
                        "--steps", a.steps, "--lr", a.lr, "--batch", a.batch, "--eval-every", a.eval_every,
                        "--plot", work / f"{tag}.svg", "--resume", "--json"]
                rep.write_text(run(cmd))
            tr = json.loads(rep.read_text())["result"]
            measure(f"{t} + distilled r{r}", q, ad, {k: tr[k] for k in ("heldout", "tokens_per_second", "peak_rss_bytes",
                                                                         "seconds", "steps", "train_chunks", "ctx")})
    print()
    print("| model | size MiB | KLD llama.cpp | KLD crunch | same top % (llama.cpp) | PPL llama.cpp | PPL crunch |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        x = r["result"]
        ll, cr = x["llama_cpp"], x["crunch"]
        print(f"| {r['name']} | {r['bytes'] / 2**20:.2f} | {ll['kld']['mean']:.4f} ± {ll['kld']['mean_err']:.4f} | "
              f"{cr['kld']['mean']:.4f} ± {cr['kld']['mean_err']:.4f} | {ll['same_top_pct']:.2f} | "
              f"{ll['ppl_quant']:.3f} | {cr['ppl_quant']:.3f} |")
    print()
    for r in rows:
        tr = r["training"]
        if tr:
            h = tr["heldout"]
            print(f"{r['name']}: {tr['steps']} steps on {tr['train_chunks']} x {tr['ctx']} tokens, "
                  f"held-out top-32 KL {h[0][1]:.4f} -> {h[-1][1]:.4f}, {tr['tokens_per_second']:.1f} tok/s, "
                  f"{tr['seconds']:.0f} s, peak RSS {tr['peak_rss_bytes'] / 2**20:.0f} MiB")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
